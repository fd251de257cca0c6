"""Small shard sets that follow the shard contract exactly, for tests and device checks.

The tiles are learnable: each is a mix of a few "tissue types" (distinct colour and texture),
and each gene's log1p expression is a fixed linear function of the mix plus noise, so a model
that reads the image can predict expression and the held-out regression loss can fall.
Real shards come from `mint shards`; this module never stands in for them in the workflow.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

TYPE_COLOURS = np.array(
    [[200, 80, 160], [240, 170, 200], [120, 60, 150], [250, 230, 240]], dtype=np.float32
)


def _tile(rng: np.random.Generator, mix: np.ndarray, size: int) -> np.ndarray:
    """A tile whose pixels are drawn from the types in proportion `mix` (blocky texture)."""
    cell = 8
    g = size // cell
    types = rng.choice(len(mix), size=(g, g), p=mix)
    img = TYPE_COLOURS[types]
    img = np.kron(img, np.ones((cell, cell, 1), dtype=np.float32))
    # type 0 and 2 get dark "nuclei" dots: texture as well as colour
    dots = (rng.random((size, size)) < 0.08) & np.isin(
        np.kron(types, np.ones((cell, cell))), [0, 2]
    )
    img[dots] *= 0.4
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_toy_shards(
    out_dir: str | Path,
    n_train: int = 64,
    n_val: int = 16,
    samples_per_shard: int = 16,
    n_genes: dict[str, int] | None = None,
    image_size: int = 224,
    seed: int = 0,
) -> Path:
    """Write train-*.tar, val-*.tar and index.json; returns the index path."""
    import webdataset as wds
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_genes = n_genes or {"visium": 24, "xenium": 12}
    rng = np.random.default_rng(seed)
    mods = list(n_genes)
    weights = {m: rng.gamma(1.0, 1.5, size=(len(TYPE_COLOURS), n)) for m, n in n_genes.items()}
    samples = {f"TOY{m[0].upper()}{i}": m for i, m in enumerate(mods * 2)}
    sample_ids = list(samples)

    def make(i: int) -> dict:
        sid = sample_ids[i % len(sample_ids)]
        mod = samples[sid]
        mix = rng.dirichlet(np.ones(len(TYPE_COLOURS)) * 0.7)
        img = _tile(rng, mix, image_size)
        counts = rng.poisson(np.exp(mix @ weights[mod]) * 2.0)
        expr = np.log1p(counts).astype(np.float16)
        mask = np.ones(n_genes[mod], dtype=bool)
        if i % len(sample_ids) >= len(mods):  # the second sample of each modality lacks genes
            mask[-max(1, n_genes[mod] // 4) :] = False
            expr[~mask] = 0
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        npy_e, npy_m = io.BytesIO(), io.BytesIO()
        np.save(npy_e, expr)
        np.save(npy_m, mask)
        meta = {
            "sample": sid,
            "barcode": f"{i:06d}",
            "x": int(i * 10),
            "y": 0,
            "technology": "Xenium" if mod == "xenium" else "Visium",
            "level": "patch" if mod == "xenium" else "spot",
            "modality": mod,
            "organ": "Toy",
            "oncotree_code": "TOY",
            "n_cells": 0,
        }
        return {
            "__key__": f"{sid}_{i:06d}",
            "jpg": buf.getvalue(),
            "expr.npy": npy_e.getvalue(),
            "mask.npy": npy_m.getvalue(),
            "json": json.dumps(meta).encode(),
            "_expr": expr.astype(np.float32),
            "_mask": mask,
            "_mod": mod,
            "_sid": sid,
        }

    train = [make(i) for i in range(n_train)]
    val = [make(n_train + i) for i in range(n_val)]

    def write(prefix: str, items: list[dict]) -> list[dict]:
        shards = []
        for s in range(0, len(items), samples_per_shard):
            chunk = items[s : s + samples_per_shard]
            name = f"{prefix}-{s // samples_per_shard:06d}.tar"
            with wds.TarWriter(str(out / name)) as w:
                for it in chunk:
                    w.write(
                        {k: v for k, v in it.items() if k == "__key__" or not k.startswith("_")}
                    )
            shards.append({"path": name, "n": len(chunk)})
        return shards

    stats = {}
    for m in mods:
        rows = [(it["_expr"], it["_mask"]) for it in train if it["_mod"] == m]
        e = np.stack([r[0] for r in rows])
        k = np.stack([r[1] for r in rows])
        cnt = k.sum(0).clip(min=1)
        mean = (e * k).sum(0) / cnt
        std = np.sqrt((((e - mean) ** 2) * k).sum(0) / cnt)
        stats[m] = {"mean": mean.tolist(), "std": std.tolist()}
    index = {
        "version": 1,
        "vocab": {m: [f"{m.upper()}G{j}" for j in range(n)] for m, n in n_genes.items()},
        "stats": stats,
        "counts": {m: sum(1 for it in train if it["_mod"] == m) for m in mods},
        "n_train": len(train),
        "n_val": len(val),
        "samples": {
            sid: {
                "n": sum(1 for it in train if it["_sid"] == sid),
                "modality": mod,
                "technology": "Xenium" if mod == "xenium" else "Visium",
                "level": "patch" if mod == "xenium" else "spot",
                "organ": "Toy",
            }
            for sid, mod in samples.items()
        },
        "shards": write("train", train),
        "val_shards": write("val", val),
        "image_size": image_size,
        "pixel_size_um": 0.5,
    }
    path = out / "index.json"
    path.write_text(json.dumps(index, indent=1))
    return path
