"""What a training run records: metrics.csv (+ TensorBoard), the per-window loss averages, the
throughput clock, and health.json (whether DINO collapsed).

metrics.csv has one row per log window ("train": losses averaged over the window, lr, images/s)
and per validation ("val": masked MSE per modality). On resume it is rewritten from the rows the
checkpoint carries, so a preempted run ends with the same file as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from mint.io import atomic_path
from mint.train.config import TrainConfig

log = logging.getLogger(__name__)

METRIC_COLUMNS = [
    "step",
    "split",
    "loss",
    "loss_visium",
    "loss_xenium",
    "loss_dino",
    "loss_anchor",
    "loss_anchor_patch",
    "teacher_entropy",
    "dino_kl",
    "teacher_marginal_entropy",
    "lr",
    "images_per_s",
]
# Averaged per log window like the losses (train rows only).
STAT_COLUMNS = ("teacher_entropy", "dino_kl", "teacher_marginal_entropy")
# Final teacher entropy at or above this fraction of ln K counts as uniform collapse.
UNIFORM_COLLAPSE_RATIO = 0.95
# Final teacher marginal entropy below this fraction of ln K: every tile on a few prototypes.
DIMENSION_COLLAPSE_RATIO = 0.1


class MetricsLog:
    """metrics.csv (rewritten from the checkpoint's rows on resume) + TensorBoard."""

    def __init__(self, out_dir: Path, rows: list[dict[str, Any]], start_step: int, enabled: bool):
        self.path = out_dir / "metrics.csv"
        self.rows = list(rows)
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=METRIC_COLUMNS)
            w.writeheader()
            for r in self.rows:
                w.writerow(r)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tensorboard"), purge_step=start_step)
        except Exception as exc:  # tensorboard missing: metrics.csv still has everything
            log.warning("TensorBoard disabled (%s)", exc)

    def add(self, row: dict[str, Any]) -> None:
        full = {c: row.get(c, "") for c in METRIC_COLUMNS}
        for k, v in full.items():
            if isinstance(v, float):
                full[k] = f"{v:.6g}"
        self.rows.append(full)
        if not self.enabled:
            return
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=METRIC_COLUMNS).writerow(full)
        if self.tb is not None:
            for k, v in row.items():
                if k in ("step", "split") or v in ("", None):
                    continue
                self.tb.add_scalar(f"{row['split']}/{k}", float(v), int(row["step"]))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class LossAverager:
    """Averages each loss over the steps since the last log line, across processes."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, torch.Tensor] = {}

    def add(self, parts: dict[str, Any]) -> None:
        for k, (value, count) in parts.items():
            if not (k.startswith("loss") or k in STAT_COLUMNS):
                continue
            valid = torch.ones((), device=self.device) if count is None else (count > 0).float()
            self.sums[k] = self.sums.get(k, 0) + value.float() * valid
            self.counts[k] = self.counts.get(k, 0) + valid

    def state(self) -> dict[str, list[float]]:
        return {k: [float(self.sums[k]), float(self.counts[k])] for k in self.sums}

    def load(self, state: dict[str, list[float]]) -> None:
        self.sums = {k: torch.tensor(v[0], device=self.device) for k, v in state.items()}
        self.counts = {k: torch.tensor(v[1], device=self.device) for k, v in state.items()}

    def pop(self) -> dict[str, float]:
        keys = sorted(self.sums)
        if not keys:
            return {}
        s = torch.stack([torch.as_tensor(self.sums[k], device=self.device) for k in keys])
        c = torch.stack([torch.as_tensor(self.counts[k], device=self.device) for k in keys])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(s)
            dist.all_reduce(c)
        self.sums, self.counts = {}, {}
        return {k: float(s[i] / c[i]) for i, k in enumerate(keys) if c[i] > 0}


@dataclass
class Throughput:
    """images/s per log window, leaving out the time spent validating or checkpointing."""

    images_per_step: int
    t_last: float = 0.0
    steps: int = 0
    paused: float = 0.0

    def restart(self) -> None:
        """Start the first window now (what ran before, e.g. step-0 validation, is not in it)."""
        self.t_last, self.steps, self.paused = time.perf_counter(), 0, 0.0

    @contextlib.contextmanager
    def pause(self) -> Iterator[None]:
        """Leave the time spent inside out of the window's images/s."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.paused += time.perf_counter() - t0

    def window(self) -> float:
        """images/s since the last window (or restart), and start the next window."""
        now = time.perf_counter()
        ips = self.images_per_step * self.steps / max(now - self.t_last - self.paused, 1e-9)
        self.t_last, self.steps, self.paused = now, 0, 0.0
        return ips


