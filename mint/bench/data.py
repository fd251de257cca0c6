"""Reader for the HEST-Bench task layout (`MahmoodLab/hest-bench`, and our synthetic look-alike).

A task folder holds::

    <TASK>/adata/{id}.h5ad            raw counts, barcodes in obs_names, gene symbols in var_names
    <TASK>/patches/{id}.h5            img (N,224,224,3) uint8, coords (N,2), barcode (N,1) bytes
    <TASK>/splits/train_k.csv         sample_id,patches_path,expr_path (paths relative to <TASK>)
    <TASK>/splits/test_k.csv
    <TASK>/var_50genes.json           {"genes": [...]}

HEST counts folds as "files in splits/ divided by two" and then opens train_k/test_k, so a stray
file there silently changes the fold count; we refuse anything but the expected pairs instead.
Targets are `log1p` of the raw counts of the listed genes, rows in the order of the patch
barcodes (HEST aligns expression to the patches, never the other way round), with no
library-size normalisation: that is what the published leaderboard used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mint.errors import MintError
from mint.hest import layout

SPLIT_COLUMNS = layout.BENCH_SPLIT_COLUMNS
GENES_FILE = layout.BENCH_GENES


@dataclass(frozen=True)
class BenchSample:
    """One slide of a task: its patches file and its expression file (absolute paths)."""

    sample_id: str
    patches_path: Path
    expr_path: Path


@dataclass(frozen=True)
class Fold:
    index: int
    train: list[BenchSample]
    test: list[BenchSample]


@dataclass
class BenchTaskData:
    """Everything the embed and probe stages need to know about one task, read once."""

    name: str
    root: Path
    genes: list[str]
    folds: list[Fold]
    samples: list[BenchSample] = field(default_factory=list)  # union over folds, first-seen order

    @property
    def n_folds(self) -> int:
        return len(self.folds)


def task_dir(bench_dir: str | Path, task: str) -> Path:
    root = Path(bench_dir) / task
    if not root.is_dir():
        raise MintError(f"{task} {root}: task folder not found")
    return root


def read_genes(root: Path, task: str) -> list[str]:
    path = root / GENES_FILE
    if not path.is_file():
        raise MintError(f"{task} {path}: gene list not found")
    try:
        genes = json.loads(path.read_text())["genes"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise MintError(f'{task} {path}: expected {{"genes": [...]}} ({exc})') from exc
    if not isinstance(genes, list) or not genes or not all(isinstance(g, str) for g in genes):
        raise MintError(f"{task} {path}: 'genes' must be a non-empty list of names")
    if len(set(genes)) != len(genes):
        raise MintError(f"{task} {path}: duplicated gene names")
    return genes


def _read_split(root: Path, task: str, path: Path) -> list[BenchSample]:
    try:
        df = pd.read_csv(path, dtype=str)
    except pd.errors.EmptyDataError as exc:
        raise MintError(f"{task} {path}: empty split file") from exc
    missing = [c for c in SPLIT_COLUMNS if c not in df.columns]
    if missing:
        raise MintError(f"{task} {path}: missing column(s) {missing}; found {list(df.columns)}")
    if len(df) == 0:
        raise MintError(f"{task} {path}: empty split (no samples)")
    samples = []
    for row in df.itertuples(index=False):
        sid = str(row.sample_id).strip()
        # os.path.join semantics, as HEST: absolute paths stay absolute.
        patches = root / str(row.patches_path).strip()
        expr = root / str(row.expr_path).strip()
        for p in (patches, expr):
            if not p.is_file():
                raise MintError(f"{task} {sid} {p}: file listed in {path.name} not found")
        samples.append(BenchSample(sid, patches, expr))
    ids = [s.sample_id for s in samples]
    if len(set(ids)) != len(ids):
        raise MintError(f"{task} {path}: a sample is listed twice")
    return samples


def load_task(bench_dir: str | Path, task: str) -> BenchTaskData:
    """Read a task's gene list and folds; checks that every listed file exists."""
    root = task_dir(bench_dir, task)
    genes = read_genes(root, task)
    n = layout.bench_fold_count(root, task)
    folds: list[Fold] = []
    seen: dict[str, BenchSample] = {}
    for k in range(n):
        train = _read_split(root, task, root / layout.bench_split("train", k))
        test = _read_split(root, task, root / layout.bench_split("test", k))
        overlap = {s.sample_id for s in train} & {s.sample_id for s in test}
        if overlap:
            raise MintError(
                f"{task} {sorted(overlap)[0]} {root / layout.bench_split('test', k)}: "
                "sample is in both train and test of the fold"
            )
        for s in train + test:
            prev = seen.setdefault(s.sample_id, s)
            if prev != s:
                raise MintError(
                    f"{task} {s.sample_id} {root / layout.BENCH_SPLITS_DIR}: listed with different file paths"
                )
        folds.append(Fold(k, train, test))
    return BenchTaskData(task, root, genes, folds, list(seen.values()))


