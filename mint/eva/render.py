"""Render an eva config (YAML) for one model, task and stage from our templates.

Templates (`mint/eva/templates/<task>.yaml`, or any file given with `--template`) are ordinary eva
configs in which per-run values are written as `"{{ field }}"`. A string that is exactly one
field takes the field's typed value (int, list, dict, bool); a field inside a longer string is
replaced by its text. Unknown fields are an error, so a typo cannot reach eva.

Offline tasks are rendered per stage, so each eva command only builds what it uses:
- `predict`: the embeddings writer with our backbone and the image datasets; no head datasets.
- `fit`: the head, the embeddings datasets and the metrics; no backbone, no image datasets (the
  fit step needs neither the model weights nor the images, and PANDA's dataset class would
  otherwise fetch its label file at construction).
Online (segmentation) tasks have only `fit`, with the backbone as eva's encoder.

Fields: backbone, in_features, normalize_mean, normalize_std, resize_dim (the model's own
normalisation and input size), data_dir, download, embeddings_root, output_root, work_dir,
panda_labels_dir, n_runs, max_steps, max_epochs, batch_size, predict_batch_size, lr, patience,
n_patches, num_classes (synthetic), accelerator, devices, precision, num_workers,
progress_refresh.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from mint.errors import MintError
from mint.eva.backbone import OUTPUT_KEYS, output_dim
from mint.eva.tasks import TaskSpec, early_stopping_patience, get_task, task_data_dir

log = logging.getLogger(__name__)

Stage = Literal["predict", "fit"]
BACKBONE_CLASS = "mint.eva.backbone.MintBackbone"
WRITER_SUFFIX = "EmbeddingsWriter"
OVERRIDE_KEYS = (
    "n_runs",
    "max_steps",
    "max_epochs",
    "batch_size",
    "predict_batch_size",
    "lr",
    "n_patches",
    "patience",
    "precision",
)
_FIELD = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")
_OMIT = object()  # a field with this value removes its key (e.g. precision when not set)


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What the renderer needs to know about a model (without loading its weights if possible)."""

    embed_dim: int
    has_st: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    img_size: int


@dataclasses.dataclass
class RenderOptions:
    task: str
    model: str  # registry name, timm:<name>[@ckpt] or MINT model folder
    model_name: str  # results key ({model} in results paths)
    stage: Stage
    output_root: str  # eva's default_root_dir (timestamped session folders go here)
    embeddings_root: str | None = None  # offline tasks
    data_root: str | None = None
    data_dir: str | None = None  # overrides <data_root>/<task folder>
    download: bool = False
    output: str = "cls"
    accelerator: str = "auto"
    devices: int = 1
    num_workers: int = 4
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    in_features: int | None = None
    template: str | None = None
    pretrained: bool = True
    progress_refresh: int = 10
    n_feature_maps: int = 1


def resolve_model_spec(spec: str) -> str:
    """A model folder becomes an absolute path (eva may run from another directory)."""
    path = Path(spec)
    if path.is_dir():
        return str(path.resolve())
    return spec


@functools.lru_cache(maxsize=8)
def model_info(spec: str) -> ModelInfo:
    """Embedding width, normalisation and input size of a model, without loading its weights.

    A MINT folder answers from its config.json; a registry name or `timm:` spec from the
    registry entry, with the architecture instantiated on PyTorch's meta device (no memory, no
    initialisation, milliseconds even for ViT-g). Anything else falls back to building the
    encoder without pretrained weights.
    """
    try:
        return _model_info_cheap(spec)
    except MintError:
        raise
    except Exception as exc:  # pragma: no cover - defensive: meta build unsupported
        log.debug("model %s: cheap model info failed (%s); building it", spec, exc)
    from mint.models.encoder import build_encoder

    enc = build_encoder(spec, device="cpu", pretrained=False)
    return ModelInfo(
        embed_dim=int(enc.embed_dim),
        has_st=bool(enc.has_st),
        mean=tuple(float(v) for v in enc.mean),
        std=tuple(float(v) for v in enc.std),
        img_size=int(enc.img_size),
    )


