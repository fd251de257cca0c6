"""The backbone that eva instantiates from its YAML (`class_path: mint.eva.backbone.MintBackbone`).

eva builds models from `class_path` + `init_args` through jsonargparse, so this class takes only
plain arguments (a model spec string and flags) and loads everything itself, offline. Input
tensors arrive already resized and normalised by eva's transforms (our configs set eva's
mean/std to the model's own), so the forward pass applies no transform of its own.

Outputs:
- classification (offline embeddings writer): `[B, D]`, the CLS token by default; `cls+st`
  concatenates CLS and the MINT ST token (`[B, 2D]`); `st` and `cls+patch_mean` also exist.
- segmentation (online): a list of NCHW feature maps, the last `n_feature_maps` of
  `Encoder.feature_maps` (1 = the last block, as eva's `out_indices: 1`): patch tokens before the
  final norm, registers and the ST token dropped, which is what eva's timm encoder
  (`features_only`) returns for the same model.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from mint.errors import MintError

Output = Literal["cls", "cls+st", "st", "cls+patch_mean"]
OUTPUT_KEYS: dict[str, tuple[str, ...]] = {
    "cls": ("cls",),
    "cls+st": ("cls", "st"),
    "st": ("st",),
    "cls+patch_mean": ("cls", "patch_mean"),
}


def _build_encoder(model: str, pretrained: bool) -> nn.Module:
    """Indirection so the encoder factory is looked up at call time (imported lazily: eva's
    `--print_config` and the renderer import this module without loading any model code)."""
    from mint.models.encoder import build_encoder

    return build_encoder(model, device="cpu", pretrained=pretrained)


def output_dim(embed_dim: int, output: str) -> int:
    """Width of the `[B, D]` embedding for an output choice (IN_FEATURES of eva's head)."""
    if output not in OUTPUT_KEYS:
        raise MintError(f"eva backbone output {output!r}: unknown (use {', '.join(OUTPUT_KEYS)})")
    return embed_dim * len(OUTPUT_KEYS[output])


class MintBackbone(nn.Module):
    """A frozen MINT or base encoder as an eva backbone.

    Args:
        model: a registry name (`uni`, `tiny-vit`, ...), `timm:<name>[@<checkpoint>]`, or a MINT
            model folder (config.json + model.safetensors).
        output: which tokens make the embedding (classification).
        segmentation: return a list of NCHW feature maps instead of `[B, D]`.
        n_feature_maps: how many of the last feature maps to return (segmentation).
        pretrained: load the weights (False builds the architecture only; tests).
    """

    def __init__(
        self,
        model: str,
        output: Output = "cls",
        segmentation: bool = False,
        n_feature_maps: int = 1,
        pretrained: bool = True,
    ) -> None:
        super().__init__()
        if output not in OUTPUT_KEYS:
            raise MintError(
                f"eva backbone {model}: output {output!r} unknown (use {', '.join(OUTPUT_KEYS)})"
            )
        if n_feature_maps < 1:
            raise MintError(f"eva backbone {model}: n_feature_maps must be >= 1")
        self.model = model
        self.output = output
        self.segmentation = segmentation
        self.n_feature_maps = n_feature_maps
        self.encoder = _build_encoder(model, pretrained)
        if not segmentation and "st" in OUTPUT_KEYS[output] and not self.encoder.has_st:
            raise MintError(
                f"eva backbone {model}: output {output!r} needs an ST token, and this model has "
                "none (base backbones have only CLS; use output cls)"
            )
        # Frozen feature extractor: no gradients, and always in eval mode (see `train`).
        self.encoder.requires_grad_(False)
        self.encoder.eval()

    @property
    def embed_dim(self) -> int:
        """Width of the output (`[B, D]`) or channels of the concatenated feature maps."""
        if self.segmentation:
            return self.encoder.embed_dim * self.n_feature_maps
        return output_dim(self.encoder.embed_dim, self.output)

    def train(self, mode: bool = True) -> MintBackbone:
        """Lightning switches the whole LightningModule to train mode during fit; a frozen
        backbone must keep dropout / drop-path off, so the encoder stays in eval mode."""
        super().train(mode)
        self.encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.segmentation:
            maps = list(self.encoder.feature_maps(x))
            return maps[-self.n_feature_maps :]
        out = self.encoder(x)
        keys = OUTPUT_KEYS[self.output]
        if len(keys) == 1:
            return out[keys[0]]
        return torch.cat([out[k] for k in keys], dim=-1)
