"""A synthetic HEST-Bench look-alike: <TASK>/adata, patches, splits and var_50genes.json, at the
names of `mint.hest.layout`, from the same samples and genes as the synthetic HEST-1k.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from mint.data.genes import drop_controls
from mint.errors import MintError
from mint.hest import layout
from mint.hest.bench import SYNTHETIC_BENCH_TASKS, BenchTask
from mint.io import atomic_path, write_json
from mint.synth.hest import write_h5ad
from mint.synth.specs import (
    BENCH_PATCH_PX,
    BENCH_PIXEL_SIZE_UM,
    DEFAULT_CONFIG,
    GeneModel,
    SampleSpec,
    SynthConfig,
    gene_model,
    sample_specs,
)
from mint.synth.spots import spot_table
from mint.synth.tissue import SlideModel
from mint.synth.xenium import pseudo_spots, xenium_data

log = logging.getLogger(__name__)


def _square_tissue_fraction(
    model: SlideModel, x: np.ndarray, y: np.ndarray, side_um: float, n: int = 10
) -> np.ndarray:
    g = (np.arange(n) + 0.5) / n * side_um - side_um / 2
    gx, gy = np.meshgrid(g, g)
    px = (x[:, None] + gx.ravel()[None, :]).ravel()
    py = (y[:, None] + gy.ravel()[None, :]).ravel()
    return model.tissue_points(px, py).reshape(len(x), -1).mean(1)


def _bench_sample(spec: SampleSpec, gm: GeneModel, seed: int):
    """(obs, spatial px, counts, genes, patches img, coords, barcodes) of one bench sample."""
    model = spec.model()
    if spec.technology == "Xenium":
        xd = xenium_data(spec, model, gm, seed)
        obs, spatial, counts, genes = pseudo_spots(xd.transcripts, spec.pixel_size_um)
    else:
        obs, spatial, counts, genes = spot_table(spec, model, gm, seed)
    ps = spec.pixel_size_um
    cx_um, cy_um = spatial[:, 0] * ps, spatial[:, 1] * ps
    side_um = BENCH_PATCH_PX * BENCH_PIXEL_SIZE_UM
    keep = _square_tissue_fraction(model, cx_um, cy_um, side_um) >= 0.15
    idx = np.nonzero(keep)[0]
    imgs = np.empty((len(idx), BENCH_PATCH_PX, BENCH_PATCH_PX, 3), np.uint8)
    half = BENCH_PATCH_PX // 2
    for j, i in enumerate(idx):
        x0 = int(round(cx_um[i] / BENCH_PIXEL_SIZE_UM)) - half
        y0 = int(round(cy_um[i] / BENCH_PIXEL_SIZE_UM)) - half
        imgs[j] = model.render(x0, y0, BENCH_PATCH_PX, BENCH_PATCH_PX, BENCH_PIXEL_SIZE_UM)
    size_src = BENCH_PATCH_PX * BENCH_PIXEL_SIZE_UM / ps
    coords = np.round(spatial[idx] - size_src / 2).astype(np.int64)  # top-left (x, y) level 0
    barcodes = [obs.index[i] for i in idx]
    return obs, spatial, counts, genes, imgs, coords, barcodes


def _select_bench_genes(adatas: list, n: int = 50) -> list[str]:
    """HEST-Bench gene choice: >= 10% of spots on every slide, no controls, HVG on log1p, sorted."""
    import anndata as ad
    import scanpy as sc

    shared = sorted(set.intersection(*(set(a.var_names) for a in adatas)))
    shared = drop_controls(shared)
    detect = np.stack(
        [
            np.asarray(
                (
                    (
                        a[:, shared].X.toarray()
                        if hasattr(a.X, "toarray")
                        else np.asarray(a[:, shared].X)
                    )
                    > 0
                ).mean(0)
            ).ravel()
            for a in adatas
        ]
    ).min(0)
    genes = [g for g, d in zip(shared, detect, strict=True) if d >= 0.1]
    if len(genes) < n:
        # tiny synthetic slides: top up with the most consistently detected genes
        order = [shared[i] for i in np.argsort(-detect, kind="stable") if shared[i] not in genes]
        log.warning(
            "synthetic bench: %d genes pass the 10%% filter; topping up to %d", len(genes), n
        )
        genes = sorted(genes + order[: n - len(genes)])
    if len(genes) < n:
        raise MintError(
            f"synthetic bench: only {len(genes)} genes measured on every slide (need {n})"
        )
    cat = ad.concat([a[:, genes] for a in adatas], join="inner", index_unique="-")
    cat.X = np.log1p(cat.X.toarray() if hasattr(cat.X, "toarray") else cat.X)
    sc.pp.highly_variable_genes(cat, n_top_genes=n)
    return sorted(cat.var_names[cat.var["highly_variable"]].tolist())


def _write_patches(path: Path, imgs: np.ndarray, coords: np.ndarray, barcodes: list[str]) -> None:
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("img", data=imgs, chunks=(1, *imgs.shape[1:]) if len(imgs) else None)
        f.create_dataset("coords", data=coords.reshape(-1, 2))
        f.create_dataset(
            "barcode", data=np.array([[b.encode()] for b in barcodes], dtype="S").reshape(-1, 1)
        )


def _bench_folds(
    task: BenchTask, specs: dict[str, SampleSpec]
) -> list[tuple[list[str], list[str]]]:
    """Folds split by patient (leave-patient-group-out), as HEST-Bench does."""
    groups: dict[str, list[str]] = {}
    for sid in task.sample_ids:
        groups.setdefault(specs[sid].patient, []).append(sid)
    keys = list(groups)
    if len(keys) >= task.n_folds:
        chunks = [
            sum((groups[k] for k in keys[i :: task.n_folds]), []) for i in range(task.n_folds)
        ]
    else:
        ids = list(task.sample_ids)
        chunks = [ids[i :: task.n_folds] for i in range(task.n_folds)]
    folds = []
    for i in range(task.n_folds):
        test = chunks[i]
        train = [s for s in task.sample_ids if s not in test]
        folds.append((train, test))
    return folds


def generate_bench(
    out_dir: str | os.PathLike, task: str, cfg: SynthConfig = DEFAULT_CONFIG
) -> Path:
    """Write one synthetic HEST-Bench task to `out_dir/<task>/` (atomically); returns that folder."""
    import anndata as ad

    from mint.io import atomic_dir

    if task not in SYNTHETIC_BENCH_TASKS:
        raise MintError(
            f"unknown synthetic bench task {task!r} (known: {', '.join(SYNTHETIC_BENCH_TASKS)})"
        )
    bt = SYNTHETIC_BENCH_TASKS[task]
    specs = {s.id: s for s in sample_specs(cfg)}
    gm = gene_model(cfg.seed, cfg.n_genes)
    dest = Path(out_dir) / task
    with atomic_dir(dest) as tmp:
        adatas = []
        for sid in bt.sample_ids:
            obs, spatial, counts, genes, imgs, coords, barcodes = _bench_sample(
                specs[sid], gm, cfg.seed
            )
            write_h5ad(tmp / layout.bench_adata(sid), obs, spatial, counts, genes)
            a = ad.AnnData(X=counts, obs=obs[[]].copy(), var=pd.DataFrame(index=genes))
            adatas.append(a)
            _write_patches(tmp / layout.bench_patches(sid), imgs, coords, barcodes)
        write_json(tmp / layout.BENCH_GENES, {"genes": _select_bench_genes(adatas)})
        (tmp / layout.BENCH_SPLITS_DIR).mkdir()
        for k, (train, test) in enumerate(_bench_folds(bt, specs)):
            for name, ids in zip(layout.BENCH_SPLIT_KINDS, (train, test), strict=True):
                pd.DataFrame(
                    {
                        "sample_id": ids,
                        "patches_path": [layout.bench_patches(s) for s in ids],
                        "expr_path": [layout.bench_adata(s) for s in ids],
                    }
                ).to_csv(tmp / layout.bench_split(name, k), index=False)
    log.info("synthetic bench task %s -> %s", task, dest)
    return dest