def _model_info_cheap(spec: str) -> ModelInfo:
    import torch

    from mint.models import backbones

    path = Path(spec)
    if path.is_dir():
        from mint.models.encoder import read_model_config

        cfg = read_model_config(path)
        arch, args = cfg["arch"], dict(cfg["model_args"])
        layout = cfg.get("token_layout", {})
        default_st = layout.get("st_index") is not None or bool(cfg.get("heads", True))
        has_st = bool(cfg.get("has_st", default_st))
        mean, std, img_size = cfg["mean"], cfg["std"], cfg["img_size"]
    else:
        bs = backbones.parse_spec(spec)
        arch, args = bs.arch, dict(bs.model_args)
        has_st, mean, std, img_size = False, bs.mean, bs.std, None
    embed_dim = args.get("embed_dim")
    if not embed_dim or img_size is None:
        with torch.device("meta"):
            vit = backbones.create_architecture(arch, args)
        embed_dim = embed_dim or int(vit.embed_dim)
        img_size = img_size or int(vit.patch_embed.img_size[0])
    return ModelInfo(
        embed_dim=int(embed_dim),
        has_st=has_st,
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        img_size=int(img_size),
    )


def embeddings_width(embeddings_root: str | Path) -> int | None:
    """Width of the embeddings eva wrote (read from the first file of its manifest), if any."""
    import csv

    manifest = Path(embeddings_root) / "manifest.csv"
    if not manifest.is_file():
        return None
    with manifest.open(newline="") as fh:
        row = next(csv.DictReader(fh), None)
    if row is None:
        return None
    import torch

    tensors = torch.load(Path(embeddings_root) / row["embeddings"], map_location="cpu")
    first = tensors[0] if isinstance(tensors, (list, tuple)) else tensors
    return int(first.shape[-1])


def load_template(task: TaskSpec, template: str | None = None) -> dict:
    if template:
        path = Path(template)
        if not path.is_file():
            raise MintError(f"eva task {task.name}: template {template} not found")
        text = path.read_text()
        where = str(path)
    else:
        ref = resources.files("mint.eva") / "templates" / task.template
        if not ref.is_file():
            raise MintError(f"eva task {task.name}: no packaged template {task.template}")
        text = ref.read_text()
        where = f"mint/eva/templates/{task.template}"
    try:
        cfg = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise MintError(f"eva task {task.name} {where}: invalid YAML ({exc})") from None
    if not isinstance(cfg, dict) or not {"trainer", "model", "data"} <= set(cfg):
        raise MintError(f"eva task {task.name} {where}: needs trainer, model and data sections")
    return cfg


def prune_for_stage(cfg: dict, task: TaskSpec, stage: Stage) -> dict:
    """Drop what the stage does not use (see module docstring)."""
    cfg = copy.deepcopy(cfg)
    data = cfg["data"].setdefault("init_args", {})
    datasets = data.setdefault("datasets", {})
    loaders = data.setdefault("dataloaders", {})
    if not task.offline:
        if stage != "fit":
            raise MintError(
                f"eva task {task.name}: online segmentation task, it has no predict step "
                "(run `mint eva fit` only)"
            )
        return cfg
    if stage == "predict":
        for key in ("train", "val", "test"):
            datasets.pop(key, None)
            loaders.pop(key, None)
    elif stage == "fit":
        datasets.pop("predict", None)
        loaders.pop("predict", None)
        callbacks = cfg["trainer"].get("init_args", {}).get("callbacks", [])
        cfg["trainer"]["init_args"]["callbacks"] = [
            cb
            for cb in callbacks
            if not (isinstance(cb, dict) and str(cb.get("class_path", "")).endswith(WRITER_SUFFIX))
        ]
    else:
        raise MintError(f"eva task {task.name}: unknown stage {stage!r} (predict or fit)")
    return cfg


