"""Patch embedding throughput: `mint embed`'s sample loop against HEST's bench loop, one run.

    .venv/bin/python benchmarks/embed.py [--backbone tiny-vit] [--n 1024] [--batch-size 128] \
        [--num-workers 2] [--repeats 3] [--device cpu] [--precision fp32]

Both embed the same patch file (HEST layout: ``img`` uint8 (N, 224, 224, 3), ``barcode``,
``coords``) with the same encoder (``mint.models.encoder.build_encoder``, random weights: speed
does not depend on them), batch size and worker count:

* ``hest``: what HEST-Bench does (``hest/bench/benchmark.py``): hestcore's ``H5HESTDataset``
  (one h5 slice per item, ``chunk_size`` = batch size, each patch through ``PIL.Image`` and the
  torchvision ``ToTensor`` + ``Normalize`` eval transform in the worker), ``DataLoader(batch_size=1,
  num_workers)``, then per batch ``.to(device).float()``, forward (under CUDA autocast to
  ``--precision``, as HEST's ``embed_tiles`` does on a GPU; none on CPU), ``.cpu().numpy()`` and
  an append to the output h5 (HEST's ``embed_tiles`` / ``save_hdf5``). A local copy of that
  dataset is used when hestcore is not installed.
* ``mint``: ``mint.bench.embed.embed_sample`` (what ``mint embed`` runs per sample) with the same
  ``--precision``.

Each runs ``--repeats`` times in alternating order; the fastest counts. Prints patches/s of both
and ``mint / hest`` (same process, so the ratio holds on a shared machine).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mint.bench.data import BenchSample  # noqa: E402
from mint.bench.embed import EmbedConfig, embed_sample  # noqa: E402
from mint.models.encoder import build_encoder  # noqa: E402


def write_patches(path: Path, n: int, size: int = 224) -> None:
    """H&E-like patches (mint.synth's renderer) in HEST's patch-file layout."""
    from mint.synth.tissue import render_patch

    rng = np.random.default_rng(0)
    base = [render_patch(i % 4, size, 0.5, rng) for i in range(16)]
    with h5py.File(path, "w") as f:
        img = f.create_dataset("img", (n, size, size, 3), np.uint8, chunks=(1, size, size, 3))
        for i in range(n):
            img[i] = np.roll(base[i % 16], i, axis=1)
        f["coords"] = np.stack([np.arange(n) * size, np.zeros(n, int)], 1)
        f["barcode"] = np.array([f"P{i:06d}".encode() for i in range(n)]).reshape(n, 1)


class _H5Chunks(torch.utils.data.Dataset):
    """HEST's H5HESTDataset, for when hestcore is not installed (same reads and transform)."""

    def __init__(self, h5_path, img_transform=None, chunk_size=1000):
        self.h5_path, self.img_transform, self.chunk_size = h5_path, img_transform, chunk_size
        with h5py.File(h5_path, "r") as f:
            self.n_chunks = int(np.ceil(len(f["barcode"]) / chunk_size))

    def __len__(self):
        return self.n_chunks

    def __getitem__(self, idx):
        from PIL import Image

        lo, hi = idx * self.chunk_size, (idx + 1) * self.chunk_size
        with h5py.File(self.h5_path, "r") as f:
            imgs, barcodes, coords = f["img"][lo:hi], f["barcode"][lo:hi], f["coords"][lo:hi]
        imgs = torch.stack([self.img_transform(Image.fromarray(im)) for im in imgs])
        return {"imgs": imgs, "barcodes": barcodes.flatten().tolist(), "coords": coords}


def _append_h5(path: Path, assets: dict, mode: str) -> None:
    """HEST's save_hdf5: create resizable datasets on the first batch, append afterwards."""
    with h5py.File(path, mode) as f:
        for k, v in assets.items():
            v = np.asarray(v)
            if k not in f:
                f.create_dataset(k, data=v, maxshape=(None, *v.shape[1:]), chunks=True)
            else:
                d = f[k]
                d.resize(d.shape[0] + len(v), axis=0)
                d[-len(v) :] = v


def hest_loop(
    enc, patches: Path, out: Path, batch: int, workers: int, device: str, precision: str
) -> int:
    from torchvision import transforms

    from mint.precision import autocast, autocast_dtype

    try:
        from hestcore.datasets import H5HESTDataset as Dataset
    except ImportError:
        Dataset = _H5Chunks
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(enc.mean, enc.std)])
    ds = Dataset(str(patches), chunk_size=batch, img_transform=tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=1, shuffle=False, num_workers=workers)
    amp = autocast_dtype(precision, device, cpu_autocast=False)
    n = 0
    with torch.inference_mode():
        for i, b in enumerate(loader):
            imgs = b["imgs"].squeeze(0).to(device).float()
            with autocast(amp, device):
                emb = enc(imgs)["cls"]
            coords = np.asarray(b["coords"]).squeeze(0)
            _append_h5(
                out, {"embeddings": emb.cpu().numpy(), "coords": coords}, "w" if i == 0 else "a"
            )
            n += len(imgs)
    return n


def mint_loop(
    enc, patches: Path, out: Path, batch: int, workers: int, device: str, precision: str
) -> int:
    cfg = EmbedConfig(batch_size=batch, num_workers=workers, device=device, precision=precision)
    sample = BenchSample("S", patches, patches.with_suffix(".h5ad"))
    return embed_sample(enc, sample, "BENCH", out, "bench", "bench", cfg, device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="tiny-vit", help="registry name or timm:<name>")
    ap.add_argument("--n", type=int, default=1024, help="patches")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--num-workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16", "fp16"],
        help="CUDA autocast dtype of the forward in both loops (HEST: the model's, e.g. fp16 for "
        "UNI); ignored on CPU, where HEST runs in fp32",
    )
    args = ap.parse_args()
    os.environ.setdefault("MINT_NO_PROGRESS", "1")
    enc = build_encoder(args.backbone, device=args.device, pretrained=False).eval()
    times: dict[str, list[float]] = {"hest": [], "mint": []}
    with tempfile.TemporaryDirectory() as tmp:
        patches = Path(tmp) / "patches.h5"
        write_patches(patches, args.n)
        loops = {"hest": hest_loop, "mint": mint_loop}
        for rep in range(args.repeats):
            for name in ("hest", "mint") if rep % 2 == 0 else ("mint", "hest"):
                out = Path(tmp) / f"{name}.h5"
                t0 = time.perf_counter()
                n = loops[name](
                    enc, patches, out, args.batch_size, args.num_workers, args.device,
                    args.precision,
                )  # fmt: skip
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - t0)
                assert n == args.n
                out.unlink()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    precision = args.precision if args.device.startswith("cuda") else "fp32 (cpu)"
    print(
        f"backbone {args.backbone} | device {args.device} | precision {precision} | {args.n} "
        f"patches 224 px | batch {args.batch_size} | workers {args.num_workers} | torch threads "
        f"{torch.get_num_threads()}"
        f" | best of {args.repeats} alternating runs | cpus {os.cpu_count()} | load {load:.1f}"
    )
    best = {k: min(v) for k, v in times.items()}
    if args.device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(f"peak GPU memory (both loops): {peak:.2f} GiB")
    for k in ("hest", "mint"):
        print(
            f"{k:5} {args.n / best[k]:8.1f} patches/s (median {args.n / statistics.median(times[k]):.1f})"
        )
    print(f"mint / hest: {best['hest'] / best['mint']:.2f}")


if __name__ == "__main__":
    main()
