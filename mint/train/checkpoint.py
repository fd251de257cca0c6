"""Checkpoints of a training run: where they live, what they hold, and resuming from one.

A checkpoint (`checkpoints/step-<9 digits>.pt`, only the latest is kept) holds the models,
optimiser, scheduler, the metrics rows so far, and per process its RNG states and the partly
filled loss averages of the log window, so that a resumed run continues exactly where the
interrupted one stopped. Everything in it is a tensor or a plain type, so it loads with
`weights_only=True`. The run fingerprint (config + index.json) decides whether a checkpoint
belongs to this run; one from another configuration is discarded, not resumed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

from mint.io import atomic_path
from mint.train.config import TrainConfig
from mint.train.data import ShardIndex
from mint.train.distributed import DistContext, barrier
from mint.train.metrics import LossAverager

if TYPE_CHECKING:
    from mint.train.trainer import MintTrainer

log = logging.getLogger(__name__)

# A resumed run may differ from the interrupted one in these (cadence and speed settings; a
# different num_workers only changes the data order, with a warning).
RUNTIME_ONLY_FIELDS = {
    "checkpoint_every",
    "log_every",
    "val_every",
    "num_workers",
    "grad_checkpointing",
    "keep_checkpoints",
}


# -- RNG state (tensors and plain types only, so checkpoints load with weights_only=True) -----
def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# -- checkpoints ----------------------------------------------------------------------------
def checkpoint_path(ckpt_dir: Path, step: int) -> Path:
    return ckpt_dir / f"step-{step:09d}.pt"


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    if not ckpt_dir.is_dir():
        return None
    found = sorted(ckpt_dir.glob("step-*.pt"))
    return found[-1] if found else None


def run_fingerprint(cfg: TrainConfig, index: ShardIndex) -> str:
    d = {k: v for k, v in cfg.to_dict().items() if k not in RUNTIME_ONLY_FIELDS}
    h = hashlib.sha256(json.dumps(d, sort_keys=True).encode())
    h.update(index.path.read_bytes())
    return h.hexdigest()[:16]


def _gather_rank_state(ctx: DistContext, avg: LossAverager) -> list[dict[str, Any]]:
    """Per-process state: RNGs and the partly filled loss averages of the log window."""
    mine = {"rng": rng_state(), "avg": avg.state()}
    if not ctx.distributed:
        return [mine]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, mine)
    return out


def save_checkpoint(
    ckpt_dir: Path,
    step: int,
    trainer: MintTrainer,
    ctx: DistContext,
    rows: list[dict[str, Any]],
    fingerprint: str,
    avg: LossAverager,
) -> None:
    ranks = _gather_rank_state(ctx, avg)  # collective: every process takes part
    if ctx.is_main:
        state = {
            "step": step,
            "fingerprint": fingerprint,
            "world_size": ctx.world_size,
            "num_workers": trainer.cfg.num_workers,
            "config": trainer.cfg.to_dict(),
            "ranks": ranks,
            "metrics": rows,
            **trainer.state_dict(),
        }
        path = checkpoint_path(ckpt_dir, step)
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
        for old in ckpt_dir.glob("step-*.pt"):
            if old != path:
                old.unlink(missing_ok=True)
        log.info("checkpoint %s", path)
    barrier()


def resume(
    ckpt_dir: Path,
    trainer: MintTrainer,
    ctx: DistContext,
    fingerprint: str,
    avg: LossAverager,
) -> tuple[int, list[dict[str, Any]]]:
    """Load the latest checkpoint of this run into `trainer` (and this process's RNGs and loss
    averages into the process and `avg`); returns (start step, metrics rows so far).

    (0, []) when there is none, or when it belongs to another configuration or index (then it is
    deleted). The RNGs are restored only with the same processes x workers layout, since another
    layout reads the data in another order anyway (with a warning).
    """
    cfg = trainer.cfg
    latest = latest_checkpoint(ckpt_dir)
    if latest is None:
        if ctx.is_main:
            log.info("no checkpoint in %s: starting fresh at step 0", ckpt_dir)
        return 0, []
    state = torch.load(latest, map_location="cpu", weights_only=True)
    if state.get("fingerprint") != fingerprint:
        log.warning(
            "%s: checkpoint is from a different configuration or index; starting afresh", latest
        )
        barrier()
        if ctx.is_main:
            for old in ckpt_dir.glob("step-*.pt"):
                old.unlink(missing_ok=True)
        return 0, []
    trainer.load_state_dict(state)
    start_step = int(state["step"])
    rows = [r for r in state["metrics"] if int(r["step"]) <= start_step]
    same_layout = state["world_size"] == ctx.world_size and state["num_workers"] == cfg.num_workers
    if not same_layout:
        log.warning(
            "resuming with %d processes x %d workers (was %d x %d): data order differs",
            ctx.world_size,
            cfg.num_workers,
            state["world_size"],
            state["num_workers"],
        )
    if same_layout:
        set_rng_state(state["ranks"][ctx.rank]["rng"])
        avg.load(state["ranks"][ctx.rank]["avg"])
    log.info("resumed from %s at step %d", latest, start_step)
    if start_step >= cfg.steps:
        log.info("checkpoint is final (keep_checkpoints): re-exporting, not retraining")
    return start_step, rows
