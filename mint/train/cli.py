"""`mint train`: one MINT fine-tuning run (single process, or one process per GPU under torchrun).

    mint train --index results/shards/index.json --out-dir results/models/mint \
        --params '{"backbone": "tiny-vit", "steps": 150, "batch_size": 16}'

    torchrun --nproc-per-node=4 -m mint.cli train --index ... --out-dir ... --params '...'

The run resumes automatically from out-dir/checkpoints/ when a checkpoint of the same
configuration and index exists (a requeued SLURM job continues where it stopped). SIGTERM or
SIGUSR1 stop it at the next step boundary with a checkpoint, a line in out-dir/preemptions.log
and exit code 75 (EXIT_RESUME), so that SLURM's requeue or Snakemake's retry resumes it. A
finished run deletes checkpoints/ (unless `keep_checkpoints` is true) and preemptions.log.
"""

from __future__ import annotations

import argparse
import logging

from mint.train.config import TrainConfig

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, help="results/shards/index.json")
    parser.add_argument("--out-dir", required=True, help="results/models/{run}")
    parser.add_argument(
        "--params",
        default="{}",
        help="JSON object of TrainConfig fields (or @file.json). Fields: "
        + ", ".join(TrainConfig.field_names()),
    )
    parser.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="auto: the GPU of this process's LOCAL_RANK if CUDA is available, else CPU",
    )


def run(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from mint.train.preempt import PREEMPTIONS_LOG, Preempted, record_preemption
    from mint.train.trainer import read_params, train

    cfg = read_params(args.params)
    try:
        train(cfg, args.index, args.out_dir, device=args.device)
    except Preempted as exc:
        # not an error message: the scheduler reruns the job and it resumes
        log.warning("%s", exc)
        record_preemption(args.out_dir, exc)
        return exc.exit_code
    if int(os.environ.get("RANK", "0")) == 0:
        (Path(args.out_dir) / PREEMPTIONS_LOG).unlink(missing_ok=True)
    return 0
