"""`mint synth`: write the synthetic HEST-1k look-alike (and its HEST-Bench) from one seed.

What to write is the first word (default `all`):

    mint synth [all]   --out HEST [--bench-out BENCH]   metadata CSV, training samples, bench
    mint synth metadata --out HEST                      the metadata CSV only (what the workflow
                                                        needs to plan)
    mint synth samples  --out HEST --samples ID...      these samples only (a download job)
    mint synth bench    --bench-out BENCH [--bench-tasks T...]   bench tasks only (a job each)

The sizes are `SynthConfig`'s fields (`--seed`, `--n-visium`, ...), and must be the same in
every call of one run: each sample is a pure function of them and its id.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from mint.errors import MintError
from mint.hest.bench import SYNTHETIC_BENCH_TASKS
from mint.hest.layout import METADATA_CSV
from mint.synth.specs import SynthConfig

log = logging.getLogger(__name__)

PARTS = ("all", "metadata", "samples", "bench")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "part", nargs="?", choices=PARTS, default="all", help="what to write (default: all)"
    )
    parser.add_argument("--out", default="resources/hest", help="HEST-1k folder to write")
    parser.add_argument(
        "--bench-out",
        default=None,
        help="HEST-Bench folder to write (part all: omit to skip the bench)",
    )
    parser.add_argument(
        "--samples",
        nargs="*",
        default=None,
        help="only these sample ids (part all: default all training samples)",
    )
    parser.add_argument(
        "--bench-tasks",
        nargs="*",
        default=None,
        choices=list(SYNTHETIC_BENCH_TASKS),
        help="only these bench tasks (default: all)",
    )
    parser.add_argument(
        "--include-bench-samples",
        action="store_true",
        help="also write the bench samples in HEST layout (as the real HEST-1k holds them)",
    )
    SynthConfig.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from mint.synth.bench import generate_bench
    from mint.synth.hest import (
        generate_sample,
        sample_specs,
        synthetic_metadata,
        write_metadata_csv,
    )

    t0 = time.perf_counter()
    cfg = SynthConfig.from_args(args)
    out = Path(args.out)
    if args.part == "samples" and not args.samples:
        raise MintError("mint synth samples: --samples names no sample id")
    if args.part == "bench" and not args.bench_out:
        raise MintError("mint synth bench: --bench-out is required")
    if args.part in ("all", "metadata"):
        df = synthetic_metadata(cfg)
        write_metadata_csv(out / METADATA_CSV, df)
        log.info("wrote %s (%d samples)", out / METADATA_CSV, len(df))
    if args.part in ("all", "samples"):
        if args.samples:
            ids = list(args.samples)
        else:
            specs = sample_specs(cfg)
            ids = [s.id for s in specs if args.include_bench_samples or s.bench_task is None]
        for sid in ids:
            generate_sample(sid, out, cfg)
    if args.part in ("all", "bench") and args.bench_out:
        for task in args.bench_tasks or list(SYNTHETIC_BENCH_TASKS):
            generate_bench(args.bench_out, task, cfg)
    log.info("synthetic dataset written in %.1f s", time.perf_counter() - t0)
    return 0
