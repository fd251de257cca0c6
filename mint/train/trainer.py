"""MINT training: the student/teacher/anchor models, one optimisation step, and the run loop.

One step (per process, batch of B tiles):

1. global views [n_global*B] (view 0 = whole tile, view 1 = random-resized crop) and local views
   [n_local*B] go through the student in ONE module call (so DDP sees one forward per backward);
2. expression heads read the ST token of view 0 (the view the label describes) -> masked MSE per
   modality;
3. DINO: the student's CLS of every crop through the DINO head vs the EMA teacher on the global
   views (centred, temperature-scheduled);
4. anchoring: 1 - cos(student CLS, frozen pretrained CLS) on the global views (plus the same on
   every patch token with `anchor_patch_tokens`); the frozen copy runs in the student's autocast;
5. L = w_visium L_visium + w_xenium L_xenium + w_dino L_dino + w_anchor L_anchor. A weight of 0
   removes the term *and* its compute: no head, no teacher / DINO head / second global view /
   local crops, or no frozen copy;
6. AdamW step (gradients clipped; DINO prototypes frozen for the first steps), lr schedule, EMA
   teacher update, DINO center update.

Modes by weights: `w_visium = w_xenium = w_anchor = 0` is self-supervised DINO pretraining (no
expression heads; `mint.train.export.timm_state_dict` turns the result into plain timm weights);
`st_token: false, w_dino = w_anchor = 0` is the plain regression fine-tune baseline.

Health: besides the losses, metrics.csv logs the teacher's mean entropy and the student-teacher
KL; at the end `health.json` (next to metrics.csv) says whether DINO collapsed (see
`dino_health`), and a collapse is logged as a WARNING.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import json
import logging
import math
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from mint.errors import MintError
from mint.io import atomic_path
from mint.logging_utils import progress_enabled
from mint.models.backbones import architecture_record, build_backbone
from mint.models.heads import ExpressionHeads
from mint.models.st_vit import STTokenViT, enable_dynamic_img_size
from mint.train.augment import MultiCrop, local_crop_size_for, normalize_uint8
from mint.train.config import TrainConfig
from mint.train.data import ShardIndex, TrainStream, ValStream, in_order, make_loader, read_index
from mint.train.dino import DINOHead, DINOLoss, cosine_momentum, ema_update, teacher_temperature
from mint.train.distributed import DistContext, barrier, cleanup, init_distributed
from mint.train.export import export_model, save_timm_weights
from mint.train.losses import FrozenAnchor, anchor_loss, masked_mse
from mint.train.optim import WarmupCosine, build_param_groups
from mint.train.preempt import Preempted, StopSignals

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
# Averaged per log window like the losses (train rows only).
STAT_COLUMNS = ("teacher_entropy", "dino_kl", "teacher_marginal_entropy")
# Final teacher entropy at or above this fraction of ln K counts as uniform collapse.
UNIFORM_COLLAPSE_RATIO = 0.95
# Final teacher marginal entropy below this fraction of ln K: every tile on a few prototypes.
DIMENSION_COLLAPSE_RATIO = 0.1


def modality_weight(cfg: TrainConfig, modality: str) -> float:
    if modality == "visium":
        return cfg.w_visium
    if modality == "xenium":
        return cfg.w_xenium
    raise MintError(f"train: unknown modality {modality!r} (expected visium or xenium)")


class MintStudent(nn.Module):
    """Backbone with ST token + expression heads + DINO head; one forward for all crops."""

    def __init__(
        self,
        backbone: STTokenViT,
        heads: ExpressionHeads | None,
        dino_head: DINOHead | None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = heads
        self.dino_head = dino_head

    def forward(
        self,
        global_views: torch.Tensor,
        local_views: torch.Tensor | None = None,
        n_global: int = 1,
        regression_only: bool = False,
        patch_tokens: bool = False,
    ) -> dict[str, Any]:
        out = self.backbone(global_views, return_tokens=patch_tokens)
        res: dict[str, Any] = {"cls_global": out["cls"]}
        if patch_tokens:
            res["patches_global"] = out["patch_tokens"]
        if self.heads is not None:
            b = global_views.shape[0] // n_global
            token = out["st"] if self.backbone.has_st else out["cls"]
            res["pred"] = self.heads(token[:b])
        if self.dino_head is not None and not regression_only:
            cls_all = out["cls"]
            if local_views is not None:
                cls_all = torch.cat([cls_all, self.backbone(local_views)["cls"]], dim=0)
            res["dino"] = self.dino_head(cls_all)
        return res


class Teacher(nn.Module):
    """EMA copy of the student's backbone and DINO head; no gradients."""

    def __init__(self, backbone: STTokenViT, dino_head: DINOHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.dino_head = dino_head
        for p in self.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def forward(self, global_views: torch.Tensor) -> torch.Tensor:
        return self.dino_head(self.backbone(global_views)["cls"])


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


class MintTrainer:
    """Models, optimiser and one training step. Shared by `train()`, tests and benchmarks."""

    def __init__(
        self,
        cfg: TrainConfig,
        vocab_sizes: dict[str, int],
        device: torch.device | str = "cpu",
        vit: nn.Module | None = None,
        world_size: int = 1,
        n_train: int | None = None,
    ) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.world_size = world_size
        # one epoch of the training set unless set explicitly (needs index.json's n_train)
        self.freeze_last_layer_steps = cfg.resolved_freeze_last_layer_steps(n_train, world_size)
        self.amp_dtype = autocast_dtype(cfg.precision, self.device)
        torch.manual_seed(cfg.seed)  # identical head initialisation in every process
        if vit is None:
            vit = build_backbone(cfg.backbone, pretrained=True)
        self.arch = architecture_record(cfg.backbone, vit)
        self.mean = torch.tensor(self.arch["mean"], dtype=torch.float32, device=self.device)
        self.std = torch.tensor(self.arch["std"], dtype=torch.float32, device=self.device)
        self.frozen: FrozenAnchor | None = None
        if cfg.use_anchor:
            frozen_vit = copy.deepcopy(vit)
            enable_dynamic_img_size(frozen_vit)
            self.frozen = FrozenAnchor(frozen_vit).to(self.device)  # fp32, student's autocast
        backbone = STTokenViT(vit, st_token=cfg.st_token, st_isolation=cfg.st_isolation)
        backbone.set_grad_checkpointing(cfg.grad_checkpointing)
        self.patch_size = backbone.patch_size
        head_sizes = {m: n for m, n in vocab_sizes.items() if n > 0 and modality_weight(cfg, m) > 0}
        heads = ExpressionHeads(backbone.embed_dim, head_sizes) if head_sizes else None
        dino_head = None
        if cfg.use_dino:
            dino_head = DINOHead(
                backbone.embed_dim,
                cfg.dino_prototypes,
                cfg.dino_hidden_dim,
                cfg.dino_bottleneck_dim,
                use_bn=cfg.dino_head_bn,
            )
        self.student = MintStudent(backbone, heads, dino_head).to(self.device)
        self.teacher: Teacher | None = None
        self.dino_loss: DINOLoss | None = None
        if cfg.use_dino:
            self.teacher = Teacher(
                copy.deepcopy(self.student.backbone), copy.deepcopy(self.student.dino_head)
            ).to(self.device)
            self.teacher.eval()
            self.dino_loss = DINOLoss(cfg.dino_prototypes, cfg.student_temp, cfg.center_momentum)
            self.dino_loss.to(self.device)
        groups = build_param_groups(
            self.student,
            cfg.lr,
            cfg.head_lr,
            cfg.weight_decay,
            cfg.layer_decay,
            dino_head_lr=cfg.dino_head_lr,
        )
        fused = self.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.999), fused=fused)
        self.schedule = WarmupCosine(cfg.resolved_warmup_steps, cfg.steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.schedule)
        self.module: nn.Module = self.student  # replaced by the DDP wrapper when distributed
        self.n_global = 2 if cfg.use_dino else 1
        self.n_local = cfg.n_local_crops if cfg.use_dino else 0
        self.local_crop_size = cfg.local_crop_size or local_crop_size_for(self.patch_size)

    # -- set-up helpers ---------------------------------------------------------------------
    def wrap_ddp(self) -> None:
        # The ST token is unused only if it is isolated and nothing reads it.
        unused = self.student.heads is None and self.student.backbone.has_st
        ids = [self.device.index] if self.device.type == "cuda" else None
        self.module = DDP(self.student, device_ids=ids, find_unused_parameters=unused)

    def multicrop(self) -> MultiCrop:
        cfg = self.cfg
        return MultiCrop(
            global_size=cfg.global_crop_size,
            local_size=self.local_crop_size,
            n_global=self.n_global,
            n_local=self.n_local,
            global_scale=cfg.global_crop_scale,
            local_scale=cfg.local_crop_scale,
        )

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def lr_now(self) -> float:
        return self.cfg.lr * self.schedule(max(0, self.scheduler.last_epoch - 1))

    # -- the step ---------------------------------------------------------------------------
    def _views(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """uint8 [B, V, 3, S, S] -> normalised float [V*B, 3, S, S], view-major."""

        def flat(x: torch.Tensor) -> torch.Tensor:
            x = x.to(self.device, non_blocking=True).transpose(0, 1)
            x = x.reshape(-1, *x.shape[2:])
            return normalize_uint8(x, self.mean, self.std)

        g = flat(batch["global"][:, : self.n_global])
        loc = batch.get("local")
        if self.n_local == 0 or loc is None:
            return g, None
        return g, flat(loc[:, : self.n_local])

    def forward_losses(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict]:
        """Total loss and its parts for one batch (gradients not yet computed)."""
        cfg = self.cfg
        g, loc = self._views(batch)
        parts: dict[str, Any] = {}
        total = torch.zeros((), device=self.device)
        with self.autocast():
            patches = self.frozen is not None and cfg.anchor_patch_tokens
            out = self.module(g, loc, n_global=self.n_global, patch_tokens=patches)
            if self.student.heads is not None:
                for m, pred in out["pred"].items():
                    tgt = batch["targets"][m].to(self.device, non_blocking=True)
                    msk = batch["masks"][m].to(self.device, non_blocking=True)
                    loss_m, count = masked_mse(pred, tgt, msk)
                    parts[f"loss_{m}"] = (loss_m.detach(), count)
                    total = total + modality_weight(cfg, m) * loss_m
            if self.teacher is not None:
                t_out = self.teacher(g)
                temp = teacher_temperature(
                    step,
                    cfg.teacher_temp_start,
                    cfg.teacher_temp_final,
                    cfg.resolved_teacher_temp_warmup_steps,
                )
                n_crops = self.n_global + (self.n_local if loc is not None else 0)
                loss_dino, stats = self.dino_loss.loss_and_stats(
                    out["dino"], t_out, temp, n_crops, self.n_global
                )
                parts["loss_dino"] = (loss_dino.detach(), None)
                for k, v in stats.items():
                    parts[k] = (v, None)
                parts["_teacher_out"] = t_out
                total = total + cfg.w_dino * loss_dino
            if self.frozen is not None:
                ref = self.frozen(g, patch_tokens=patches)
                loss_anchor = anchor_loss(out["cls_global"], ref["cls"])
                if patches:
                    loss_patch = anchor_loss(out["patches_global"], ref["patches"])
                    parts["loss_anchor_patch"] = (loss_patch.detach(), None)
                    loss_anchor = loss_anchor + loss_patch
                parts["loss_anchor"] = (loss_anchor.detach(), None)
                total = total + cfg.w_anchor * loss_anchor
        return total, parts

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, Any]:
        cfg = self.cfg
        self.student.train()
        total, parts = self.forward_losses(batch, step)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.student.dino_head is not None and step < self.freeze_last_layer_steps:
            for p in self.student.dino_head.last_layer_parameters():
                p.grad = None
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(
                [p for p in self.student.parameters() if p.grad is not None], cfg.grad_clip
            )
        self.optimizer.step()
        self.scheduler.step()
        if self.teacher is not None:
            m = cosine_momentum(step, cfg.steps, cfg.ema_momentum, cfg.ema_momentum_final)
            ema_update(self.teacher, self.student, m)
            self.dino_loss.update_center(parts.pop("_teacher_out"))
        parts["loss"] = (total.detach(), None)
        return parts

    @torch.no_grad()
    def evaluate(self, loader) -> dict[str, float]:
        """Masked MSE per modality over the whole validation set (all processes)."""
        if self.student.heads is None:
            return {}
        self.student.eval()
        mods = list(self.student.heads.keys())
        sums = torch.zeros(len(mods), dtype=torch.float64, device=self.device)
        counts = torch.zeros(len(mods), dtype=torch.float64, device=self.device)
        for batch in loader:
            g = normalize_uint8(batch["global"][:, 0].to(self.device), self.mean, self.std)
            with self.autocast():
                out = self.student(g, None, n_global=1, regression_only=True)
            for i, m in enumerate(mods):
                pred = out["pred"][m].float()
                tgt = batch["targets"][m].to(self.device)
                msk = batch["masks"][m].to(self.device)
                sums[i] += (((pred - tgt) ** 2) * msk).sum().double()
                counts[i] += msk.sum().double()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)
            dist.all_reduce(counts)
        self.student.train()
        res: dict[str, float] = {}
        loss = 0.0
        for i, m in enumerate(mods):
            if counts[i] > 0:
                res[f"loss_{m}"] = float(sums[i] / counts[i])
                loss += modality_weight(self.cfg, m) * res[f"loss_{m}"]
        if res:
            res["loss"] = loss
        return res

    def pretrained_backbone(self) -> STTokenViT:
        """The backbone to keep after self-supervised pretraining: the EMA teacher's (DINO's
        final model, smoother than the student's), or the student's when DINO is off. Pass it
        to `mint.train.export.timm_state_dict` for a plain timm state dict."""
        return self.teacher.backbone if self.teacher is not None else self.student.backbone

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "student": self.student.state_dict(),
            "teacher": self.teacher.state_dict() if self.teacher is not None else None,
            "dino_loss": self.dino_loss.state_dict() if self.dino_loss is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.student.load_state_dict(state["student"])
        if self.teacher is not None:
            self.teacher.load_state_dict(state["teacher"])
            self.dino_loss.load_state_dict(state["dino_loss"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


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


# -- metrics --------------------------------------------------------------------------------
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


# -- the run --------------------------------------------------------------------------------
def train(
    cfg: TrainConfig,
    index_path: str | Path,
    out_dir: str | Path,
    device: str = "auto",
    stop_after: int | None = None,
    timm_out: str | Path | None = None,
) -> Path | None:
    """Train (or resume) one MINT run; export on completion. Returns out_dir, or None if it
    stopped early at `stop_after` steps (used to test preemption and resume).

    SIGTERM / SIGUSR1 (SLURM preemption, time limit) stop it at the next step boundary with a
    checkpoint and raise `Preempted`; the next call resumes from there. After a successful
    export checkpoints/ is removed (unless `keep_checkpoints`), so that a rerun forced by
    deleting the outputs trains again instead of re-exporting the final checkpoint.

    `timm_out`: also write `MintTrainer.pretrained_backbone()` (the EMA teacher's backbone when
    DINO is on) as a plain timm state dict in safetensors, loadable as `timm:<arch>@<file>`;
    this is how a self-supervised pretraining run hands its weights on.
    """
    ctx = init_distributed(device)
    try:
        with StopSignals() as stop:
            return _train(cfg, Path(index_path), Path(out_dir), ctx, stop_after, stop, timm_out)
    finally:
        cleanup()


def _train(
    cfg: TrainConfig,
    index_path: Path,
    out_dir: Path,
    ctx: DistContext,
    stop_after: int | None,
    stop: StopSignals,
    timm_out: str | Path | None = None,
) -> Path | None:
    index = read_index(index_path)
    # Damaged or truncated shards: one line naming the file, before anything is written.
    from mint.data.shard_verify import verify_shards

    verify_shards(index_path)
    for m in index.modalities:
        modality_weight(cfg, m)  # MintError for an unknown modality
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out_dir / "checkpoints"
    ckpt_dir.mkdir(exist_ok=True)
    if ctx.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    random.seed(cfg.seed + ctx.rank)
    np.random.seed(cfg.seed + ctx.rank)

    # one process fetches hub weights first; the others then read them from the local cache
    if ctx.distributed and not ctx.is_main:
        barrier()
    vit = build_backbone(cfg.backbone, pretrained=True)
    if ctx.distributed and ctx.is_main:
        barrier()
    trainer = MintTrainer(
        cfg,
        index.vocab_sizes,
        ctx.device,
        vit=vit,
        world_size=ctx.world_size,
        n_train=index.n_train,
    )
    stop.setup_group()
    fingerprint = run_fingerprint(cfg, index)
    start_step, rows = 0, []
    avg = LossAverager(ctx.device)
    latest = latest_checkpoint(ckpt_dir)
    if latest is None and ctx.is_main:
        log.info("no checkpoint in %s: starting fresh at step 0", ckpt_dir)
    if latest is not None:
        state = torch.load(latest, map_location="cpu", weights_only=True)
        if state.get("fingerprint") != fingerprint:
            log.warning(
                "%s: checkpoint is from a different configuration or index; starting afresh",
                latest,
            )
            barrier()
            if ctx.is_main:
                for old in ckpt_dir.glob("step-*.pt"):
                    old.unlink(missing_ok=True)
        else:
            trainer.load_state_dict(state)
            start_step = int(state["step"])
            rows = [r for r in state["metrics"] if int(r["step"]) <= start_step]
            same_layout = (
                state["world_size"] == ctx.world_size and state["num_workers"] == cfg.num_workers
            )
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
        del state
    if ctx.distributed:
        trainer.wrap_ddp()

    n_params = sum(p.numel() for p in trainer.student.parameters())
    if ctx.is_main:
        log.info(
            "backbone %s (%.1f M parameters), %d train / %d val tiles, %d process(es) x batch %d, "
            "device %s, precision %s",
            cfg.backbone,
            n_params / 1e6,
            index.n_train,
            index.n_val,
            ctx.world_size,
            cfg.batch_size,
            ctx.device,
            trainer.amp_dtype or "fp32",
        )
        freeze = trainer.freeze_last_layer_steps
        if trainer.student.dino_head is not None:
            log.info(
                "DINO head's last layer frozen for the first %d step(s)%s",
                freeze,
                " (one epoch)" if cfg.freeze_last_layer_steps is None else "",
            )
            if freeze >= cfg.steps:
                log.warning(
                    "freeze_last_layer_steps %d >= steps %d: the DINO prototypes never train",
                    freeze,
                    cfg.steps,
                )
    metrics = MetricsLog(out_dir, rows, start_step, enabled=ctx.is_main)
    crops = trainer.multicrop()
    pin = ctx.device.type == "cuda"
    stream = TrainStream(index, crops, cfg.batch_size, cfg.seed, cfg.shuffle_buffer, start_step)
    loader = make_loader(stream, cfg.num_workers, pin_memory=pin)
    val_loader = None
    if index.val_shards and trainer.student.heads is not None:
        val_loader = make_loader(
            ValStream(index, crops, cfg.batch_size), min(cfg.num_workers, 2), pin_memory=pin
        )

    paused = [0.0]  # seconds spent validating / checkpointing, left out of images/s

    def validate(step: int) -> None:
        if val_loader is None:
            return
        t0 = time.perf_counter()
        res = trainer.evaluate(val_loader)
        paused[0] += time.perf_counter() - t0
        if res:
            metrics.add({"step": step, "split": "val", **res})
            if ctx.is_main:
                parts = ", ".join(f"{k} {v:.4f}" for k, v in res.items())
                log.info("step %d validation: %s", step, parts)

    if start_step == 0:
        validate(0)
    bar = None
    if ctx.is_main and progress_enabled():
        from tqdm import tqdm

        bar = tqdm(
            total=cfg.steps,
            initial=start_step,
            desc="train",
            file=sys.stderr,
            dynamic_ncols=True,
            mininterval=2.0,
        )
    images_per_step = cfg.batch_size * ctx.world_size
    t_last, steps_since = time.perf_counter(), 0
    paused[0] = 0.0  # step-0 validation ran before t_last: not part of the first window
    it = in_order(loader, start_step)
    step = start_step
    try:
        for step in range(start_step, cfg.steps):
            batch = next(it)
            parts = trainer.train_step(batch, step)
            avg.add(parts)
            done = step + 1
            steps_since += 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                if ctx.device.type == "cuda":
                    torch.cuda.synchronize()
                now = time.perf_counter()
                ips = images_per_step * steps_since / max(now - t_last - paused[0], 1e-9)
                t_last, steps_since, paused[0] = now, 0, 0.0
                losses = avg.pop()
                if not all(math.isfinite(v) for v in losses.values()):
                    raise MintError(f"train {out_dir}: non-finite loss at step {done}: {losses}")
                metrics.add(
                    {
                        "step": done,
                        "split": "train",
                        **losses,
                        "lr": trainer.lr_now(),
                        "images_per_s": ips,
                    }
                )
                if bar is not None:
                    bar.set_postfix(
                        loss=f"{losses.get('loss', float('nan')):.4f}", img_s=f"{ips:.1f}"
                    )
            if bar is not None:
                bar.update(1)
            if cfg.val_every and done % cfg.val_every == 0 and done < cfg.steps:
                validate(done)
            saved = done % cfg.checkpoint_every == 0 or done == cfg.steps
            if saved:
                t0 = time.perf_counter()
                save_checkpoint(ckpt_dir, done, trainer, ctx, metrics.rows, fingerprint, avg)
                paused[0] += time.perf_counter() - t0
            if stop_after is not None and done >= stop_after and done < cfg.steps:
                log.info("stopping at step %d as asked (resume continues from here)", done)
                return None
            signum = stop.requested() if done < cfg.steps else None  # same answer everywhere
            if signum is not None:
                if not saved:
                    save_checkpoint(ckpt_dir, done, trainer, ctx, metrics.rows, fingerprint, avg)
                raise Preempted(signum, done)
        if start_step < cfg.steps or not metrics.rows or metrics.rows[-1]["split"] != "val":
            validate(cfg.steps)
    finally:
        if bar is not None:
            bar.close()
        metrics.close()
        del it
    if ctx.is_main:
        write_health(out_dir, metrics.rows, cfg)
        export_model(
            out_dir,
            trainer.student.backbone,
            trainer.student.heads,
            cfg.backbone,
            index.vocab,
            {m: index.raw["stats"][m] for m in index.modalities},
            cfg.to_dict(),
            steps_done=cfg.steps,
            name=out_dir.name,
        )
        log.info("exported %s", out_dir)
        if timm_out is not None:
            save_timm_weights(trainer.pretrained_backbone(), Path(timm_out))
            log.info("pretrained backbone (timm state dict) written to %s", timm_out)
        if not cfg.keep_checkpoints:
            # a finished run leaves no checkpoint: a forced rerun must retrain, not re-export
            shutil.rmtree(ckpt_dir, ignore_errors=True)
    barrier()
    return out_dir


def read_params(text: str) -> TrainConfig:
    """--params: a JSON object, or @path to a JSON file."""
    if text.startswith("@"):
        p = Path(text[1:])
        if not p.is_file():
            raise MintError(f"train --params {p}: file not found")
        return TrainConfig.from_json(p.read_text(), source=str(p))
    return TrainConfig.from_json(text)