# -- health ---------------------------------------------------------------------------------
def dino_health(rows: list[dict[str, Any]], cfg: TrainConfig) -> dict[str, Any]:
    """DINO's state at the end of training from the last logged train window of metrics.csv.

    status: "off" (w_dino 0), "not_logged" (no train row with the statistics), "ok",
    "uniform_collapse" (teacher entropy >= UNIFORM_COLLAPSE_RATIO x ln K: every tile gets the
    same flat distribution, the DINO loss is ln K and teaches nothing) or "dimension_collapse"
    (marginal entropy <= DIMENSION_COLLAPSE_RATIO x ln K: every tile on the same prototypes).
    """
    if not cfg.use_dino:
        return {"status": "off"}
    ln_k = math.log(cfg.dino_prototypes)
    last = None
    for r in rows:
        if r.get("split") == "train" and r.get("teacher_entropy") not in ("", None):
            last = r
    if last is None:
        return {"status": "not_logged", "ln_k": ln_k}
    h = float(last["teacher_entropy"])
    marginal = float(last["teacher_marginal_entropy"])
    status = "ok"
    if h >= UNIFORM_COLLAPSE_RATIO * ln_k:
        status = "uniform_collapse"
    elif marginal <= DIMENSION_COLLAPSE_RATIO * ln_k:
        status = "dimension_collapse"
    return {
        "status": status,
        "step": int(last["step"]),
        "ln_k": ln_k,
        "teacher_entropy": h,
        "teacher_entropy_ratio": h / ln_k,
        "teacher_marginal_entropy": marginal,
        "dino_kl": float(last["dino_kl"]),
        "loss_dino": float(last["loss_dino"]),
        "thresholds": {
            "uniform_collapse_ratio": UNIFORM_COLLAPSE_RATIO,
            "dimension_collapse_ratio": DIMENSION_COLLAPSE_RATIO,
        },
    }


def health_report(rows: list[dict[str, Any]], cfg: TrainConfig) -> dict[str, Any]:
    """health.json's content: {"dino": dino_health(...), "warnings": [one line each]}."""
    dino = dino_health(rows, cfg)
    warnings = []
    if dino["status"] == "uniform_collapse":
        warnings.append(
            f"DINO uniform collapse: teacher entropy {dino['teacher_entropy']:.3f} nats at step "
            f"{dino['step']} is {100 * dino['teacher_entropy_ratio']:.0f}% of ln K = "
            f"{dino['ln_k']:.3f}; the DINO term carried no signal (try dino_head_bn, a higher "
            "dino_head_lr, a faster teacher (lower ema_momentum) or a lower teacher_temp_final)"
        )
    elif dino["status"] == "dimension_collapse":
        warnings.append(
            f"DINO dimension collapse: the teacher's batch-mean entropy "
            f"{dino['teacher_marginal_entropy']:.3f} nats at step {dino['step']} (ln K = "
            f"{dino['ln_k']:.3f}): every tile maps to the same few prototypes"
        )
    return {"dino": dino, "warnings": warnings}


def write_health(out_dir: Path, rows: list[dict[str, Any]], cfg: TrainConfig) -> dict[str, Any]:
    """Write out_dir/health.json and log each warning as a WARNING."""
    report = health_report(rows, cfg)
    for w in report["warnings"]:
        log.warning("%s", w)
    with atomic_path(out_dir / "health.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    return report
