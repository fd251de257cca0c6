"""Samples per second per core reading and decoding MINT WebDataset shards.

    .venv/bin/python benchmarks/shard_read.py [--n 2000] [--genes 2000] [--out-dir DIR]

Writes `--n` H&E-like 224 px tiles (mint.synth.tissue.render_patch) with `--genes` targets into
tile files, builds shards with `mint.data.shards.write_shards` (JPEG q95, 4:4:4), then reads them
back in ONE process (= one core) with webdataset the way a training loader does:
``WebDataset(urls).decode("rgb8").to_tuple("jpg", "expr.npy", "mask.npy", "json")``.
Also reports the raw tar read rate (no decoding) and the shard writing rate (one process).
Reads are timed from the page cache, fastest of `--repeats` passes.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import time
from pathlib import Path

import numpy as np


def make_tiles(d: Path, n: int, n_genes: int, n_samples: int = 4) -> list[Path]:
    from mint.data.tiles import TileWriter
    from mint.synth.tissue import CELL_TYPES, render_patch

    rng = np.random.default_rng(0)
    pool = np.stack([render_patch(i % len(CELL_TYPES), 224, 0.5, rng) for i in range(48)])
    genes = [f"G{i:05d}" for i in range(n_genes)]
    paths = []
    per = n // n_samples
    for s in range(n_samples):
        sid = f"BENCH{s}"
        k = per if s < n_samples - 1 else n - per * (n_samples - 1)
        attrs = dict(
            sample_id=sid,
            pixel_size_um=0.5,
            target_pixel_size_um=0.5,
            patch_size_px=224,
            technology="Visium",
            level="spot",
            modality="visium",
            organ="Bowel",
            oncotree_code="COAD",
            n_spots_total=k,
            n_dropped_outside=0,
            n_dropped_tissue=0,
            xenium_target="",
        )
        p = d / f"{sid}.h5"
        with TileWriter(
            p,
            k,
            224,
            genes,
            [f"B{i:06d}-1" for i in range(k)],
            rng.integers(0, 9999, (k, 2)),
            attrs,
        ) as w:
            for a in range(0, k, 256):
                m = min(256, k - a)
                w.write_img(a, pool[rng.integers(0, len(pool), m)])
                counts = rng.poisson(rng.gamma(0.3, 3, n_genes), (m, n_genes))
                w.write_expr(a, counts.astype(np.float32))
        paths.append(p)
    (d / "genes").mkdir(exist_ok=True)
    (d / "genes" / "visium.txt").write_text("\n".join(genes) + "\n")
    (d / "genes" / "xenium.txt").write_text("")
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="tiles")
    ap.add_argument("--genes", type=int, default=2000, help="visium vocabulary size")
    ap.add_argument("--samples-per-shard", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3, help="read passes (fastest counts)")
    ap.add_argument("--out-dir", type=Path, default=Path("/tmp/mint-bench-shards"))
    args = ap.parse_args()
    os.environ.setdefault("MINT_NO_PROGRESS", "1")
    import webdataset as wds

    from mint.data.shards import write_shards

    d = args.out_dir
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    tiles = make_tiles(d, args.n, args.genes)
    t0 = time.perf_counter()
    write_shards(
        tiles, d / "genes", d / "shards", args.samples_per_shard, 0.0, 0, 95, progress=False
    )
    t_write = time.perf_counter() - t0
    urls = sorted(glob.glob(str(d / "shards" / "train-*.tar")))
    size_mb = sum(os.path.getsize(u) for u in urls) / 2**20

    for u in urls:  # warm the page cache: measure decoding, not the disk
        Path(u).read_bytes()
    t_raw = t_dec = float("inf")
    for _ in range(args.repeats):  # fastest of a few passes: the box may be shared
        t0 = time.perf_counter()
        n_raw = sum(1 for _ in wds.WebDataset(urls, shardshuffle=False))
        t_raw = min(t_raw, time.perf_counter() - t0)
        t0 = time.perf_counter()
        n = 0
        for img, expr, mask, meta in (
            wds.WebDataset(urls, shardshuffle=False)
            .decode("rgb8")
            .to_tuple("jpg", "expr.npy", "mask.npy", "json")
        ):
            assert img.shape == (224, 224, 3) and expr.dtype == np.float16 and mask.dtype == bool
            assert meta["level"] == "spot"
            n += 1
        t_dec = min(t_dec, time.perf_counter() - t0)
    assert n == n_raw == args.n
    print(
        f"{args.n} tiles, {args.genes} genes, {len(urls)} shards, {size_mb:.1f} MiB "
        f"({size_mb * 1024 / args.n:.1f} KiB/sample), one process"
    )
    print(f"write shards      : {args.n / t_write:8.1f} samples/s")
    print(f"read tar, no decode: {n_raw / t_raw:8.1f} samples/s")
    print(f"read + decode      : {n / t_dec:8.1f} samples/s per core (jpg->uint8, npy, json)")


if __name__ == "__main__":
    main()
