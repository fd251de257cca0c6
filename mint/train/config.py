"""Training hyperparameters: one flat dataclass, filled from the JSON that Snakemake passes.

Defaults follow DINOv2 where the method borrows from it (temperatures, centering, EMA, crops,
layer decay, clipping) and usual fine-tuning practice elsewhere. Two schedule lengths default
to a fraction of `steps` (None), so that short demo runs and long cluster runs both make sense
without editing them: `warmup_steps` 10 %, `teacher_temp_warmup_steps` 30 %.
`freeze_last_layer_steps` (None) is one epoch, as in DINO: the prototypes stay fixed until the
backbone has seen every training tile once, which needs index.json's `n_train` and the number of
processes, so it is resolved when training starts (`resolved_freeze_last_layer_steps`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

from mint.errors import MintError


@dataclass
class TrainConfig:
    # model
    backbone: str = "tiny-vit"
    st_token: bool = True  # False: expression heads read the CLS token (ablation)
    st_isolation: bool = True  # no token but ST attends to ST: pretrained outputs kept at step 0
    grad_checkpointing: bool = False
    # schedule and optimiser
    steps: int = 10000
    batch_size: int = 64  # per process
    lr: float = 2e-5  # backbone (top layer); lower layers get lr * layer_decay**depth_from_top
    head_lr: float = 1e-3  # ST token and expression heads
    dino_head_lr: float = 1e-3  # DINO projection head (starts from scratch, like the heads)
    weight_decay: float = 0.05
    layer_decay: float = 0.9
    warmup_steps: int | None = None  # None: 10 % of steps
    grad_clip: float = 3.0  # 0 disables
    # loss weights (0 removes the term and its compute)
    w_visium: float = 1.0
    w_xenium: float = 1.0
    w_dino: float = 1.0
    w_anchor: float = 1.0
    anchor_patch_tokens: bool = False  # also anchor every patch token (not only CLS)
    # multi-crop
    n_local_crops: int = 8
    global_crop_size: int = 224
    local_crop_size: int | None = None  # None: 96, or 98 for patch-14 models
    global_crop_scale: tuple[float, float] = (0.32, 1.0)
    local_crop_scale: tuple[float, float] = (0.05, 0.32)
    # DINO
    dino_prototypes: int = 65536
    dino_hidden_dim: int = 2048
    dino_bottleneck_dim: int = 256
    dino_head_bn: bool = False  # batch norm in the DINO head's hidden layers (DINO's use_bn)
    student_temp: float = 0.1
    teacher_temp_start: float = 0.04  # warm-up start (DINOv2's warmup_teacher_temp)
    teacher_temp_final: float = 0.07  # after the warm-up (DINOv2's teacher_temp)
    teacher_temp_warmup_steps: int | None = None  # None: 30 % of steps
    center_momentum: float = 0.9
    ema_momentum: float = 0.992
    ema_momentum_final: float = 1.0
    freeze_last_layer_steps: int | None = None  # None: one epoch (n_train / global batch)
    # runtime
    precision: str = "auto"  # auto (bf16 on a bf16-capable GPU, else fp32) | bf16 | fp32
    num_workers: int = 4
    shuffle_buffer: int = 1000
    checkpoint_every: int = 1000
    log_every: int = 10
    val_every: int = 1000  # 0: only before and after training
    seed: int = 0
    # True: leave checkpoints/ after the export. A forced rerun (outputs deleted) then resumes
    # from the final checkpoint and re-exports the same weights instead of retraining.
    keep_checkpoints: bool = False

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, params: dict[str, Any], source: str = "--params") -> TrainConfig:
        if not isinstance(params, dict):
            raise MintError(f"train {source}: expected a JSON object, got {type(params).__name__}")
        names = set(cls.field_names())
        for old, new in RENAMED.items():
            if old in params:
                raise MintError(f"train {source}: {old} was renamed {new}")
        unknown = sorted(k for k in params if k not in names)
        if unknown:
            raise MintError(
                f"train {source}: unknown key(s) {', '.join(unknown)} "
                f"(known: {', '.join(cls.field_names())})"
            )
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name in params:
                kwargs[f.name] = _coerce(f.name, params[f.name], f.default, source)
        cfg = cls(**kwargs)
        cfg.validate(source)
        return cfg

    @classmethod
    def from_json(cls, text: str, source: str = "--params") -> TrainConfig:
        try:
            params = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError as exc:
            raise MintError(f"train {source}: not valid JSON ({exc})") from exc
        return cls.from_dict(params, source)

    def to_dict(self) -> dict[str, Any]:
        d = {n: getattr(self, n) for n in self.field_names()}
        for k in ("global_crop_scale", "local_crop_scale"):
            d[k] = list(d[k])
        return d

    def validate(self, source: str = "--params") -> None:
        def bad(key: str, why: str) -> MintError:
            return MintError(f"train {source}: {key} {why}")

        if self.steps < 1:
            raise bad("steps", "must be >= 1")
        if self.batch_size < 1:
            raise bad("batch_size", "must be >= 1")
        for k in (
            "w_visium",
            "w_xenium",
            "w_dino",
            "w_anchor",
            "lr",
            "head_lr",
            "dino_head_lr",
            "weight_decay",
        ):
            if getattr(self, k) < 0:
                raise bad(k, "must be >= 0")
        if not 0 < self.layer_decay <= 1:
            raise bad("layer_decay", "must be in (0, 1]")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise bad("precision", f"must be auto, bf16 or fp32, not {self.precision!r}")
        if self.n_local_crops < 0:
            raise bad("n_local_crops", "must be >= 0")
        for k in ("global_crop_scale", "local_crop_scale"):
            lo, hi = getattr(self, k)
            if not 0 < lo <= hi <= 1:
                raise bad(k, "must be [lo, hi] with 0 < lo <= hi <= 1")
        if self.w_visium + self.w_xenium + self.w_dino + self.w_anchor <= 0:
            raise bad("w_*", "every loss weight is 0: nothing to train")
        if self.checkpoint_every < 1 or self.log_every < 1 or self.val_every < 0:
            raise bad("checkpoint_every/log_every/val_every", "must be >= 1 (val_every >= 0)")

    # -- derived values ---------------------------------------------------------------------
    @property
    def resolved_warmup_steps(self) -> int:
        return _frac(self.warmup_steps, self.steps, 0.10)

    @property
    def resolved_teacher_temp_warmup_steps(self) -> int:
        return _frac(self.teacher_temp_warmup_steps, self.steps, 0.30)

    def resolved_freeze_last_layer_steps(self, n_train: int | None, world_size: int = 1) -> int:
        """Steps during which the DINO head's last layer gets no update.

        None means one epoch, ceil(n_train / (batch_size * world_size)): DINO freezes the
        prototypes for the first epoch so that they do not collapse while the backbone's features
        are still moving fast. Without `n_train` (a trainer built without an index, as in the
        step benchmark) nothing is frozen unless a number was given.
        """
        if self.freeze_last_layer_steps is not None:
            return int(self.freeze_last_layer_steps)
        if n_train is None:
            return 0
        return int(math.ceil(n_train / (self.batch_size * max(1, world_size))))

    @property
    def use_dino(self) -> bool:
        return self.w_dino > 0

    @property
    def use_anchor(self) -> bool:
        return self.w_anchor > 0


# Keys that changed name: a clear error instead of "unknown key".
RENAMED = {
    "teacher_temp": "teacher_temp_start (warm-up start; teacher_temp_final is the value after it)"
}


def _frac(value: int | None, steps: int, fraction: float) -> int:
    return int(value) if value is not None else int(math.ceil(steps * fraction))


def _coerce(name: str, value: Any, default: Any, source: str) -> Any:
    """Check JSON value types against the field's default (ints accepted for floats)."""
    if name in ("global_crop_scale", "local_crop_scale"):
        if not (isinstance(value, list | tuple) and len(value) == 2):
            raise MintError(f"train {source}: {name} must be a list [lo, hi]")
        return (float(value[0]), float(value[1]))
    if value is None:
        if name in (
            "warmup_steps",
            "teacher_temp_warmup_steps",
            "freeze_last_layer_steps",
            "local_crop_size",
        ):
            return None
        raise MintError(f"train {source}: {name} may not be null")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise MintError(f"train {source}: {name} must be true or false")
        return value
    if isinstance(default, int) or default is None:
        if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
            raise MintError(f"train {source}: {name} must be an integer")
        return int(value)
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise MintError(f"train {source}: {name} must be a number")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise MintError(f"train {source}: {name} must be a string")
        return value
    return value
