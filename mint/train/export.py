"""Export a trained student as `model.safetensors` + `config.json`.

config.json carries everything `mint.load_model` needs to rebuild the encoder offline: the timm
architecture name and its keyword arguments (no hub id is followed), the normalisation, the
token layout, the vocabularies of the expression heads and the target statistics (to turn
standardised predictions back into log1p expression), plus the training configuration.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mint.io import atomic_path
from mint.models.backbones import architecture_record
from mint.models.encoder import MODEL_FORMAT, MODEL_FORMAT_VERSION
from mint.models.heads import ExpressionHeads
from mint.models.st_vit import STTokenViT


def encoder_state(backbone: STTokenViT, heads: ExpressionHeads | None) -> dict[str, torch.Tensor]:
    """State dict with the Encoder's key names (backbone.*, heads.*), on CPU, contiguous."""
    holder = nn.Module()
    holder.backbone = backbone
    if heads is not None:
        holder.heads = heads
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in holder.state_dict().items()}


def timm_state_dict(backbone: STTokenViT) -> dict[str, torch.Tensor]:
    """The wrapped ViT's own weights under timm's key names (no ST token), on CPU: saved with
    safetensors they load as `timm:<arch>@<file>` (or any timm model of the same architecture).
    Used to export a self-supervised pretraining run (`MintTrainer.pretrained_backbone()`)."""
    return {
        k: v.detach().to("cpu").contiguous().clone() for k, v in backbone.vit.state_dict().items()
    }


def save_timm_weights(backbone: STTokenViT, path: Path) -> Path:
    """`timm_state_dict(backbone)` as safetensors at `path` (atomically, readable like the
    model export)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(timm_state_dict(backbone), str(tmp), metadata={"format": "pt"})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
    return path


def export_model(
    out_dir: str | Path,
    backbone: STTokenViT,
    heads: ExpressionHeads | None,
    backbone_name: str,
    vocab: dict[str, list[str]],
    target_stats: dict[str, dict[str, list[float]]],
    train_config: dict[str, Any],
    steps_done: int,
    name: str | None = None,
) -> Path:
    """Write out_dir/model.safetensors and out_dir/config.json (each atomically)."""
    from safetensors.torch import save_file

    import mint

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rec = architecture_record(backbone_name, backbone.vit, trained=True)
    head_mods = list(heads.keys()) if heads is not None else []
    config = {
        "format": MODEL_FORMAT,
        "version": MODEL_FORMAT_VERSION,
        "name": name or out_dir.name,
        **rec,
        "embed_dim": backbone.embed_dim,
        "has_st": True if heads is not None else backbone.has_st,
        "st_source": "st" if backbone.has_st else "cls",
        "token_layout": backbone.token_layout(),
        "heads": heads is not None,
        "vocab": {m: list(vocab[m]) for m in head_mods},
        "target_stats": {m: target_stats[m] for m in head_mods if m in target_stats},
        "targets": "standardised log1p counts: (log1p(x) - mean) / std per gene",
        "outputs": ["cls", "st", "patch_mean"],
        "steps": int(steps_done),
        "train": train_config,
        "mint_version": mint.__version__,
    }
    state = encoder_state(backbone, heads)
    with atomic_path(out_dir / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "mint": MODEL_FORMAT})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # safetensors creates files 0600
    with atomic_path(out_dir / "config.json") as tmp:
        tmp.write_text(json.dumps(config, indent=2) + "\n")
    return out_dir
