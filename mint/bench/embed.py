"""`mint embed`: embed every patch of a HEST-Bench task with one model, cached per sample.

Embedding is the only GPU part of the benchmark, so it is done once per model and task and
stored; probes (CPU, seconds) then rerun freely with other settings. Each sample is one h5
file written atomically, tagged with a fingerprint of the model and settings, so an interrupted
job resumes where it stopped and a changed model never reuses stale vectors. `manifest.json`
is written last and is what the probe trusts.

Cache layout (`--out-dir`)::

    {sample}.h5     cls (N,D) f4, patch_mean (N,D) f4, st (N,D) f4 if the model has an ST token,
                    barcodes (N,1) bytes, coords (N,2); attrs: sample_id, task, model, fingerprint
    manifest.json   {"version", "model", "task", "fingerprint", "embed_dim", "has_st",
                     "datasets", "precision" (resolved), "precision_requested",
                     "precision_source", "samples": {id: {"file", "n"}}}

All outputs come from the model's own forward (`cls`, `patch_mean`, `st`), in float32; the
variants the probe reports (`cls+st`, `cls+patch_mean`) are concatenations made at probe time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mint.bench.data import BenchSample, BenchTaskData, load_task, read_patch_index
from mint.errors import MintError
from mint.io import atomic_path, write_json
from mint.logging_utils import progress_enabled

log = logging.getLogger(__name__)

CACHE_VERSION = 1
MANIFEST = "manifest.json"
OUTPUT_KEYS = ("cls", "patch_mean", "st")


@dataclass
class EmbedConfig:
    batch_size: int = 128  # HEST embeds in chunks of 128
    num_workers: int = 4
    device: str = "auto"
    precision: str = "auto"  # auto = the backbone's HEST-Bench precision (see resolve_precision)
    overwrite: bool = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="registry name (uni, tiny-vit, ...), timm:<name>[@ckpt], or a MINT model folder",
    )
    parser.add_argument("--bench-dir", required=True, help="folder holding the task folders")
    parser.add_argument("--task", required=True, help="task name, e.g. IDC or SYNTH_VISIUM")
    parser.add_argument("--out-dir", required=True, help="cache folder for this model and task")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-workers", type=int, default=4, help="DataLoader worker processes")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cuda, cpu")
    parser.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp16", "fp32"],
        default="auto",
        help="autocast dtype on CUDA; auto = as HEST's bench embeds the backbone (UNI, Virchow2, "
        "H-optimus-0: fp16; GigaPath and models outside HEST's zoo: fp32; a MINT model: its "
        "base backbone's); CPU always runs fp32",
    )
    parser.add_argument("--overwrite", action="store_true", help="ignore cached samples")


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MintError(f"--device {device}: CUDA is not available on this machine")
    return device


def backbone_precision(spec: str) -> tuple[str, str]:
    """(precision, source): the autocast dtype HEST's bench uses for this model.

    HEST sets one precision per model in `hest/bench/cpath_model_zoo/inference_models.py`
    (`torch.cuda.amp.autocast(dtype=encoder.precision)`); the registry records it as
    `hest_precision`. A MINT model folder uses its base backbone's; a model outside HEST's zoo
    runs in fp32 (no autocast).
    """
    from mint.models.backbones import parse_spec

    base = spec
    path = Path(spec)
    if path.is_dir():
        cfg_path = path / "config.json"
        try:
            base = json.loads(cfg_path.read_text()).get("backbone", "")
        except (OSError, json.JSONDecodeError):
            base = ""
    try:
        hest = parse_spec(base).hest_precision if base else None
    except MintError:
        hest = None
    if hest is None:
        return "fp32", f"{base or spec}: not in HEST's model zoo, full precision"
    return hest, f"{base}: HEST-Bench inference_models.py precision"


def resolve_precision(requested: str, spec: str, device: str) -> tuple[str, str]:
    """The precision the embeddings are computed in, and why. Autocast exists only on CUDA (as
    in HEST, whose `torch.cuda.amp.autocast` is a no-op on CPU): a CPU run is always fp32."""
    if not device.startswith("cuda"):
        return "fp32", "cpu: no autocast"
    if requested != "auto":
        return requested, "forced by --precision"
    return backbone_precision(spec)


def model_fingerprint(spec: str, precision: str) -> str:
    """Identity of 'the same embeddings': the model spec, its weights on disk, the precision.

    Computed without loading the model so a fully cached task never pays the model load.
    """
    ident: dict = {"cache_version": CACHE_VERSION, "spec": spec, "precision": precision}
    path = Path(spec)
    if path.is_dir():
        files = {}
        for name in ("config.json", "model.safetensors"):
            p = path / name
            if p.is_file():
                st = p.stat()
                files[name] = [st.st_size, st.st_mtime_ns]
        ident["files"] = files
        cfg = path / "config.json"
        if cfg.is_file():
            ident["config_sha1"] = hashlib.sha1(cfg.read_bytes()).hexdigest()
    elif "@" in spec:
        ckpt = Path(spec.split("@", 1)[1])
        if ckpt.is_file():
            st = ckpt.stat()
            ident["ckpt"] = [st.st_size, st.st_mtime_ns]
    return hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def _patches_stamp(sample: BenchSample) -> list[int]:
    st = sample.patches_path.stat()
    return [st.st_size, st.st_mtime_ns]


def _cached_ok(path: Path, fingerprint: str, sample: BenchSample) -> int | None:
    """Patch count of a valid cached sample file, or None when it must be (re)computed."""
    import h5py

    if not path.is_file():
        return None
    try:
        with h5py.File(path, "r") as f:
            a = f.attrs
            if a.get("fingerprint") != fingerprint:
                return None
            if list(a.get("patches_stamp", [])) != _patches_stamp(sample):
                return None
            if "cls" not in f or "barcodes" not in f:
                return None
            return int(f["cls"].shape[0])
    except OSError:
        return None


class _PatchChunks:
    """Map-style dataset whose items are whole batches: contiguous h5 slices read in a worker.

    Reading a slice is one h5 call instead of batch_size calls; each worker process opens the
    file itself (h5py handles must not cross a fork). Items are, by what is given:
    `batch_transform` -> that applied to the uint8 (B, H, W, 3) batch in one vectorised op;
    `transform` -> the per-image transform, stacked; neither -> the uint8 batch itself (a
    quarter of the bytes through worker pipes, pinned memory and the host-to-device copy; the
    device normalises it).
    """

    def __init__(
        self,
        path: Path,
        n: int,
        chunk: int,
        transform: Callable | None,
        batch_transform: Callable | None = None,
    ):
        self.path, self.n, self.chunk = path, n, chunk
        self.transform, self.batch_transform = transform, batch_transform
        self._f = None

    def __len__(self) -> int:
        return math.ceil(self.n / self.chunk)

    def __getitem__(self, i: int):
        import h5py
        import torch

        if self._f is None:
            self._f = h5py.File(self.path, "r")
        lo, hi = i * self.chunk, min((i + 1) * self.chunk, self.n)
        imgs = self._f["img"][lo:hi]
        if self.batch_transform is not None:
            return lo, self.batch_transform(torch.from_numpy(np.ascontiguousarray(imgs)))
        if self.transform is None:
            return lo, torch.from_numpy(np.ascontiguousarray(imgs))
        return lo, torch.stack([self.transform(np.ascontiguousarray(im)) for im in imgs])

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_f"] = None
        return state


class _BatchNormalise:
    """The encoder's eval transform for a uint8 (B, H, W, 3) batch, as one vectorised op.

    Same arithmetic as :class:`mint.models.encoder.EvalTransform` (x / 255, minus mean, over
    std, float32) for patches already at the model's input size. Picklable: on CPU it runs in
    the loader workers, on CUDA on the device after the uint8 copy.
    """

    def __init__(self, transform, device: str):
        self.mean = transform.mean.view(1, 3, 1, 1).to(device)
        self.std = transform.std.view(1, 3, 1, 1).to(device)
        self.device = device

    @classmethod
    def make(cls, transform, patch_shape: tuple, device: str) -> _BatchNormalise | None:
        """None when the per-image transform would resize (it then runs in the workers)."""
        from mint.models.encoder import EvalTransform

        if not isinstance(transform, EvalTransform) or transform.resize is not None:
            return None
        if tuple(patch_shape[1:]) != (transform.img_size, transform.img_size, 3):
            return None
        return cls(transform, device)

    def __call__(self, x):
        import torch

        if x.dtype != torch.uint8:
            raise MintError(f"embed: expected uint8 patches, got {x.dtype}")
        x = x.to(self.device, non_blocking=self.device.startswith("cuda"))
        # CHW while still uint8 (a quarter of the bytes), then in place: half the time of
        # broadcasting over the permuted view, and bit-identical to EvalTransform.
        x = x.permute(0, 3, 1, 2).contiguous().float()
        return x.div_(255.0).sub_(self.mean).div_(self.std)


#: Batches whose outputs stay on the device before one copy to the host (one sync per flush).
FLUSH_BATCHES = 16


def embed_sample(
    encoder,
    sample: BenchSample,
    task: str,
    out_path: Path,
    fingerprint: str,
    model_spec: str,
    cfg: EmbedConfig,
    device: str,
) -> int:
    """Embed one sample into `out_path` (atomically). Returns the number of patches."""
    import h5py
    import torch
    from tqdm import tqdm

    from mint.precision import autocast, autocast_dtype

    barcodes, coords, n = read_patch_index(sample, task)
    keys = ["cls", "patch_mean"] + (["st"] if encoder.has_st else [])
    dim = int(encoder.embed_dim)
    transform = encoder.transform()
    with h5py.File(sample.patches_path, "r") as f:
        patch_shape = tuple(f["img"].shape)
    on_cuda = device.startswith("cuda")
    # Patches at the model's size: normalised per batch, on the GPU (uint8 crosses the bus) or
    # in the CPU workers (in parallel with the forward); else the per-image transform (resize).
    fast = _BatchNormalise.make(transform, patch_shape, device if on_cuda else "cpu")
    on_device = fast if on_cuda else None
    ds = _PatchChunks(
        sample.patches_path,
        n,
        cfg.batch_size,
        None if fast is not None else transform,
        batch_transform=fast if fast is not None and not on_cuda else None,
    )
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=None,  # items are already batches
        shuffle=False,
        num_workers=cfg.num_workers,
        pin_memory=on_cuda,
        persistent_workers=False,
        prefetch_factor=4 if cfg.num_workers > 0 else None,
    )
    # HEST's `torch.cuda.amp.autocast` does nothing on CPU: no CPU autocast here (`mint.precision`)
    precision = resolve_precision(cfg.precision, model_spec, device)[0]
    amp = autocast_dtype(precision, device, cpu_autocast=False)
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as f:
        out = {k: f.create_dataset(k, shape=(n, dim), dtype="f4") for k in keys}
        f.create_dataset(
            "barcodes", data=np.array([b.encode() for b in barcodes], dtype="S").reshape(-1, 1)
        )
        f.create_dataset("coords", data=coords)
        bar = tqdm(
            total=n,
            desc=f"{task}/{sample.sample_id}",
            unit="patch",
            leave=False,
            disable=not progress_enabled(),
        )
        pending: list[tuple[int, int, dict]] = []

        def flush() -> None:
            # One device-to-host copy (and sync) for several batches, not one per batch.
            if not pending:
                return
            start, stop = pending[0][0], pending[-1][1]
            for k in keys:
                out[k][start:stop] = torch.cat([p[2][k] for p in pending]).float().cpu().numpy()
            pending.clear()

        with torch.inference_mode():
            for lo, x in loader:
                if on_device is not None:
                    x = on_device(x)
                else:
                    x = x.to(device, non_blocking=on_cuda).float()
                with autocast(amp, device):
                    feats = encoder(x)
                missing = [k for k in keys if k not in feats]
                if missing:
                    raise MintError(f"{model_spec}: encoder output lacks {missing}")
                hi = lo + x.shape[0]
                for k in keys:
                    v = feats[k]
                    if v.shape != (x.shape[0], dim):
                        raise MintError(
                            f"{model_spec}: output '{k}' has shape {tuple(v.shape)}, "
                            f"expected ({x.shape[0]}, {dim})"
                        )
                pending.append((lo, hi, {k: feats[k] for k in keys}))
                if len(pending) >= FLUSH_BATCHES:
                    flush()
                bar.update(x.shape[0])
            flush()
        bar.close()
        f.attrs.update(
            {
                "sample_id": sample.sample_id,
                "task": task,
                "model": model_spec,
                "fingerprint": fingerprint,
                "embed_dim": dim,
                "has_st": bool(encoder.has_st),
                "patches_stamp": _patches_stamp(sample),
            }
        )
    return n


def embed_task(
    data: BenchTaskData,
    out_dir: str | Path,
    model_spec: str,
    encoder_factory: Callable[[], object],
    cfg: EmbedConfig,
    device: str,
) -> dict:
    """Embed every sample of a task that is not already cached; write the manifest last."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    precision, precision_source = resolve_precision(cfg.precision, model_spec, device)
    fingerprint = model_fingerprint(model_spec, precision)
    samples: dict[str, dict] = {}
    todo = []
    for s in data.samples:
        path = out_dir / f"{s.sample_id}.h5"
        n = None if cfg.overwrite else _cached_ok(path, fingerprint, s)
        if n is None:
            todo.append(s)
        else:
            log.info("%s %s: cached (%d patches)", data.name, s.sample_id, n)
            samples[s.sample_id] = {"file": path.name, "n": n}

    encoder = None
    t0 = time.time()
    n_new = 0
    if todo:
        # A stale manifest must never vouch for a half-rewritten cache.
        (out_dir / MANIFEST).unlink(missing_ok=True)
        encoder = encoder_factory()
        encoder.eval()
        for s in todo:
            path = out_dir / f"{s.sample_id}.h5"
            n = embed_sample(encoder, s, data.name, path, fingerprint, model_spec, cfg, device)
            n_new += n
            samples[s.sample_id] = {"file": path.name, "n": n}
            log.info("%s %s: embedded %d patches", data.name, s.sample_id, n)
    dt = time.time() - t0
    if n_new:
        log.info("%d patches in %.1f s (%.1f patches/s)", n_new, dt, n_new / max(dt, 1e-9))

    embed_dim, has_st = _dims_from_cache(out_dir, samples, data.name)
    manifest = {
        "version": CACHE_VERSION,
        "model": model_spec,
        "task": data.name,
        "fingerprint": fingerprint,
        "embed_dim": embed_dim,
        "has_st": has_st,
        "datasets": ["cls", "patch_mean"] + (["st"] if has_st else []),
        "precision": precision,  # resolved: what the forward ran in
        "precision_requested": cfg.precision,
        "precision_source": precision_source,
        "device": device,
        "config": asdict(cfg),
        "samples": {sid: samples[sid] for sid in sorted(samples)},
    }
    write_json(out_dir / MANIFEST, manifest)
    return manifest