def decode_barcodes(raw: np.ndarray) -> list[str]:
    """HEST stores barcodes as bytes of shape (N, 1); accept (N,) and str too."""
    flat = np.asarray(raw).reshape(len(raw), -1)[:, 0] if np.ndim(raw) > 1 else np.asarray(raw)
    return [b.decode("utf-8") if isinstance(b, bytes) else str(b) for b in flat]


def read_patch_index(sample: BenchSample, task: str) -> tuple[list[str], np.ndarray, int]:
    """Barcodes, coords and patch count of a patches file, without reading the images."""
    import h5py

    path = sample.patches_path
    try:
        with h5py.File(path, "r") as f:
            bkey = "barcodes" if "barcodes" in f and "barcode" not in f else "barcode"
            for key in ("img", "coords", bkey):
                if key not in f:
                    raise MintError(f"{task} {sample.sample_id} {path}: dataset '{key}' missing")
            n = int(f["img"].shape[0])
            barcodes = decode_barcodes(f[bkey][:])
            coords = np.asarray(f["coords"][:])
    except OSError as exc:
        raise MintError(f"{task} {sample.sample_id} {path}: unreadable h5 ({exc})") from exc
    if n == 0:
        raise MintError(f"{task} {sample.sample_id} {path}: no patches")
    if len(barcodes) != n or len(coords) != n:
        raise MintError(
            f"{task} {sample.sample_id} {path}: img, coords and barcode lengths differ "
            f"({n}, {len(coords)}, {len(barcodes)})"
        )
    if len(set(barcodes)) != n:
        raise MintError(f"{task} {sample.sample_id} {path}: duplicated barcodes")
    return barcodes, coords, n


def read_targets(
    expr_path: str | Path, genes: list[str], barcodes: list[str], sample_id: str, task: str
) -> np.ndarray:
    """log1p(raw counts) of `genes` for `barcodes`, float64 (N, G), rows in barcode order."""
    import anndata as ad
    import scipy.sparse as sp

    path = Path(expr_path)
    try:
        adata = ad.read_h5ad(path)
    except (OSError, KeyError, ValueError) as exc:
        raise MintError(f"{task} {sample_id} {path}: unreadable h5ad ({exc})") from exc

    var = pd.Index(adata.var_names.astype(str))
    gene_idx = []
    for g in genes:
        hits = np.flatnonzero(var == g)
        if len(hits) == 0:
            raise MintError(
                f"{task} {sample_id} {path}: gene '{g}' (var_50genes.json) not in var_names"
            )
        if len(hits) > 1:
            raise MintError(f"{task} {sample_id} {path}: gene '{g}' appears {len(hits)} times")
        gene_idx.append(int(hits[0]))

    obs = pd.Index(adata.obs_names.astype(str))
    if not obs.is_unique:
        dup = obs[obs.duplicated()][0]
        raise MintError(f"{task} {sample_id} {path}: duplicated barcode '{dup}' in obs_names")
    row_idx = obs.get_indexer(barcodes)
    if (row_idx < 0).any():
        bad = [b for b, i in zip(barcodes, row_idx, strict=True) if i < 0]
        raise MintError(
            f"{task} {sample_id} {path}: {len(bad)} patch barcode(s) not in the h5ad, "
            f"e.g. '{bad[0]}'"
        )

    x = adata.X
    sub = x[row_idx][:, gene_idx]
    sub = sub.toarray() if sp.issparse(sub) else np.asarray(sub)
    counts = sub.astype(np.float64)
    if np.isnan(counts).any() or (counts < 0).any():
        raise MintError(f"{task} {sample_id} {path}: negative or NaN counts (expected raw counts)")
    return np.log1p(counts)
