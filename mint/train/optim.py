"""AdamW parameter groups (layer-wise lr decay, separate lrs, selective weight decay) and the
warm-up + cosine learning-rate schedule.

* Backbone parameters get `lr * layer_decay ** (depth + 1 - layer_id)`: patch embedding and
  prefix tokens are layer 0, block i is layer i + 1, the final norm is layer depth + 1 (so the
  top of the network trains at `lr` and the stem at `lr * layer_decay ** (depth + 1)`). Lower
  layers hold the most general features; decaying their lr protects them.
* The ST token and the expression heads get `head_lr`: they start from a copy of CLS / from
  scratch and must move much further than the pretrained weights.
* The DINO head starts from scratch too and gets its own `dino_head_lr` (no layer decay). DINOv2
  trains head and backbone at one lr because both start from scratch; when fine-tuning, the
  backbone's lr (2e-5) leaves a fresh head nearly where it started, its outputs barely differ
  between tiles, centering removes the rest and the teacher goes uniform (loss = ln K, no
  signal). The shared warm-up (`warmup_steps`) ramps this lr up like every other.
* No weight decay on biases, norm weights, LayerScale gammas (all 1-D) and tokens / position
  embeddings (cls_token, reg_token, pos_embed, st_token).
"""

from __future__ import annotations

import math
from collections import defaultdict

from torch import nn

NO_DECAY_NAMES = ("cls_token", "reg_token", "pos_embed", "st_token")


def backbone_layer_id(name: str, depth: int) -> int:
    """Layer index of a parameter of the wrapped ViT (`name` relative to the ViT)."""
    if name.startswith(("cls_token", "reg_token", "pos_embed", "patch_embed", "norm_pre")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def _no_decay(name: str, p: nn.Parameter) -> bool:
    return p.ndim <= 1 or name.endswith(".bias") or any(t in name for t in NO_DECAY_NAMES)


def build_param_groups(
    student: nn.Module,
    lr: float,
    head_lr: float,
    weight_decay: float,
    layer_decay: float,
    dino_head_lr: float | None = None,
) -> list[dict]:
    """Parameter groups for a MintStudent-like module with `backbone` (STTokenViT),
    optional `heads` and optional `dino_head` children. `dino_head_lr` None: `lr`."""
    depth = len(student.backbone.vit.blocks)
    groups: dict[tuple, dict] = {}
    buckets: dict[tuple, list] = defaultdict(list)
    for name, p in student.named_parameters():
        if not p.requires_grad:
            continue
        wd = 0.0 if _no_decay(name, p) else weight_decay
        if name.startswith("backbone.vit."):
            lid = backbone_layer_id(name[len("backbone.vit.") :], depth)
            scale = layer_decay ** (depth + 1 - lid)
            key = ("backbone", lid, wd)
            group_lr = lr * scale
        elif name.startswith("backbone.st_token") or name.startswith("heads."):
            key = ("head", 0, wd)
            group_lr = head_lr
        elif name.startswith("dino_head."):
            key = ("dino_head", 0, wd)
            group_lr = lr if dino_head_lr is None else dino_head_lr
        else:
            key = ("other", 0, wd)
            group_lr = lr
        buckets[key].append(p)
        groups[key] = {"lr": group_lr, "weight_decay": wd, "name": f"{key[0]}/{key[1]}/wd{wd:g}"}
    out = []
    for key in sorted(buckets, key=lambda k: (k[0], k[1], k[2])):
        g = dict(groups[key])
        g["params"] = buckets[key]
        g["base_lr"] = g["lr"]
        out.append(g)
    return out


class WarmupCosine:
    """lr multiplier: linear warm-up from 0 to 1 over `warmup` steps, then half cosine down to
    `final` at `total` steps. A plain object so LambdaLR can save it in its state_dict."""

    def __init__(self, warmup: int, total: int, final: float = 0.0) -> None:
        self.warmup = int(warmup)
        self.total = int(total)
        self.final = float(final)

    def __call__(self, step: int) -> float:
        if self.warmup > 0 and step < self.warmup:
            return (step + 1) / self.warmup
        span = max(1, self.total - self.warmup)
        t = min(1.0, (step - self.warmup) / span)
        return self.final + (1 - self.final) * 0.5 * (1 + math.cos(math.pi * t))
