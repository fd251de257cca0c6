"""MINT training: `MintTrainer` (models, optimiser, one optimisation step) and `train()`, the run.

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
`mint.train.metrics.dino_health`), and a collapse is logged as a WARNING.

Elsewhere: the networks in `mint.train.modules`, checkpoints, RNG state and resume in
`mint.train.checkpoint`, metrics.csv and health.json in `mint.train.metrics`, the autocast
policy in `mint.precision`. The step (`MintTrainer`) and the run (`train`) stay together
(about 620 lines): the run's order of RNG draws, resume and DDP wrap is part of the result, and
reading it next to the step it drives is what a change to either needs.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from mint.errors import MintError
from mint.logging_utils import progress_enabled
from mint.models.backbones import architecture_record, build_backbone
from mint.models.heads import ExpressionHeads
from mint.models.st_vit import STTokenViT, enable_dynamic_img_size
from mint.precision import autocast, autocast_dtype
from mint.train.augment import MultiCrop, local_crop_size_for, normalize_uint8
from mint.train.checkpoint import resume, run_fingerprint, save_checkpoint
from mint.train.config import TrainConfig
from mint.train.data import ShardIndex, TrainStream, ValStream, in_order, make_loader, read_index
from mint.train.dino import DINOHead, DINOLoss, cosine_momentum, ema_update, teacher_temperature
from mint.train.distributed import DistContext, barrier, cleanup, init_distributed
from mint.train.export import export_model, save_timm_weights
from mint.train.losses import FrozenAnchor, anchor_loss, masked_mse
from mint.train.metrics import LossAverager, MetricsLog, Throughput, write_health
from mint.train.modules import MintStudent, Teacher
from mint.train.optim import WarmupCosine, build_param_groups
from mint.train.preempt import Preempted, StopSignals

log = logging.getLogger(__name__)


def modality_weight(cfg: TrainConfig, modality: str) -> float:
    """The loss weight of a modality's expression head; MintError for a modality MINT has none for."""
    if modality == "visium":
        return cfg.w_visium
    if modality == "xenium":
        return cfg.w_xenium
    raise MintError(f"train: unknown modality {modality!r} (expected visium or xenium)")


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
        self.amp_dtype = autocast_dtype(cfg.precision, self.device, cpu_autocast=True)
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

    def autocast(self) -> Any:
        """The training precision policy (`mint.precision`) as a context for one forward."""
        return autocast(self.amp_dtype, self.device)

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
    """`train()` inside its process group and signal handlers. The order is part of the result:
    per-process RNGs are seeded before the models are built, the checkpoint is loaded before the
    DDP wrap, and the data stream starts at the resumed step."""
    index = _checked_index(cfg, index_path)
    ckpt_dir = out_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    _seed_process(cfg, ctx)
    trainer = _build_trainer(cfg, index, ctx)
    stop.setup_group()
    fingerprint = run_fingerprint(cfg, index)
    avg = LossAverager(ctx.device)
    start_step, rows = resume(ckpt_dir, trainer, ctx, fingerprint, avg)
    if ctx.distributed:
        trainer.wrap_ddp()
    if ctx.is_main:
        _log_setup(cfg, trainer, index, ctx)
    run = _Run(
        cfg=cfg,
        ctx=ctx,
        out_dir=out_dir,
        trainer=trainer,
        metrics=MetricsLog(out_dir, rows, start_step, enabled=ctx.is_main),
        avg=avg,
        fingerprint=fingerprint,
        clock=Throughput(cfg.batch_size * ctx.world_size),
    )
    crops = trainer.multicrop()
    pin = ctx.device.type == "cuda"
    stream = TrainStream(index, crops, cfg.batch_size, cfg.seed, cfg.shuffle_buffer, start_step)
    loader = make_loader(stream, cfg.num_workers, pin_memory=pin)
    if index.val_shards and trainer.student.heads is not None:
        run.val_loader = make_loader(
            ValStream(index, crops, cfg.batch_size), min(cfg.num_workers, 2), pin_memory=pin
        )
    if not _loop(run, loader, start_step, stop_after, stop):
        return None
    if ctx.is_main:
        _finish(run, index, timm_out)
    barrier()
    return out_dir


def _checked_index(cfg: TrainConfig, index_path: Path) -> ShardIndex:
    """index.json, after checking every shard and modality: one line naming the bad file or
    value before anything is written."""
    index = read_index(index_path)
    # Damaged or truncated shards: one line naming the file, before anything is written.
    from mint.data.shard_verify import verify_shards

    verify_shards(index_path)
    for m in index.modalities:
        modality_weight(cfg, m)  # MintError for an unknown modality
    return index


def _seed_process(cfg: TrainConfig, ctx: DistContext) -> None:
    """TF32 on GPU; Python and NumPy RNGs seeded per process (torch's is seeded by MintTrainer,
    the same in every process, so the heads start identical)."""
    if ctx.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    random.seed(cfg.seed + ctx.rank)
    np.random.seed(cfg.seed + ctx.rank)


