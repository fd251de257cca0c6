"""Functions referenced by import path from our eva templates (losses, post-processing).

eva types its `criterion` argument as `Callable[..., torch.Tensor]`. Recent jsonargparse releases
(4.53 here) refuse a loss *class* for that type ("expects a function or a callable class"), which
breaks eva's own `criterion: torch.nn.CrossEntropyLoss` configs, while plain functions that
return a tensor are accepted by every release. The classification templates therefore name
`torch.nn.functional.cross_entropy` / `binary_cross_entropy_with_logits` (the same computation
as the default-constructed loss classes), and the segmentation templates name the functions
below, each equal to one configuration of eva's `DiceLoss`. The same holds for eva's
`predictions_transforms` (`Callable[[Tensor], Tensor]`): jsonargparse no longer accepts
`torch.argmax` with `init_args: {dim: 1}`, so `argmax_channels` replaces it.
"""

from __future__ import annotations

import functools

import torch


@functools.cache
def _dice(ignore_index: int | None):
    from eva.vision.losses import DiceLoss

    # eva's leaderboard setting: softmax over class logits, Dice computed over the whole batch.
    return DiceLoss(softmax=True, batch=True, ignore_index=ignore_index)


def dice_loss(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """`eva.vision.losses.DiceLoss(softmax=True, batch=True)` (CoNSeP)."""
    return _dice(None)(predictions, targets)


def dice_loss_ignore_5(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """`eva.vision.losses.DiceLoss(softmax=True, batch=True, ignore_index=5)` (MoNuSAC's
    "ambiguous" regions)."""
    return _dice(5)(predictions, targets)


def argmax_channels(predictions: torch.Tensor) -> torch.Tensor:
    """Class index per pixel from NCHW logits (`torch.argmax(x, dim=1)`)."""
    return torch.argmax(predictions, dim=1)
