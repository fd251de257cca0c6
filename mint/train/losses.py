"""Expression regression and feature-anchoring losses.

Regression: MSE on standardised log1p targets, counted only where the sample measured the gene
(`mask.npy`) and only for the sample's own modality (the other head's mask row is all False).
Under DDP the sum is divided by the mean count over processes, so that the averaged gradient
equals the single-process gradient of the same global batch (one global mean over elements).

Anchoring: 1 - cos(student CLS, frozen pretrained CLS) on the global crops keeps the fine-tuned
representation close to the pretrained one; with `anchor_patch_tokens` the mean of the same term
over every patch token is added. The frozen copy keeps fp32 weights and runs inside the student's
autocast, so its output is exactly what the pretrained model gives under the student's numerics
(the anchor loss is 0 at step 0). A bf16 copy would save half its memory (ViT-L 0.57 GiB,
ViT-g 2.1 GiB) but its residual stream drifts from the fp32 one, so the target would not be the
pretrained model's output.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _world() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def masked_mse(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    global_mean: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean squared error over the True entries of `mask`.

    Returns (loss, local count). With `global_mean` and an initialised process group the
    denominator is the count averaged over processes (see module docstring). An all-False mask
    gives a zero loss that still depends on `pred` (so every process has the same graph).
    """
    m = mask.to(pred.dtype)
    sq = (pred.float() - target.float()) ** 2
    total = (sq * m.float()).sum()
    count = mask.sum().to(torch.float32)
    denom = count
    if global_mean and _world() > 1:
        denom = count.detach().clone()
        dist.all_reduce(denom)
        denom = denom / _world()
    return total / denom.clamp(min=1.0), count


def anchor_loss(student_cls: torch.Tensor, frozen_cls: torch.Tensor) -> torch.Tensor:
    """mean(1 - cos(student, frozen)) over every leading index ([B, D] CLS or [B, N, D] patch
    tokens); the frozen side carries no gradient."""
    cos = F.cosine_similarity(student_cls.float(), frozen_cls.detach().float(), dim=-1)
    return (1.0 - cos).mean()


class FrozenAnchor(nn.Module):
    """A frozen fp32 copy of the pretrained ViT: eval mode, no gradients. Call it inside the
    student's autocast (if any) so both sides see the same numerics."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit
        self.vit.eval()
        for p in self.vit.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> FrozenAnchor:  # always eval (no dropout, no drop path)
        super().train(False)
        return self

    @torch.no_grad()
    def forward(self, x: torch.Tensor, patch_tokens: bool = False) -> dict[str, torch.Tensor]:
        """{"cls": [B, D]} (mean patch token for a ViT without CLS), plus "patches" [B, N, D]."""
        tokens = self.vit.forward_features(x)
        start = int(self.vit.num_prefix_tokens)
        patches = tokens[:, start:]
        has_cls = getattr(self.vit, "cls_token", None) is not None
        out = {"cls": (tokens[:, 0] if has_cls else patches.mean(dim=1)).float()}
        if patch_tokens:
            out["patches"] = patches.float()
        return out