def _build_trainer(cfg: TrainConfig, index: ShardIndex, ctx: DistContext) -> MintTrainer:
    """The trainer on this process's device. One process fetches hub weights first; the others
    then read them from the local cache."""
    if ctx.distributed and not ctx.is_main:
        barrier()
    vit = build_backbone(cfg.backbone, pretrained=True)
    if ctx.distributed and ctx.is_main:
        barrier()
    return MintTrainer(
        cfg,
        index.vocab_sizes,
        ctx.device,
        vit=vit,
        world_size=ctx.world_size,
        n_train=index.n_train,
    )


def _log_setup(cfg: TrainConfig, trainer: MintTrainer, index: ShardIndex, ctx: DistContext) -> None:
    """One line on the model, data and layout; the DINO prototype freeze (warn if it never ends)."""
    n_params = sum(p.numel() for p in trainer.student.parameters())
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


@dataclass
class _Run:
    """The state one run's loop works on (built once by `_train`)."""

    cfg: TrainConfig
    ctx: DistContext
    out_dir: Path
    trainer: MintTrainer
    metrics: MetricsLog
    avg: LossAverager
    fingerprint: str
    clock: Throughput
    val_loader: Any = None  # None: no validation shards, or no expression heads

    @property
    def ckpt_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    def validate(self, step: int) -> None:
        """Validation losses as a "val" row of metrics.csv (time left out of images/s)."""
        if self.val_loader is None:
            return
        with self.clock.pause():
            res = self.trainer.evaluate(self.val_loader)
        if res:
            self.metrics.add({"step": step, "split": "val", **res})
            if self.ctx.is_main:
                parts = ", ".join(f"{k} {v:.4f}" for k, v in res.items())
                log.info("step %d validation: %s", step, parts)

    def checkpoint(self, step: int) -> None:
        """Save a checkpoint (collective: every process calls it)."""
        with self.clock.pause():
            save_checkpoint(
                self.ckpt_dir,
                step,
                self.trainer,
                self.ctx,
                self.metrics.rows,
                self.fingerprint,
                self.avg,
            )

    def log_window(self, step: int, bar: Any) -> None:
        """The train row of the log window ending at `step`: average losses, lr, images/s."""
        if self.ctx.device.type == "cuda":
            torch.cuda.synchronize()
        ips = self.clock.window()
        losses = self.avg.pop()
        if not all(math.isfinite(v) for v in losses.values()):
            raise MintError(f"train {self.out_dir}: non-finite loss at step {step}: {losses}")
        lr = self.trainer.lr_now()
        self.metrics.add({"step": step, "split": "train", **losses, "lr": lr, "images_per_s": ips})
        if bar is not None:
            bar.set_postfix(loss=f"{losses.get('loss', float('nan')):.4f}", img_s=f"{ips:.1f}")


def _progress_bar(cfg: TrainConfig, ctx: DistContext, start_step: int) -> Any:
    """A tqdm bar on the main process when progress bars are on, else None."""
    if not (ctx.is_main and progress_enabled()):
        return None
    from tqdm import tqdm

    return tqdm(
        total=cfg.steps,
        initial=start_step,
        desc="train",
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=2.0,
    )


def _loop(
    run: _Run,
    loader: Any,
    start_step: int,
    stop_after: int | None,
    stop: StopSignals,
) -> bool:
    """Steps start_step .. cfg.steps with logging, validation and checkpoints. False when it
    stopped at `stop_after`; raises `Preempted` (after a checkpoint) on a stop signal."""
    cfg = run.cfg
    if start_step == 0:
        run.validate(0)
    bar = _progress_bar(cfg, run.ctx, start_step)
    run.clock.restart()  # step-0 validation ran before: not part of the first window
    it = in_order(loader, start_step)
    try:
        for step in range(start_step, cfg.steps):
            run.avg.add(run.trainer.train_step(next(it), step))
            done = step + 1
            run.clock.steps += 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                run.log_window(done, bar)
            if bar is not None:
                bar.update(1)
            if cfg.val_every and done % cfg.val_every == 0 and done < cfg.steps:
                run.validate(done)
            saved = done % cfg.checkpoint_every == 0 or done == cfg.steps
            if saved:
                run.checkpoint(done)
            if stop_after is not None and done >= stop_after and done < cfg.steps:
                log.info("stopping at step %d as asked (resume continues from here)", done)
                return False
            signum = stop.requested() if done < cfg.steps else None  # same answer everywhere
            if signum is not None:
                if not saved:
                    run.checkpoint(done)
                raise Preempted(signum, done)
        if start_step < cfg.steps or not run.metrics.rows or run.metrics.rows[-1]["split"] != "val":
            run.validate(cfg.steps)
    finally:
        if bar is not None:
            bar.close()
        run.metrics.close()
        del it
    return True


def _finish(run: _Run, index: ShardIndex, timm_out: str | Path | None) -> None:
    """Main process, after the last step: health.json, the exported model (and timm weights),
    then checkpoints/ removed unless `keep_checkpoints`."""
    cfg, out_dir, trainer = run.cfg, run.out_dir, run.trainer
    write_health(out_dir, run.metrics.rows, cfg)
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
        shutil.rmtree(run.ckpt_dir, ignore_errors=True)


def read_params(text: str) -> TrainConfig:
    """--params: a JSON object, or @path to a JSON file."""
    if text.startswith("@"):
        p = Path(text[1:])
        if not p.is_file():
            raise MintError(f"train --params {p}: file not found")
        return TrainConfig.from_json(p.read_text(), source=str(p))
    return TrainConfig.from_json(text)
