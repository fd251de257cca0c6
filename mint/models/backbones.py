"""Backbone registry: which pathology foundation models MINT fine-tunes and how each is built.

Each entry records two things that must not drift apart:

* how the *pretrained* model is fetched (`hub_id` plus the keyword arguments its model card
  passes to `timm.create_model`), and
* how the *same architecture* is rebuilt offline (`arch` plus `model_args`, the content of the
  hub's `config.json`). Exported MINT models store `arch` + `model_args`, so `load_model` never
  touches the network, and tests build every architecture at tiny width with `pretrained=False`.

Layer classes (SwiGLUPacked, SiLU) are stored by name so that the arguments are JSON-serialisable
and can be written into an exported model's `config.json`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mint.errors import MintError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)

# Tile size MINT trains on (224 px at 0.5 um/px): every timm: backbone is built at this size.
TRAIN_IMG_SIZE = 224

# Seed of the demo backbone: `train` and `bench` must see the very same "pretrained" weights.
TINY_VIT_SEED = 20240917

# Tiny sizes used by tests: keep every structural option, shrink width and depth.
TINY_DIMS = {"embed_dim": 32, "depth": 2, "num_heads": 2}


@dataclass(frozen=True)
class BackboneSpec:
    """How one backbone is built, normalised and (optionally) fetched.

    `model_args` are the architecture's keyword arguments for `timm.create_model(arch, ...)`;
    values "SwiGLUPacked" (mlp_layer) and "silu" (act_layer) are resolved by name.
    `resize`: evaluation transform resizes the shorter side to `resize` and centre-crops
    `img_size` (GigaPath's 256 -> 224); None resizes straight to `img_size`.
    `embedding`: the embedding the model's authors publish ("cls" or "cls+patch_mean").
    `eva_embedding`: the embedding eva's leaderboard used (eva's backbone registry returns CLS
    for every pathology model; Virchow2's `include_patch_tokens` defaults to False).
    `hest_precision`: the autocast dtype HEST's bench embeds this model with
    (`hest/bench/cpath_model_zoo/inference_models.py`); None = not in HEST's zoo (fp32).
    """

    name: str
    arch: str
    hub_id: str | None
    model_args: dict[str, Any]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    img_size: int = 224
    patch_size: int = 16
    resize: int | None = None
    interpolation: str = "bicubic"
    embedding: str = "cls"
    eva_embedding: str = "cls"
    hest_precision: str | None = None
    checkpoint: str | None = None  # timm:<name>@<file>: local weights
    deterministic_seed: int | None = None  # tiny-vit: fixed-seed init is its "pretrained" state
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


_SWIGLU = {"mlp_layer": "SwiGLUPacked", "act_layer": "silu"}


def _h_optimus(version: int) -> BackboneSpec:
    """H-optimus-0 and -1 share architecture, kwargs and normalisation; only the weights differ."""
    return BackboneSpec(
        name=f"h-optimus-{version}",
        arch="vit_giant_patch14_reg4_dinov2",
        hub_id=f"hf-hub:bioptimus/H-optimus-{version}",
        model_args={
            "img_size": 224,
            "num_classes": 0,
            "global_pool": "token",
            "init_values": 1e-5,
            "dynamic_img_size": False,
        },
        mean=HOPTIMUS_MEAN,
        std=HOPTIMUS_STD,
        patch_size=14,
        # HEST's zoo has H-optimus-0 only (fp16); H-optimus-1 runs in fp32 (no HEST setting).
        hest_precision="fp16" if version == 0 else None,
        notes=f"H-optimus-{version} (ViT-g/14, 4 registers); own normalisation",
    )


BACKBONES: dict[str, BackboneSpec] = {
    "uni": BackboneSpec(
        name="uni",
        arch="vit_large_patch16_224",
        hub_id="hf-hub:MahmoodLab/uni",
        model_args={
            "img_size": 224,
            "patch_size": 16,
            "init_values": 1e-5,
            "num_classes": 0,
            "dynamic_img_size": True,
        },
        patch_size=16,
        hest_precision="fp16",
        notes="UNI (ViT-L/16); model card: init_values=1e-5, dynamic_img_size=True",
    ),
    "uni2-h": BackboneSpec(
        name="uni2-h",
        arch="vit_giant_patch14_224",
        hub_id="hf-hub:MahmoodLab/UNI2-h",
        model_args={
            "img_size": 224,
            "patch_size": 14,
            "depth": 24,
            "num_heads": 24,
            "init_values": 1e-5,
            "embed_dim": 1536,
            "mlp_ratio": 2.66667 * 2,
            "num_classes": 0,
            "no_embed_class": True,
            "reg_tokens": 8,
            "dynamic_img_size": True,
            **_SWIGLU,
        },
        patch_size=14,
        notes="UNI2-h (ViT-H/14, 8 registers, SwiGLU, no_embed_class)",
    ),
    "virchow2": BackboneSpec(
        name="virchow2",
        arch="vit_huge_patch14_224",
        hub_id="hf-hub:paige-ai/Virchow2",
        model_args={
            "img_size": 224,
            "init_values": 1e-5,
            "num_classes": 0,
            "reg_tokens": 4,
            "mlp_ratio": 5.3375,
            "global_pool": "",
            "dynamic_img_size": True,
            **_SWIGLU,
        },
        patch_size=14,
        embedding="cls+patch_mean",
        hest_precision="fp16",
        notes="Virchow2 (ViT-H/14, 4 registers, SwiGLUPacked + SiLU); embeds as CLS ++ mean(patches)",
    ),
    "h-optimus-0": _h_optimus(0),
    "h-optimus-1": _h_optimus(1),
    "gigapath": BackboneSpec(
        name="gigapath",
        arch="vit_giant_patch14_dinov2",
        hub_id="hf_hub:prov-gigapath/prov-gigapath",
        model_args={
            "img_size": 224,
            "in_chans": 3,
            "patch_size": 16,
            "embed_dim": 1536,
            "depth": 40,
            "num_heads": 24,
            "init_values": 1e-5,
            "mlp_ratio": 5.33334,
            "num_classes": 0,
        },
        patch_size=16,
        resize=256,
        hest_precision="fp32",
        notes="Prov-GigaPath tile encoder (ViT-g/16); eval: Resize 256 + CenterCrop 224",
    ),
    "tiny-vit": BackboneSpec(
        name="tiny-vit",
        arch="vit_tiny_patch16_224",
        hub_id=None,
        model_args={
            "img_size": 224,
            "patch_size": 16,
            "embed_dim": 64,
            "depth": 4,
            "num_heads": 2,
            "mlp_ratio": 3.0,
            "reg_tokens": 2,
            "num_classes": 0,
            "dynamic_img_size": True,
        },
        patch_size=16,
        deterministic_seed=TINY_VIT_SEED,
        notes="demo backbone: ViT patch 16, dim 64, depth 4, 2 registers; fixed-seed init",
    ),
}


def resolve_layer_args(model_args: dict[str, Any]) -> dict[str, Any]:
    """Turn layer names in `model_args` into the classes timm expects."""
    args = dict(model_args)
    mlp = args.get("mlp_layer")
    if isinstance(mlp, str):
        from timm import layers

        if not hasattr(layers, mlp):
            raise MintError(f"backbone: unknown timm mlp_layer {mlp!r}")
        args["mlp_layer"] = getattr(layers, mlp)
    act = args.get("act_layer")
    if isinstance(act, str):
        from timm.layers import get_act_layer

        args["act_layer"] = get_act_layer(act)
    return args


def tiny_model_args(model_args: dict[str, Any]) -> dict[str, Any]:
    """Same structural options (registers, SwiGLU, no_embed_class, init_values, dynamic size,
    patch size), tiny width and depth."""
    args = dict(model_args)
    args.update(TINY_DIMS)
    return args


def parse_spec(name: str) -> BackboneSpec:
    """Registry name, `<registry name>@<checkpoint file>` or `timm:<arch>[@<checkpoint file>]`.

    `<registry name>@<file>` keeps the registered architecture and normalisation and loads the
    local weights instead of the hub's (a user's own copy of UNI, or the demo's pretrained
    `tiny-vit`); the file is a plain timm state dict (.safetensors or tensors-only .pt).
    """
    if name in BACKBONES:
        return BACKBONES[name]
    base, sep, ckpt = name.partition("@")
    if sep and base in BACKBONES:
        if not ckpt:
            raise MintError(f"backbone {name!r}: expected {base}@<checkpoint file>")
        return replace(
            BACKBONES[base],
            name=name,
            hub_id=None,
            checkpoint=ckpt,
            deterministic_seed=None,
            notes=f"{BACKBONES[base].notes}; local weights {ckpt}",
        )
    if name.startswith("timm:"):
        rest = name[len("timm:") :]
        arch, _, ckpt = rest.partition("@")
        if not arch:
            raise MintError(f"backbone {name!r}: expected timm:<name>[@<checkpoint file>]")
        import timm

        if not timm.is_model(arch):
            raise MintError(f"backbone {name!r}: timm has no architecture {arch!r}")
        cfg = timm.models.get_pretrained_cfg(arch)
        mean = tuple(cfg.mean) if cfg is not None and cfg.mean else IMAGENET_MEAN
        std = tuple(cfg.std) if cfg is not None and cfg.std else IMAGENET_STD
        return BackboneSpec(
            name=name,
            arch=arch,
            hub_id=None,
            # Built at the training crop size (timm's DINOv2 ViTs default to 518): the position
            # embedding is resampled once at load, and evaluation runs at the size trained on.
            model_args={"num_classes": 0, "img_size": TRAIN_IMG_SIZE},
            mean=mean,  # type: ignore[arg-type]
            std=std,  # type: ignore[arg-type]
            checkpoint=ckpt or None,
            notes="timm architecture" + (f" with local weights {ckpt}" if ckpt else ""),
        )
    known = ", ".join(sorted(BACKBONES))
    raise MintError(
        f"backbone {name!r}: unknown (known: {known}, <name>@<file>, or timm:<name>[@<file>])"
    )


def _check_vit(model: nn.Module, name: str) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise MintError(
            f"backbone {name!r}: {type(model).__name__} is not a timm VisionTransformer "
            "(MINT inserts its ST token into timm's ViT token sequence)"
        )
    return model


def create_architecture(
    arch: str, model_args: dict[str, Any], seed: int | None = None
) -> nn.Module:
    """Build `arch` with random weights and no network access.

    A `seed` makes the initialisation deterministic without disturbing the caller's RNG.
    """
    import timm

    args = resolve_layer_args(model_args)
    if seed is None:
        return timm.create_model(arch, pretrained=False, **args)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return timm.create_model(arch, pretrained=False, **args)


def _load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise MintError(f"backbone checkpoint {path}: file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickled objects other than tensors are refused
            raise MintError(
                f"backbone checkpoint {path}: not a tensors-only checkpoint ({exc.__class__.__name__})"
            ) from exc
    for key in ("state_dict", "model", "teacher"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict):
        raise MintError(f"backbone checkpoint {path}: expected a dict of tensors")
    out = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            continue
        for prefix in ("module.", "backbone.", "model."):
            if k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    return out


def load_checkpoint_into(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a local `.safetensors` or tensors-only `.pt` file into a timm ViT (head ignored)."""
    path = Path(path)
    sd = _load_state_dict_file(path)
    sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    try:
        model.load_state_dict(sd, strict=True)
        return
    except RuntimeError:
        pass
    # Let timm adapt foreign layouts (resampled pos_embed, original DINO key names, ...).
    from timm.models.vision_transformer import checkpoint_filter_fn

    try:
        adapted = checkpoint_filter_fn(sd, model)
        adapted = {k: v for k, v in adapted.items() if not k.startswith("head.")}
        missing, unexpected = model.load_state_dict(adapted, strict=False)
    except Exception as exc:
        raise MintError(
            f"backbone checkpoint {path}: does not fit the architecture ({exc})"
        ) from exc
    missing = [k for k in missing if not k.startswith("head.")]
    if missing or unexpected:
        raise MintError(
            f"backbone checkpoint {path}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}"
        )


