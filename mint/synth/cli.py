"""`mint synth`: write the synthetic HEST-1k look-alike (and its HEST-Bench) from one seed."""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import asdict
from pathlib import Path

from mint.hest.bench import SYNTHETIC_BENCH_TASKS

log = logging.getLogger(__name__)


def add_size_arguments(parser: argparse.ArgumentParser) -> None:
    """The sizes that define the synthetic dataset (shared by `mint download --source synthetic`)."""
    g = parser.add_argument_group(
        "synthetic dataset size (must match between synth, select and download)"
    )
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--n-visium", type=int, default=3)
    g.add_argument("--n-st", type=int, default=1)
    g.add_argument("--n-xenium", type=int, default=2)
    g.add_argument("--slide-size-um", type=float, default=1600.0)
    g.add_argument("--n-genes", type=int, default=300)


def config_from_args(args: argparse.Namespace):
    from mint.synth.hest import SynthConfig

    return SynthConfig(
        seed=args.seed,
        n_visium=args.n_visium,
        n_st=args.n_st,
        n_xenium=args.n_xenium,
        slide_size_um=args.slide_size_um,
        n_genes=args.n_genes,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="resources/hest", help="HEST-1k folder to write")
    parser.add_argument(
        "--bench-out", default=None, help="HEST-Bench folder to write (omit to skip the bench)"
    )
    parser.add_argument(
        "--metadata-only",
        action="store_true",
        help="only write OUT/HEST_metadata.csv (fast; what the workflow needs to plan)",
    )
    parser.add_argument(
        "--samples",
        nargs="*",
        default=None,
        help="only these sample ids (default: all training samples)",
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
    add_size_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from mint.synth.hest import (
        generate_bench,
        generate_sample,
        sample_specs,
        synthetic_metadata,
        write_metadata_csv,
    )

    t0 = time.perf_counter()
    cfg = config_from_args(args)
    out = Path(args.out)
    df = synthetic_metadata(**asdict(cfg))
    write_metadata_csv(out / "HEST_metadata.csv", df)
    log.info("wrote %s (%d samples)", out / "HEST_metadata.csv", len(df))
    if args.metadata_only:
        return 0
    specs = sample_specs(cfg)
    if args.samples:
        ids = list(args.samples)
    else:
        ids = [s.id for s in specs if args.include_bench_samples or s.bench_task is None]
    for sid in ids:
        generate_sample(sid, out, **asdict(cfg))
    if args.bench_out:
        for task in args.bench_tasks or list(SYNTHETIC_BENCH_TASKS):
            generate_bench(args.bench_out, task, **asdict(cfg))
    log.info("synthetic dataset written in %.1f s", time.perf_counter() - t0)
    return 0
