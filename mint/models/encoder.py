"""The encoder every downstream stage uses: a backbone (with or without the ST token) plus its
normalisation, behind one small API.

* `build_encoder(spec)`: spec is a registry name (`uni`, `tiny-vit`, ...), `timm:<name>[@file]`,
  or a MINT model folder (config.json + model.safetensors).
* `load_model(dir)`: rebuilds a trained MINT encoder offline (architecture from config.json with
  random weights, then the state dict), so it never needs the hub or a token.
* `Encoder.forward(x)` takes normalised float images [B, 3, H, W] and returns `cls`,
  `patch_mean` and, for MINT models, `st` ([B, D] each).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mint.errors import MintError
from mint.models.backbones import architecture_record, build_backbone, create_architecture
from mint.models.heads import ExpressionHeads
from mint.models.st_vit import STTokenViT

log = logging.getLogger(__name__)

MODEL_FORMAT = "mint-model"
MODEL_FORMAT_VERSION = 1


class Encoder(nn.Module):
    """Backbone + normalisation metadata (+ expression heads for MINT models).

    Attributes: name, embed_dim, has_st, img_size, patch_size, mean, std (and `resize`, the
    shorter-side resize before the centre crop, if the backbone's authors use one).
    """

    def __init__(
        self,
        backbone: STTokenViT,
        name: str,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        img_size: int,
        resize: int | None = None,
        heads: ExpressionHeads | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = heads
        self.name = name
        self.embed_dim = backbone.embed_dim
        # A MINT model whose heads read the CLS token (st_token=False ablation) reports that
        # token as `st`: `st` is always "the token the expression heads were trained on".
        self.has_st = backbone.has_st or heads is not None
        self.img_size = int(img_size)
        self.patch_size = backbone.patch_size
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.resize = resize
        self.meta = dict(meta or {})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.backbone(x)
        result = {"cls": out["cls"], "patch_mean": out["patch_mean"]}
        if self.backbone.has_st:
            result["st"] = out["st"]
        elif self.has_st:
            result["st"] = out["cls"]
        return result

    def forward_tokens(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Like forward, plus `tokens` (all) and `patch_tokens` [B, h*w, D]."""
        out = self.backbone(x, return_tokens=True)
        if not self.backbone.has_st and self.has_st:
            out["st"] = out["cls"]
        return out

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Patch tokens of the last block as one map [B, D, h, w] (for segmentation decoders),
        taken before the final norm, as timm's `features_only` (eva's segmentation encoder)
        returns them."""
        tokens, (h, w) = self.backbone.forward_tokens(x, norm=False)
        patches = tokens[:, self.backbone.patch_start :]
        b, n, d = patches.shape
        return [patches.transpose(1, 2).reshape(b, d, h, w)]

    def predict_expression(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Standardised log1p expression per modality (see config.json `target_stats`)."""
        if self.heads is None:
            raise MintError(f"{self.name}: this encoder has no expression heads")
        out = self.forward(x)
        return self.heads(out["st"])

    def transform(self):
        """Callable: uint8 HWC numpy array or PIL image -> normalised float tensor [3, S, S]."""
        return EvalTransform(self.img_size, self.mean, self.std, self.resize)


