"""Spot-level targets (Visium, legacy ST, Visium HD pooled spots): one patch per spot.

One patch is centred *exactly* on each spot of ``obsm['spatial']``: the level-0 source box has
side ``S = patch_px * target_um / slide_um`` (not rounded) and top-left ``centre - S / 2``
(float), and the reader resamples that fractional box (:meth:`mint.data.wsi.WSI.read_box`).
Rounding the centre or the side instead would shift the patch by up to ~1 level-0 px per axis,
i.e. > 2 output px on 1.1 um/px slides. ``coords`` stores ``round(centre - S / 2)`` (HEST's
integer level-0 top-left). A patch is kept when at least ``min_tissue`` of it is tissue. Spots
whose centre is outside the slide are dropped and counted. Target = the spot's raw counts from
``st/{id}.h5ad`` (duplicate gene symbols summed). Visium HD bins also get a pooling QC
(:func:`visium_hd_qc`) and a patch that covers the whole bin.

The reading of the spot table lives here too, with its checks: bad input fails with one line
naming the sample and file instead of producing silently wrong targets.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mint.data.tiles import Targets
from mint.data.tissue import TissueMask
from mint.data.wsi import WSI
from mint.errors import MintError, one_line

if TYPE_CHECKING:  # tiling imports this module: the stage's types only for the hints
    from mint.data.tiling import SampleInfo, SamplePaths, TileConfig

log = logging.getLogger(__name__)


def read_spots(st_path: Path, sample_id: str):
    """(barcodes, centres (N, 2) float64 x/y, X (N, G) sparse or dense, genes, n_dup) of an h5ad.

    Checked here so that bad input fails with one line naming sample and file instead of
    producing silently wrong targets: centres must be finite (a NaN centre is a broken spot
    table, not a spot outside the slide), counts finite and >= 0 (log1p of a negative or NaN
    count poisons training). Non-integer counts only warn: HEST ships raw counts, but a
    normalised matrix is still usable. Duplicate gene symbols (Ensembl ids mapped to one
    symbol) are summed into one column; `n_dup` is the number of columns merged away.
    """
    import anndata as ad
    import scipy.sparse as sp

    if not st_path.is_file():
        raise MintError(f"{sample_id} {st_path}: expression file not found")
    try:
        adata = ad.read_h5ad(st_path)
    except Exception as exc:
        msg = one_line(exc)
        if "does not match" in msg and "obs" in msg:  # anndata checks obsm indices on read
            msg = f"barcodes of an obsm entry do not match obs_names ({msg})"
        raise MintError(f"{sample_id} {st_path}: cannot read h5ad: {msg}") from None
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise MintError(f"{sample_id} {st_path}: no spots or no genes ({adata.shape})")
    barcodes = [str(b) for b in adata.obs_names]
    if len(set(barcodes)) != len(barcodes):
        dup = next(b for b in barcodes if barcodes.count(b) > 1)
        raise MintError(f"{sample_id} {st_path}: duplicate spot barcodes (e.g. {dup!r})")
    if "spatial" not in adata.obsm:
        raise MintError(f"{sample_id} {st_path}: obsm['spatial'] (spot centres) is missing")
    spatial = adata.obsm["spatial"]
    if hasattr(spatial, "index"):  # a DataFrame: its rows must be the obs barcodes
        idx = [str(b) for b in spatial.index]
        if idx != barcodes:
            if set(idx) != set(barcodes):
                raise MintError(
                    f"{sample_id} {st_path}: barcodes of obsm['spatial'] do not match obs_names"
                )
            spatial = spatial.loc[adata.obs_names]
        spatial = spatial.to_numpy()
    try:
        centres = np.asarray(spatial, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise MintError(
            f"{sample_id} {st_path}: obsm['spatial'] is not numeric: {one_line(exc)}"
        ) from None
    if centres.ndim != 2 or centres.shape[0] != len(barcodes) or centres.shape[1] < 2:
        raise MintError(
            f"{sample_id} {st_path}: obsm['spatial'] has shape {centres.shape}, "
            f"expected ({len(barcodes)}, 2) matching the spot barcodes"
        )
    centres = centres[:, :2]
    bad = ~np.isfinite(centres).all(axis=1)
    if bad.any():
        raise MintError(
            f"{sample_id} {st_path}: {int(bad.sum())} of {len(barcodes)} spot centres in "
            f"obsm['spatial'] are NaN or infinite (e.g. {barcodes[int(np.argmax(bad))]!r})"
        )
    genes = [str(g) for g in adata.var_names]
    x = adata.X
    if x is None:
        raise MintError(f"{sample_id} {st_path}: X (raw counts) is empty")
    x = sp.csr_matrix(x) if sp.issparse(x) else np.asarray(x)
    _check_counts(x, sample_id, st_path)
    x, genes, n_dup = _sum_duplicate_genes(x, genes)
    if n_dup:
        log.warning(
            "%s %s: %d duplicate gene symbols; their columns are summed into one (%d genes left)",
            sample_id,
            st_path,
            n_dup,
            len(genes),
        )
    return barcodes, centres, x, genes, n_dup


def _check_counts(x, sample_id: str, st_path: Path) -> None:
    """Refuse NaN/inf/negative expression; warn when X does not look like raw counts.

    A dense X is checked in row blocks so the temporaries stay small next to X itself.
    """
    import scipy.sparse as sp

    vals = x.data if sp.issparse(x) else x
    if vals.dtype.kind not in "biuf":
        raise MintError(f"{sample_id} {st_path}: X has non-numeric dtype {vals.dtype}")
    if vals.dtype.kind in "bu" or vals.size == 0:
        return
    n_bad = n_neg = n_frac = 0
    vmin = 0.0
    step = max(1, (1 << 24) // max(1, vals.size // max(1, len(vals))))  # ~16M values a block
    for i in range(0, len(vals), step):
        block = vals[i : i + step]
        if block.dtype.kind == "f":
            finite = np.isfinite(block)
            n_bad += int(block.size - finite.sum())
            block = block[finite]
            n_frac += int((block != np.round(block)).sum())
        n_neg += int((block < 0).sum())
        if block.size:
            vmin = min(vmin, float(block.min()))
    if n_bad:
        raise MintError(
            f"{sample_id} {st_path}: X holds {n_bad} NaN or infinite values (expected raw counts)"
        )
    if n_neg:
        raise MintError(
            f"{sample_id} {st_path}: X holds {n_neg} negative values, min {vmin:g} "
            f"(expected raw counts)"
        )
    if n_frac:
        log.warning(
            "%s %s: X is not integer-valued (%d non-integer values): not raw counts? "
            "Using it as is",
            sample_id,
            st_path,
            n_frac,
        )


def _sum_duplicate_genes(x, genes: list[str]):
    """(x, genes, n_merged) with the columns of each repeated gene symbol summed.

    Summing (rather than keeping the first column) keeps every count: HEST maps several
    Ensembl ids to one symbol, and each id carries part of the gene's reads. Done with a sparse
    (G, G') 0/1 matrix product, so a sparse X stays sparse and nothing dense of size N x G is
    built.
    """
    import scipy.sparse as sp

    first: dict[str, int] = {}
    col = np.array([first.setdefault(g, len(first)) for g in genes], np.int64)
    n_new = len(first)
    if n_new == len(genes):
        return x, genes, 0
    dtype = x.dtype if x.dtype.kind in "iuf" else np.float32
    merge = sp.csr_matrix(
        (np.ones(len(genes), dtype), (np.arange(len(genes)), col)), shape=(len(genes), n_new)
    )
    if sp.issparse(x):
        out = sp.csr_matrix(x @ merge)
    else:
        out = np.asarray(merge.T @ x.T).T  # dense @ sparse via the sparse operand's matmul
    return out, list(first), len(genes) - n_new


def spot_targets(
    info: SampleInfo, paths: SamplePaths, wsi: WSI, mask: TissueMask, cfg: TileConfig
) -> Targets:
    """The kept spots of one sample (inside the slide, enough tissue) in raster order.

    Raster order (rows of patches, then x) makes neighbouring reads share decoded slide tiles.
    """
    import scipy.sparse as sp

    barcodes, centres, x, genes, n_dup = read_spots(paths.st, info.sample_id)
    size_src = wsi.size_at(cfg.pixel_size_um, cfg.patch_size)  # rounded: tissue mask, attrs
    side = cfg.patch_size * cfg.pixel_size_um / wsi.pixel_size_um  # exact: pixels
    hd = {}
    if info.technology.strip().lower() in ("visium hd", "visium_hd", "visiumhd"):
        hd = visium_hd_qc(centres, x, wsi.pixel_size_um, info.sample_id, paths.st)
        # The patch covers the whole pooled bin (target and pixels see the same tissue).
        side = max(side, hd["bin_um"] / wsi.pixel_size_um)
        size_src = max(size_src, int(round(side)))
    n_total = len(barcodes)
    c = centres  # finite (read_spots refuses non-finite centres)
    inside = (c[:, 0] >= 0) & (c[:, 0] < wsi.width) & (c[:, 1] >= 0) & (c[:, 1] < wsi.height)
    boxes = c - side / 2.0  # exact top-left, centred on the spot to sub-pixel precision
    tops = np.zeros((n_total, 2), np.int64)
    tops[inside] = np.round(boxes[inside]).astype(np.int64)
    frac = np.zeros(n_total, np.float32)
    idx_in = np.flatnonzero(inside)
    frac[idx_in] = mask.fractions(
        np.column_stack([tops[idx_in], np.full((len(idx_in), 2), size_src)])
    )
    keep = inside & (frac >= cfg.min_tissue)
    n_out = int((~inside).sum())
    n_tissue = int((inside & ~keep).sum())
    if n_out:
        log.warning(
            "%s: %d of %d spots lie outside the %dx%d slide; dropped",
            info.sample_id,
            n_out,
            n_total,
            wsi.width,
            wsi.height,
        )
    kept = np.flatnonzero(keep)
    if kept.size == 0:
        raise MintError(
            f"{info.sample_id} {paths.st}: no spot kept ({n_out} outside the slide, {n_tissue} "
            f"with < {cfg.min_tissue:.0%} tissue of {n_total}); check the pixel size and spots"
        )
    # Raster order (rows of patches, then x) so neighbouring reads share decoded slide tiles.
    band = tops[kept, 1] // max(size_src, 1)
    kept = kept[np.lexsort((tops[kept, 0], band))]

    def expr_rows(start: int, stop: int) -> np.ndarray:
        rows = x[kept[start:stop]]
        return (rows.toarray() if sp.issparse(rows) else np.asarray(rows)).astype(np.float32)

    return Targets(
        tops=tops[kept],
        barcodes=[barcodes[i] for i in kept],
        genes=genes,
        expr_rows=expr_rows,
        n_cells=None,
        stats=dict(
            n_spots_total=n_total,
            n_dropped_outside=n_out,
            n_dropped_tissue=n_tissue,
            size_src_px=size_src,
            size_src_exact_px=float(side),
            n_genes_duplicate=n_dup,
            **hd,
        ),
        boxes=boxes[kept],
        box_size=float(side),
    )


#: Visium HD pooled bins must hold at least this many counts per um^2 (median over bins). A
#: correctly pooled bin of HD's 2 um squares holds well above it (10x's 8-16 um bins: ~1-4
#: UMI/um^2 in tissue); HEST's `pool_bins_visiumhd` adds with a fancy-indexed `+=`, which keeps
#: one source bin per target bin: a 128 um bin then holds one 16 um bin's counts, ~64x too few.
VISIUM_HD_MIN_COUNTS_PER_UM2 = 0.1


def visium_hd_qc(centres: np.ndarray, x, pixel_size_um: float, sample_id: str, st_path: Path):
    """Bin size and count density of a Visium HD sample's pooled bins, with QC flags.

    The bin side is the median distance between neighbouring bin centres. Counts far below
    what the bin area predicts mean the bins were not really pooled (see
    VISIUM_HD_MIN_COUNTS_PER_UM2); the sample is flagged (`qc_flags`, shown in the shards'
    QC table), not dropped: `select.exclude_visium_hd` leaves Visium HD out altogether.
    """
    from scipy.spatial import cKDTree

    flags = []
    if len(centres) < 2:
        return dict(bin_um=0.0, counts_per_um2=0.0, qc_flags="fewer than 2 bins")
    dist, _ = cKDTree(centres).query(centres, k=2)
    bin_um = float(np.median(dist[:, 1])) * pixel_size_um
    totals = np.asarray(x.sum(axis=1)).ravel()
    density = float(np.median(totals)) / max(bin_um * bin_um, 1e-9)
    if density < VISIUM_HD_MIN_COUNTS_PER_UM2:
        flags.append(
            f"median {np.median(totals):g} counts per {bin_um:.0f} um bin = {density:.3g}/um^2 "
            f"< {VISIUM_HD_MIN_COUNTS_PER_UM2:g}: bins look unpooled"
        )
        log.warning("%s %s: Visium HD QC: %s", sample_id, st_path, flags[-1])
    return dict(
        bin_um=round(bin_um, 3), counts_per_um2=round(density, 4), qc_flags="; ".join(flags)
    )