def fields_used(node: Any) -> set[str]:
    if isinstance(node, dict):
        return set().union(*(fields_used(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(fields_used(v) for v in node)) if node else set()
    if isinstance(node, str):
        return set(_FIELD.findall(node))
    return set()


def substitute(node: Any, values: dict[str, Any]) -> Any:
    """Replace `{{ field }}` strings; `_OMIT` values delete their key or list item."""
    if isinstance(node, dict):
        out = {}
        for key, val in node.items():
            new = substitute(val, values)
            if new is not _OMIT:
                out[key] = new
        return out
    if isinstance(node, list):
        return [v for v in (substitute(x, values) for x in node) if v is not _OMIT]
    if isinstance(node, str):
        whole = _FIELD.fullmatch(node.strip())
        if whole:
            value = values[whole.group(1)]
            return value if value is _OMIT else copy.deepcopy(value)
        return _FIELD.sub(lambda m: str(values[m.group(1)]), node)
    return node


def check_overrides(
    overrides: dict[str, Any], task: str = "", config_key: str = ""
) -> dict[str, Any]:
    """The protocol overrides, typed and checked: what `mint eva` applies to a task's protocol,
    and (through mint.config, with `config_key`) what the workflow checks at parse time, so a
    value refused by the job is refused before any job runs. Messages name the task in a job,
    the config key (`config 'eva.overrides.lr'`) at parse time."""

    def bad(key: str, text: str) -> MintError:
        name = f"config '{config_key}.{key}'" if config_key else f"eva task {task}: override {key}"
        return MintError(f"{name}: {text}")

    unknown = sorted(set(overrides) - set(OVERRIDE_KEYS))
    if unknown:
        if config_key:
            from mint.config import unknown_key

            raise MintError(unknown_key(config_key, unknown[0], OVERRIDE_KEYS))
        raise MintError(
            f"eva task {task}: unknown override {unknown[0]!r} (known: {', '.join(OVERRIDE_KEYS)})"
        )
    checked = {}
    for key, val in overrides.items():
        if val is None:
            continue
        if key == "precision":
            checked[key] = str(val)
        elif key == "lr":
            try:
                checked[key] = float(val)
            except (TypeError, ValueError):
                raise bad(key, f"{val!r} is not a number") from None
            if isinstance(val, bool) or checked[key] <= 0:
                raise bad(key, "must be > 0")
        else:
            try:
                checked[key] = int(val)
            except (TypeError, ValueError):
                raise bad(key, f"{val!r} is not an integer") from None
            if isinstance(val, bool) or checked[key] < 1:
                raise bad(key, "must be >= 1")
    return checked


def _synthetic_manifest(data_dir: Path) -> dict:
    from mint.eva.synthetic import read_manifest

    return read_manifest(data_dir)


def render_config(opts: RenderOptions, info: ModelInfo | None = None) -> dict:
    """The eva config (a dict) for one model, task and stage."""
    task = get_task(opts.task)
    if opts.output not in OUTPUT_KEYS:
        raise MintError(f"eva task {task.name}: embedding {opts.output!r} unknown")
    if task.offline and not opts.embeddings_root:
        raise MintError(f"eva task {task.name}: offline task, needs an embeddings root")
    cfg = prune_for_stage(load_template(task, opts.template), task, opts.stage)
    used = fields_used(cfg)

    model_spec = resolve_model_spec(opts.model)
    _info: list[ModelInfo] = [info] if info is not None else []

    def get_info() -> ModelInfo:
        if not _info:
            _info.append(model_info(model_spec))
        return _info[0]

    protocol = task.protocol()
    protocol.update(check_overrides(opts.overrides, task=task.name))
    data_dir = task_data_dir(task, opts.data_root, opts.data_dir)
    segmentation = task.kind == "segmentation"

    n_train = task.n_train
    num_classes = None
    if task.name == "synthetic" and ({"num_classes", "patience"} & used):
        manifest = _synthetic_manifest(data_dir)
        num_classes = len(manifest["classes"])
        n_train = int(manifest["splits"]["train"])

    def in_features() -> int:
        if opts.in_features:
            return int(opts.in_features)
        if segmentation:
            return get_info().embed_dim * opts.n_feature_maps
        if opts.stage == "fit" and opts.embeddings_root:
            width = embeddings_width(opts.embeddings_root)
            if width:
                return width
        return output_dim(get_info().embed_dim, opts.output)

    def backbone() -> dict:
        init_args: dict[str, Any] = {"model": model_spec}
        if segmentation:
            init_args["segmentation"] = True
            if opts.n_feature_maps != 1:
                init_args["n_feature_maps"] = opts.n_feature_maps
        else:
            init_args["output"] = opts.output
        if not opts.pretrained:
            init_args["pretrained"] = False
        return {"class_path": BACKBONE_CLASS, "init_args": init_args}

    def patience() -> int:
        if protocol.get("patience"):
            return int(protocol["patience"])
        steps = protocol["max_steps"]
        return early_stopping_patience(
            n_train,
            int(protocol["batch_size"]),
            None if steps is None else int(steps),
            protocol["max_epochs"],
        )

    def absolute(p: str | None) -> str:
        return str(Path(p).resolve()) if p else ""

    makers: dict[str, Callable[[], Any]] = {
        "backbone": backbone,
        "in_features": in_features,
        "normalize_mean": lambda: [float(v) for v in get_info().mean],
        "normalize_std": lambda: [float(v) for v in get_info().std],
        "resize_dim": lambda: int(get_info().img_size),
        "data_dir": lambda: str(data_dir),
        "panda_labels_dir": lambda: str(data_dir.parent),
        "download": lambda: bool(opts.download and task.auto_download),
        "embeddings_root": lambda: absolute(opts.embeddings_root),
        "output_root": lambda: absolute(opts.output_root),
        "work_dir": lambda: absolute(opts.output_root),
        "n_runs": lambda: int(protocol["n_runs"]),
        "max_steps": lambda: _OMIT if protocol["max_steps"] is None else int(protocol["max_steps"]),
        "max_epochs": lambda: _OMIT if protocol["max_epochs"] is None else protocol["max_epochs"],
        "batch_size": lambda: int(protocol["batch_size"]),
        "predict_batch_size": lambda: int(protocol["predict_batch_size"]),
        "lr": lambda: float(protocol["lr"]),
        "patience": patience,
        "n_patches": lambda: int(protocol["n_patches"] or 0) or _OMIT,
        "num_classes": lambda: num_classes,
        "accelerator": lambda: opts.accelerator,
        "devices": lambda: int(opts.devices),
        "precision": lambda: protocol.get("precision") or _OMIT,
        "num_workers": lambda: int(opts.num_workers),
        "progress_refresh": lambda: int(opts.progress_refresh),
    }
    unknown = sorted(used - set(makers))
    if unknown:
        raise MintError(f"eva task {task.name}: template field {{{{ {unknown[0]} }}}} is unknown")
    values = {name: makers[name]() for name in sorted(used)}
    cfg = substitute(cfg, values)
    _fix_dataloaders(cfg, opts)
    return cfg


def _fix_dataloaders(cfg: dict, opts: RenderOptions) -> None:
    """eva's DataLoader defaults (persistent_workers, prefetch_factor, pin_memory) need zero
    workers and CPU runs spelled out, or torch refuses them."""
    loaders = cfg.get("data", {}).get("init_args", {}).get("dataloaders", {}) or {}
    for loader in loaders.values():
        if not isinstance(loader, dict):
            continue
        if int(loader.get("num_workers", opts.num_workers) or 0) == 0:
            loader["persistent_workers"] = False
            loader["prefetch_factor"] = None
        if opts.accelerator == "cpu":
            loader["pin_memory"] = False


def dump_config(cfg: dict, header: str = "") -> str:
    text = yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False, width=100)
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    return ("\n".join(lines) + "\n" if lines else "") + text


def render_to_file(opts: RenderOptions, out: str | Path, info: ModelInfo | None = None) -> dict:
    from mint.io import write_text

    cfg = render_config(opts, info)
    header = (
        f"eva config rendered by `mint eva render` (MINT) for task {opts.task}, "
        f"model {opts.model_name} ({opts.model}), stage {opts.stage}.\n"
        f"Template: {opts.template or f'mint/eva/templates/{opts.task}.yaml'}"
    )
    write_text(out, dump_config(cfg, header))
    return cfg
