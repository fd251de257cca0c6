"""`mint vocab`: the shared gene vocabularies of the two regression heads.

``visium.txt`` (spot-level head): the top-N highly variable genes over the training spot-level
tiles, united with every HEST-Bench task's 50 genes that the training data measures.
``xenium.txt`` (patch-level head): the union of the Xenium panels, control codewords removed.
Both files list one gene per line, sorted alphabetically (stable across runs).

Highly variable genes, and how samples with different gene sets are pooled
--------------------------------------------------------------------------
HEST samples do not share one gene set (Visium probe sets, legacy ST gene annotations, Visium HD
panels differ). We pool all training spots on the *union* of genes and treat a gene that a sample
does not measure as absent for that sample's spots: it neither adds zeros nor counts as an
observation. A gene is a candidate when at least ``--min-sample-fraction`` (default half) of the
spot-level samples measure it, so a gene seen in one odd sample cannot win on a handful of spots,
and it is not a control codeword.

The ranking is scanpy's ``highly_variable_genes(flavor="seurat")`` on ``log1p`` of
library-size-normalised counts (``normalize_total(target_sum=1e4)``, so ST's and Visium's depths
are comparable), computed from streamed per-gene sums instead of one pooled matrix: 577 slides x
thousands of spots x 30k genes does not fit in memory. The seurat flavor undoes the log
(``expm1``) before taking mean and variance, so the sums are over normalised counts; then, as in
scanpy: dispersion = var / mean (var with ddof 1), log dispersion, ``log1p`` mean, 20 equal-width
bins of mean, dispersion z-scored within its bin (a bin with one gene gets 1), top N by the
normalised dispersion. On data where every sample measures every gene this equals scanpy's
result (checked in tests/test_vocab_shards.py).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from mint.data.genes import drop_controls, is_control
from mint.data.tiles import TileInfo, read_info
from mint.errors import MintError
from mint.hest.layout import BENCH_GENES
from mint.io import write_text

log = logging.getLogger(__name__)

ROW_CHUNK = 2048
TARGET_SUM = 1e4
N_BINS = 20


def read_bench_genes(bench_dir: Path, tasks: list[str]) -> dict[str, list[str]]:
    """{task: genes} from ``<bench_dir>/<task>/var_50genes.json``."""
    if not bench_dir.is_dir():
        raise MintError(f"bench {bench_dir}: HEST-Bench folder not found")
    out = {}
    for task in tasks:
        path = bench_dir / task / BENCH_GENES
        try:
            obj = json.loads(path.read_text())
        except FileNotFoundError:
            raise MintError(f"{task} {path}: bench gene list not found") from None
        except ValueError as exc:
            raise MintError(f"{task} {path}: not valid JSON: {exc}") from None
        genes = obj.get("genes") if isinstance(obj, dict) else obj
        if not isinstance(genes, list) or not all(isinstance(g, str) for g in genes):
            raise MintError(f'{task} {path}: expected {{"genes": [names...]}}')
        out[task] = genes
    return out


def gene_moments(tiles: list[TileInfo], genes: list[str], progress: bool = True):
    """Per-gene (n, sum, sum of squares) of library-normalised counts over all spots.

    Only spots of samples that measure a gene count for it; spots with no counts are skipped.
    """
    import h5py

    col = {g: i for i, g in enumerate(genes)}
    n = np.zeros(len(genes), np.float64)
    s1 = np.zeros(len(genes), np.float64)
    s2 = np.zeros(len(genes), np.float64)
    for t in tqdm(tiles, desc="gene statistics", unit="sample", disable=not progress):
        cols = np.array([col[g] for g in t.genes], np.int64)
        with h5py.File(t.path, "r") as f:
            expr = f["expr"]
            for start in range(0, t.n, ROW_CHUNK):
                x = np.asarray(expr[start : start + ROW_CHUNK], np.float64)
                lib = x.sum(axis=1)
                x = x[lib > 0]
                if not len(x):
                    continue
                x *= (TARGET_SUM / lib[lib > 0])[:, None]
                n[cols] += len(x)
                s1[cols] += x.sum(axis=0)
                s2[cols] += (x * x).sum(axis=0)
    return n, s1, s2


def seurat_hvg(mean: np.ndarray, var: np.ndarray, n_top: int) -> np.ndarray:
    """Indices of the top `n_top` genes by scanpy's seurat-flavor normalised dispersion.

    `mean` and `var` (ddof 1) are of normalised counts (not logged). Genes with a NaN score
    (zero mean or zero variance) are never picked.
    """
    mean = mean.astype(np.float64).copy()
    mean[mean == 0] = 1e-12
    disp = var / mean
    disp[disp == 0] = np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        disp = np.log(disp)
    lmean = np.log1p(mean)
    df = pd.DataFrame({"mean": lmean, "disp": disp})
    df["bin"] = pd.cut(df["mean"], bins=N_BINS)
    grouped = df.groupby("bin", observed=True)["disp"]
    bin_mean = grouped.transform("mean")
    bin_std = grouped.transform("std")  # ddof 1, NaN for a bin with one gene
    one = bin_std.isna() & df["disp"].notna()
    bin_std = bin_std.where(~one, bin_mean)
    bin_mean = bin_mean.where(~one, 0.0)
    norm = ((df["disp"] - bin_mean) / bin_std).to_numpy()
    ok = np.flatnonzero(np.isfinite(norm))
    order = ok[np.argsort(-norm[ok], kind="stable")]
    return order[:n_top]


def build_vocab(
    tiles: list[TileInfo],
    bench_genes: dict[str, list[str]],
    n_top_genes: int,
    min_sample_fraction: float = 0.5,
    progress: bool = True,
) -> tuple[list[str], list[str], dict]:
    """(visium genes, xenium genes, summary) from the training tiles."""
    spot = [t for t in tiles if t.modality == "visium" or t.level == "spot"]
    patch = [t for t in tiles if t not in spot]
    visium: list[str] = []
    summary: dict = {"n_spot_samples": len(spot), "n_patch_samples": len(patch)}
    if spot:
        union = sorted({g for t in spot for g in t.genes})
        n_samples = pd.Series([g for t in spot for g in set(t.genes)]).value_counts()
        n, s1, s2 = gene_moments(spot, union, progress)
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = np.where(n > 0, s1 / np.maximum(n, 1), 0.0)
            var = np.where(n > 1, (s2 - n * mean * mean) / np.maximum(n - 1, 1), 0.0)
        var = np.maximum(var, 0.0)
        frac = n_samples.reindex(union).fillna(0).to_numpy() / len(spot)
        candidate = np.array(
            [
                f >= min_sample_fraction - 1e-9 and not is_control(g)
                for g, f in zip(union, frac, strict=True)
            ]
        )
        cand = np.flatnonzero(candidate & (n > 1))
        top = cand[seurat_hvg(mean[cand], var[cand], n_top_genes)] if cand.size else cand
        hvg = {union[i] for i in top}
        present = set(union)
        bench = {g for genes in bench_genes.values() for g in genes}
        bench_present = bench & present
        missing = sorted(bench - present)
        if missing:
            log.warning(
                "%d bench genes are not measured by any spot-level training sample: %s",
                len(missing),
                ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else ""),
            )
        visium = sorted(hvg | bench_present)
        summary.update(
            n_union=len(union),
            n_candidates=int(cand.size),
            n_hvg=len(hvg),
            n_bench=len(bench),
            n_bench_present=len(bench_present),
            n_bench_added=len(bench_present - hvg),
        )
    else:
        log.warning("no spot-level tiles: visium vocabulary is empty")
    xenium = sorted(set(drop_controls(g for t in patch for g in t.genes)))
    if not patch:
        log.warning("no patch-level tiles: xenium vocabulary is empty")
    summary.update(n_visium=len(visium), n_xenium=len(xenium))
    return visium, xenium, summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tiles", nargs="+", required=True, type=Path, help="training tile files")
    p.add_argument("--bench-dir", required=True, type=Path, help="HEST-Bench folder")
    p.add_argument("--bench-tasks", nargs="*", default=[], help="bench task names")
    p.add_argument("--n-top-genes", type=int, default=2000)
    p.add_argument(
        "--min-sample-fraction",
        type=float,
        default=0.5,
        help="HVG candidates must be measured by this fraction of spot-level samples",
    )
    p.add_argument("--out-dir", required=True, type=Path, help="writes visium.txt and xenium.txt")


def run(args: argparse.Namespace) -> int:
    from mint.logging_utils import progress_enabled

    if args.n_top_genes < 0:
        raise MintError("--n-top-genes must be >= 0")
    bench = read_bench_genes(args.bench_dir, list(args.bench_tasks))
    tiles = [read_info(p) for p in args.tiles]
    visium, xenium, summary = build_vocab(
        tiles, bench, args.n_top_genes, args.min_sample_fraction, progress_enabled()
    )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_text(args.out_dir / "visium.txt", "".join(g + "\n" for g in visium))
    write_text(args.out_dir / "xenium.txt", "".join(g + "\n" for g in xenium))
    log.info("vocabularies: %s", summary)
    return 0


def read_vocab(vocab_dir: Path) -> dict[str, list[str]]:
    """{"visium": [...], "xenium": [...]} from a vocabulary folder."""
    out = {}
    for name in ("visium", "xenium"):
        path = Path(vocab_dir) / f"{name}.txt"
        if not path.is_file():
            raise MintError(f"vocab {path}: vocabulary file not found")
        out[name] = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return out