def build_backbone(name: str, pretrained: bool, tiny: bool = False) -> nn.Module:
    """Build a registered backbone (or `timm:<name>[@ckpt]`) as a timm VisionTransformer.

    pretrained=True fetches hub weights (token from the HF_TOKEN environment variable, read by
    huggingface_hub) except for `tiny-vit`, whose fixed-seed initialisation *is* its pretrained
    state, and `timm:<name>@<file>`, which loads the local file. tiny=True keeps the structural
    options at tiny width and depth, for tests; it requires pretrained=False.
    """
    spec = parse_spec(name)
    if tiny and pretrained:
        raise MintError(f"backbone {name!r}: tiny=True builds random weights; use pretrained=False")
    args = tiny_model_args(spec.model_args) if tiny else dict(spec.model_args)
    if pretrained and spec.hub_id is not None:
        import timm

        log.info("fetching %s from %s", name, spec.hub_id)
        try:
            model = timm.create_model(spec.hub_id, pretrained=True, **resolve_layer_args(args))
        except Exception as exc:
            raise MintError(
                f"backbone {name!r}: could not load {spec.hub_id} ({exc.__class__.__name__}: {exc}); "
                "gated models need HF_TOKEN with granted access"
            ) from exc
        return _check_vit(model, name)
    if pretrained and spec.checkpoint is None and spec.deterministic_seed is None:
        if spec.name.startswith("timm:"):
            import timm

            try:
                model = timm.create_model(spec.arch, pretrained=True, **resolve_layer_args(args))
            except Exception as exc:
                raise MintError(f"backbone {name!r}: could not load timm weights ({exc})") from exc
            return _check_vit(model, name)
    model = create_architecture(spec.arch, args, seed=spec.deterministic_seed)
    _check_vit(model, name)
    if pretrained and spec.checkpoint is not None:
        load_checkpoint_into(model, spec.checkpoint)
    return model