class EvalTransform:
    """The backbone's evaluation preprocessing (picklable, for DataLoader workers)."""

    def __init__(self, img_size: int, mean, std, resize: int | None = None) -> None:
        self.img_size = int(img_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.resize = resize

    def __call__(self, img) -> torch.Tensor:
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        if hasattr(img, "convert"):  # PIL image, any mode
            img = img.convert("RGB")
        if not isinstance(img, torch.Tensor):
            arr = np.array(img)  # a writable copy (PIL arrays are read-only)
            if arr.ndim == 2:
                arr = np.repeat(arr[..., None], 3, axis=2)
            img = torch.from_numpy(np.ascontiguousarray(arr[..., :3])).permute(2, 0, 1)
        if img.dtype != torch.uint8:
            raise MintError(f"transform: expected uint8 image, got {img.dtype}")
        s = self.img_size
        if self.resize is not None:
            img = F.resize(img, [self.resize], InterpolationMode.BICUBIC, antialias=True)
            img = F.center_crop(img, [s, s])
        elif tuple(img.shape[-2:]) != (s, s):
            img = F.resize(img, [s, s], InterpolationMode.BICUBIC, antialias=True)
        x = img.float().div_(255.0)
        return (x - self.mean) / self.std


def build_encoder(
    spec: str, device: str | torch.device = "cpu", pretrained: bool = True
) -> Encoder:
    """Encoder for a registry name, `timm:<name>[@ckpt]`, or a MINT model folder."""
    path = Path(spec)
    if path.is_dir():
        return load_model(path, device=device)
    if "/" in spec.partition("@")[0] and not spec.startswith("timm:"):
        raise MintError(
            f"model {spec}: no such MINT model folder (config.json + model.safetensors)"
        )
    vit = build_backbone(spec, pretrained=pretrained)
    rec = architecture_record(spec, vit)
    enc = Encoder(
        STTokenViT(vit, st_token=False),
        name=spec,
        mean=tuple(rec["mean"]),
        std=tuple(rec["std"]),
        img_size=rec["img_size"],
        resize=rec["resize"],
        meta=rec,
    )
    return enc.to(device).eval()


def read_model_config(model_dir: str | Path) -> dict[str, Any]:
    model_dir = Path(model_dir)
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise MintError(f"model {model_dir} config.json: not found")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise MintError(f"model {model_dir} config.json: not valid JSON ({exc})") from exc
    if cfg.get("format") != MODEL_FORMAT:
        raise MintError(
            f"model {model_dir} config.json: not a MINT model (format {cfg.get('format')!r})"
        )
    for key in ("arch", "model_args", "mean", "std", "img_size", "token_layout"):
        if key not in cfg:
            raise MintError(f"model {model_dir} config.json: missing key {key!r}")
    return cfg


def encoder_from_config(cfg: dict[str, Any]) -> Encoder:
    """Rebuild the (untrained) architecture an exported config.json describes. No network."""
    vit = create_architecture(cfg["arch"], cfg["model_args"])
    layout = cfg["token_layout"]
    backbone = STTokenViT(
        vit,
        st_token=layout.get("st_index") is not None,
        st_isolation=bool(layout.get("st_isolation", False)),
    )
    head_sizes = {m: len(v) for m, v in cfg.get("vocab", {}).items()}
    heads = ExpressionHeads(backbone.embed_dim, head_sizes) if cfg.get("heads", True) else None
    return Encoder(
        backbone,
        name=cfg.get("name", cfg.get("backbone", "mint")),
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        img_size=int(cfg["img_size"]),
        resize=cfg.get("resize"),
        heads=heads,
        meta=cfg,
    )


def _first_line(exc: BaseException) -> str:
    """torch/timm messages span many lines; a MintError is one."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return "; ".join(lines[:2])[:300] if lines else ""


def load_model(model_dir: str | Path, device: str | torch.device = "cpu") -> Encoder:
    """Rebuild a trained MINT encoder from `model_dir` (config.json + model.safetensors)."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    cfg = read_model_config(model_dir)
    weights = model_dir / "model.safetensors"
    if not weights.is_file():
        raise MintError(f"model {model_dir} model.safetensors: not found")
    try:
        enc = encoder_from_config(cfg)
    except MintError as exc:
        raise MintError(f"model {model_dir} config.json: {exc}") from exc
    except Exception as exc:  # timm refuses the recorded architecture
        raise MintError(
            f"model {model_dir} config.json: cannot rebuild {cfg['arch']!r} "
            f"({exc.__class__.__name__}: {_first_line(exc)})"
        ) from exc
    try:
        sd = load_file(str(weights))
    except Exception as exc:  # truncated or foreign file
        raise MintError(
            f"model {model_dir} model.safetensors: unreadable "
            f"({exc.__class__.__name__}: {_first_line(exc)})"
        ) from exc
    try:
        missing, unexpected = enc.load_state_dict(sd, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise MintError(
            f"model {model_dir} model.safetensors: does not match config.json ({_first_line(exc)})"
        ) from exc
    if missing or unexpected:
        raise MintError(
            f"model {model_dir} model.safetensors: does not match config.json "
            f"(missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]})"
        )
    return enc.to(device).eval()