def _dims_from_cache(out_dir: Path, samples: dict[str, dict], task: str) -> tuple[int, bool]:
    import h5py

    dims, sts = set(), set()
    for meta in samples.values():
        with h5py.File(out_dir / meta["file"], "r") as f:
            dims.add(int(f.attrs["embed_dim"]))
            sts.add(bool(f.attrs["has_st"]))
    if len(dims) > 1 or len(sts) > 1:
        raise MintError(f"{task} {out_dir}: cached samples disagree on embedding dim or st")
    return dims.pop(), sts.pop()


def _build_encoder(spec: str, device: str):
    """Indirection so tests can substitute a small encoder without the model registry."""
    from mint.models.encoder import build_encoder

    return build_encoder(spec, device=device)


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise MintError(f"--batch-size {args.batch_size}: must be >= 1")
    if args.num_workers < 0:
        raise MintError(f"--num-workers {args.num_workers}: must be >= 0")
    cfg = EmbedConfig(
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=args.device,
        precision=args.precision,
        overwrite=args.overwrite,
    )
    data = load_task(args.bench_dir, args.task)
    device = resolve_device(cfg.device)
    log.info(
        "embedding %s (%d samples) with %s on %s", data.name, len(data.samples), args.model, device
    )
    manifest = embed_task(
        data, args.out_dir, args.model, lambda: _build_encoder(args.model, device), cfg, device
    )
    log.info(
        "wrote %s (dim %d, st: %s)",
        Path(args.out_dir) / MANIFEST,
        manifest["embed_dim"],
        manifest["has_st"],
    )
    return 0