def architecture_record(name: str, model: nn.Module, trained: bool = False) -> dict[str, Any]:
    """What an exported model needs to rebuild `model`'s architecture offline.

    The sizes are read from `model` itself (not the spec), so a tiny test build, a changed timm
    default or an overridden size all rebuild exactly. `trained=True` (an exported MINT model)
    evaluates on the whole tile it was trained on: GigaPath's Resize 256 + CenterCrop 224 (its
    authors' and HEST's transform, kept for the base model) is recorded as `base_resize` only.
    """
    spec = parse_spec(name)
    args = dict(spec.model_args)
    args["embed_dim"] = int(model.embed_dim)
    args["depth"] = len(model.blocks)
    args["num_heads"] = int(model.blocks[0].attn.num_heads) if len(model.blocks) else 1
    args["img_size"] = int(model.patch_embed.img_size[0])
    args["patch_size"] = int(model.patch_embed.patch_size[0])
    args["reg_tokens"] = int(getattr(model, "num_reg_tokens", 0))
    args["class_token"] = model.cls_token is not None
    args["no_embed_class"] = bool(model.no_embed_class)
    args["global_pool"] = str(model.global_pool)
    return {
        "backbone": name,
        "arch": spec.arch,
        "model_args": args,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "img_size": int(model.patch_embed.img_size[0]),
        "patch_size": int(model.patch_embed.patch_size[0]),
        "resize": None if trained else spec.resize,
        "base_resize": spec.resize,
        "interpolation": spec.interpolation,
        "embedding": spec.embedding,
        "eva_embedding": spec.eva_embedding,
        "hest_precision": spec.hest_precision,
    }
