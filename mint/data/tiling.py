"""`mint tile`: cut one HEST sample into 224 px patches at 0.5 um/px with expression targets.

Two ways to pair pixels with expression, by technology (`mint.hest.metadata.level_of`):

* **spot level** (Visium, legacy ST, Visium HD pooled spots): one patch centred *exactly* on
  each spot of ``obsm['spatial']``: the level-0 source box has side
  ``S = patch_px * target_um / slide_um`` (not rounded) and top-left ``centre - S / 2`` (float),
  and the reader resamples that fractional box (:meth:`mint.data.wsi.WSI.read_box`). Rounding
  the centre or the side instead would shift the patch by up to ~1 level-0 px per axis, i.e.
  > 2 output px on 1.1 um/px slides. ``coords`` stores ``round(centre - S / 2)`` (HEST's integer
  level-0 top-left). A patch is kept when at least ``min_tissue`` of it is tissue. Spots whose
  centre is outside the slide are dropped and counted. Target = the spot's raw counts from
  ``st/{id}.h5ad`` (duplicate gene symbols summed).
* **patch level** (Xenium): a grid of non-overlapping patches anchored at the slide origin. A
  grid patch is a candidate when at least one counted transcript (not a control, ``qv >=
  min_qv``) falls inside it (the Xenium capture area can be smaller than the H&E section, and a
  patch outside it would get a false zero target) and is kept when it is also tissue; the
  tissue fraction counts only the part of the patch inside the slide (the last grid row and
  column overhang the slide edge). Target (``cells``, default) = summed counts of the cells
  whose centroid (of the ``xenium_seg`` polygon) lies in the patch; each cell belongs to
  exactly one patch, by ``floor(centroid / size_src)``. The segmentation is required in this
  mode: a missing or unreadable file is an error naming the sample and file (never a silent
  switch to other targets). ``transcripts`` counts every transcript whose (he_x, he_y) falls
  inside. Control codewords and ``qv < min_qv`` are dropped in both.
  In ``cells`` mode, transcripts whose cell id is not in ``xenium_seg`` are counted
  (``n_transcripts_unmatched``) and not used; more than 5 % of the cell-assigned ones is an
  error (the two files do not belong together). Ids are compared as normalised strings
  (``1``, ``1.0`` and ``"1"`` are the same cell).

Transcript tables can hold hundreds of millions of rows: they are streamed in record batches
with only the needed columns, binned with ``np.add.at`` on flat (patch, gene) indices, and the
accumulator is (kept patches x genes), independent of the number of transcripts.

Patch pixels are read through :class:`mint.data.wsi.WSI` (best pyramid level, one handle shared
by ``--threads`` reader threads, raster order for tile-cache hits) and streamed into the output
file batch by batch, so memory does not depend on the number of patches.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mint.data.genes import as_str, is_control
from mint.data.tiles import TileWriter
from mint.data.tissue import TissueMask, tissue_mask
from mint.data.wsi import WSI, check_pixel_size
from mint.errors import MintError, one_line
from mint.io import atomic_path

log = logging.getLogger(__name__)

TRANSCRIPT_BATCH_ROWS = 1 << 20  # rows per record batch: bounds memory (~0.3 GB)
#: Largest tolerated fraction of cell-assigned gene transcripts whose cell id is missing from
#: the segmentation file (cells mode). Above it the two files do not belong together (other
#: run, other id format) and the targets would be silently depleted.
MAX_UNMATCHED_FRACTION = 0.05
INITIAL_GENE_CAPACITY = 512  # accumulator columns (at least the h5ad's genes); grows if needed
_UNASSIGNED = {"", "unassigned", "-1", "none", "nan"}


# --------------------------------------------------------------------------------------------
# configuration and inputs
# --------------------------------------------------------------------------------------------
@dataclass
class TileConfig:
    patch_size: int = 224
    pixel_size_um: float = 0.5
    min_tissue: float = 0.15
    xenium_target: str = "cells"  # or "transcripts"
    min_qv: float = 20.0
    keep_controls: bool = False
    threads: int = 1
    batch: int = 32
    progress: bool = True


@dataclass
class SampleInfo:
    sample_id: str
    technology: str
    pixel_size_um: float
    level: str  # "spot" | "patch"
    modality: str  # "visium" | "xenium"
    organ: str = ""
    oncotree_code: str = ""


@dataclass
class SamplePaths:
    """HEST-1k file layout of one sample (optional files may not exist)."""

    wsi: Path
    st: Path
    contours: Path
    transcripts: Path
    cell_seg: Path

    @classmethod
    def from_hest_dir(cls, hest_dir: str | os.PathLike, sample_id: str) -> SamplePaths:
        d = Path(hest_dir)
        return cls(
            wsi=d / "wsis" / f"{sample_id}.tif",
            st=d / "st" / f"{sample_id}.h5ad",
            contours=d / "tissue_seg" / f"{sample_id}_contours.geojson",
            transcripts=d / "transcripts" / f"{sample_id}_transcripts.parquet",
            cell_seg=d / "xenium_seg" / f"{sample_id}_xenium_cell_seg.parquet",
        )


@dataclass
class Targets:
    """Everything the writer needs except pixels."""

    tops: np.ndarray  # (N, 2) int64 level-0 top-left x, y (the `coords` of the tile file)
    barcodes: list[str]
    genes: list[str]
    expr_rows: object  # callable(start, stop) -> float32 (n, G)
    n_cells: np.ndarray | None
    stats: dict
    #: (N, 2) float64 exact level-0 top-left of the box to read, and its side; the pixels come
    #: from this box, not from `tops`, so the patch centre is exact (None: read `tops`).
    boxes: np.ndarray | None = None
    box_size: float | None = None


# --------------------------------------------------------------------------------------------
# spot level
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# patch level (Xenium)
# --------------------------------------------------------------------------------------------
_INT_FLOAT_RE = re.compile(r"^-?\d+\.0*$")


def _normalise_ids(values) -> list[str]:
    """Cell ids as strings whatever their storage; unassigned -> ''.

    The transcript table and the segmentation file may store the same id differently (int
    ``1``, float ``1.0`` after a pandas NaN upcast, str ``"1"``, bytes), so integral numbers
    and integral decimal strings become ``"1"`` on both sides; other strings are kept.
    """
    out = []
    for v in values:
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            out.append("")
            continue
        if isinstance(v, (bool, np.bool_)):
            s = str(int(v))
        elif isinstance(v, (int, np.integer)):
            s = str(int(v))
        elif isinstance(v, (float, np.floating)):
            s = str(int(v)) if float(v).is_integer() else repr(float(v))
        else:
            s = as_str(v).strip()
            if _INT_FLOAT_RE.match(s):
                s = s.split(".")[0]
        out.append("" if s.lower() in _UNASSIGNED else s)
    return out


def _encode(arr):
    """(indices int64 with -1 for null, dictionary values as a Python list) of an arrow array."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if not pa.types.is_dictionary(arr.type):
        arr = pc.dictionary_encode(arr)
    idx = arr.indices.to_numpy(zero_copy_only=False)
    if arr.indices.null_count:
        idx = np.where(arr.indices.is_valid().to_numpy(zero_copy_only=False), idx, -1)
    return np.asarray(idx, np.int64), arr.dictionary.to_pylist()


def _float_col(batch, name: str) -> np.ndarray:
    col = batch.column(name)
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)


class _Ids:
    """Growing string -> int map for cell ids or gene names met while streaming."""

    def __init__(self):
        self.index: dict[str, int] = {}
        self.names: list[str] = []

    def lut(self, values: list, grow: bool) -> np.ndarray:
        out = np.full(len(values), -1, np.int64)
        for i, name in enumerate(values):
            if not name:
                continue
            j = self.index.get(name)
            if j is None and grow:
                j = self.index[name] = len(self.names)
                self.names.append(name)
            if j is not None:
                out[i] = j
        return out


def _open_parquet(path: Path, sample_id: str, what: str):
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception as exc:
        raise MintError(
            f"{sample_id} {path}: cannot read {what} parquet: {one_line(exc)}"
        ) from None


def _iter_batches(pf, columns: list[str], sample_id: str, path: Path, desc: str, progress: bool):
    n = pf.metadata.num_rows
    bar = tqdm(total=n, desc=desc, unit="tx", unit_scale=True, disable=not progress, leave=False)
    try:
        for batch in pf.iter_batches(batch_size=TRANSCRIPT_BATCH_ROWS, columns=columns):
            yield batch
            bar.update(batch.num_rows)
    except MintError:
        raise
    except Exception as exc:
        raise MintError(
            f"{sample_id} {path}: error while reading transcripts: {one_line(exc)}"
        ) from None
    finally:
        bar.close()


def cells_from_segmentation(path: Path, sample_id: str) -> tuple[list[str], np.ndarray]:
    """(cell ids, centroids (N, 2) in H&E level-0 px) from HEST's cell polygons, or None.

    HEST writes the GeoDataFrame with geopandas: WKB polygons and the cell id as the (pandas)
    index column. The geometry column is the GeoParquet ``geo`` metadata's ``primary_column``
    when present (HEST names it ``geometry`` or ``combined``), else the first of those names.
    HEST's variants are all read: the id as a column or as the pandas index
    (``__index_level_0__``), as str, int (-1 = unassigned, dropped) or bytes. A file without
    a usable geometry or id column, or without cells, is a MintError naming the sample and file.
    """
    import json as _json

    import shapely

    pf = _open_parquet(path, sample_id, "cell segmentation")
    names = pf.schema_arrow.names
    id_col = next((c for c in ("cell_id", "__index_level_0__", "id") if c in names), None)
    meta = pf.schema_arrow.metadata or {}
    if id_col is None and b"pandas" in meta:
        for c in _json.loads(meta[b"pandas"]).get("index_columns", []):
            if isinstance(c, str) and c in names:
                id_col = c
    geo_col = None
    if b"geo" in meta:
        try:
            geo_col = _json.loads(meta[b"geo"]).get("primary_column")
        except (ValueError, AttributeError):
            geo_col = None
    if geo_col not in names:
        geo_col = next((c for c in ("geometry", "combined") if c in names), None)
    if geo_col is None or id_col is None:
        raise MintError(
            f"{sample_id} {path}: cell segmentation has no "
            f"{'geometry' if geo_col is None else 'cell id'} column (columns: {names})"
        )
    ids: list[str] = []
    cents = []
    try:
        for batch in pf.iter_batches(batch_size=1 << 18, columns=[geo_col, id_col]):
            geoms = shapely.from_wkb(batch.column(geo_col).to_numpy(zero_copy_only=False))
            cents.append(
                shapely.get_coordinates(shapely.centroid(geoms)).reshape(-1, 2)
                if len(geoms)
                else np.zeros((0, 2))
            )
            ids.extend(_normalise_ids(batch.column(id_col).to_pylist()))
    except Exception as exc:  # damaged parquet or WKB
        raise MintError(
            f"{sample_id} {path}: cannot read the cell segmentation: {one_line(exc)}"
        ) from None
    if not ids:
        raise MintError(f"{sample_id} {path}: cell segmentation holds no cells")
    return ids, np.concatenate(cents).astype(np.float64)


def _transcript_schema(pf, path: Path, sample_id: str, need: list[str]) -> set[str]:
    names = set(pf.schema_arrow.names)
    missing = [c for c in need if c not in names]
    if missing:
        raise MintError(f"{sample_id} {path}: transcript table lacks columns {missing}")
    if pf.metadata.num_rows == 0:
        raise MintError(f"{sample_id} {path}: transcript table is empty")
    return names


def xenium_targets(
    info: SampleInfo, paths: SamplePaths, wsi: WSI, mask: TissueMask, cfg: TileConfig
) -> Targets:
    sid, tpath = info.sample_id, paths.transcripts
    if cfg.xenium_target not in ("cells", "transcripts"):
        raise MintError(f"{sid}: --xenium-target must be cells or transcripts")
    if not tpath.is_file():
        raise MintError(f"{sid} {tpath}: transcript table not found (needed for Xenium)")
    pf = _open_parquet(tpath, sid, "transcript")
    names = _transcript_schema(pf, tpath, sid, ["feature_name", "he_x", "he_y"])
    has_qv = "qv" in names
    if not has_qv:
        log.warning("%s %s: no qv column; the quality filter is off", sid, tpath)
    use_cells = cfg.xenium_target == "cells"
    if use_cells and "cell_id" not in names:
        raise MintError(f"{sid} {tpath}: no cell_id column (needed for --xenium-target cells)")

    s = wsi.size_at(cfg.pixel_size_um, cfg.patch_size)
    nx, ny = math.ceil(wsi.width / s), math.ceil(wsi.height / s)
    n_grid = nx * ny
    gx, gy = np.meshgrid(np.arange(nx), np.arange(ny))
    grid_tops = np.column_stack([gx.ravel() * s, gy.ravel() * s]).astype(np.int64)
    tissue = in_slide_tissue(mask, grid_tops, s, wsi.width, wsi.height)
    is_tissue = tissue >= cfg.min_tissue
    # Compact index of tissue patches: the accumulator holds only those.
    compact = np.full(n_grid, -1, np.int64)
    tissue_ids = np.flatnonzero(is_tissue)
    compact[tissue_ids] = np.arange(tissue_ids.size)

    def grid_index(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        ok = (
            np.isfinite(x)
            & np.isfinite(y)
            & (x >= 0)
            & (y >= 0)
            & (x < wsi.width)
            & (y < wsi.height)
        )
        g = np.full(x.shape, -1, np.int64)
        g[ok] = np.floor(y[ok] / s).astype(np.int64) * nx + np.floor(x[ok] / s).astype(np.int64)
        return g

    # ---- cells: ids and the patch of each centroid ----------------------------------------
    cells = _Ids()
    cell_patch = np.zeros(0, np.int64)
    cell_grid = np.zeros(0, np.int64)
    n_cells_outside = 0
    cell_source = ""
    if use_cells or paths.cell_seg.is_file():  # transcript targets still count cells if it can
        if not paths.cell_seg.is_file():
            raise MintError(
                f"{sid} {paths.cell_seg}: cell segmentation not found (needed for cell targets; "
                "set tile.xenium_target: transcripts to count transcripts per patch instead)"
            )
        ids, cents = cells_from_segmentation(paths.cell_seg, sid)
        lut = cells.lut(ids, grow=True)  # global ids in order of first appearance
        valid = np.flatnonzero(lut >= 0)
        # A duplicated id keeps its first polygon.
        _, first = np.unique(lut[valid], return_index=True)
        cents = cents[valid[first]]
        cell_source = "xenium_seg"
    if cell_source:
        cell_grid = grid_index(cents[:, 0], cents[:, 1])
        n_cells_outside = int((cell_grid < 0).sum())
        cell_patch = np.where(cell_grid >= 0, compact[np.maximum(cell_grid, 0)], -1)

    # ---- transcripts: coverage and targets ------------------------------------------------
    genes = _Ids()
    gene_ok = np.zeros(0, bool)  # per global gene id: counted (not a control)
    h5ad_names = _h5ad_genes(paths.st)
    cap = max(INITIAL_GENE_CAPACITY, len(h5ad_names) + 8)  # the h5ad lists the panel
    acc = np.zeros((tissue_ids.size, cap), np.int32)
    coverage = np.zeros(n_grid, np.int64)
    n_used = n_low_qv = n_control = n_tx_outside = 0
    n_with_cell = n_unmatched = 0  # cells mode: gene transcripts with a cell id / id unknown
    columns = (
        ["feature_name", "he_x", "he_y"]
        + (["qv"] if has_qv else [])
        + (["cell_id"] if use_cells else [])
    )
    for batch in _iter_batches(pf, columns, sid, tpath, f"{sid} transcripts", cfg.progress):
        idx, dictionary = _encode(batch.column("feature_name"))
        lut = genes.lut([as_str(v) if v is not None else "" for v in dictionary], grow=True)
        if len(genes.names) > gene_ok.size:
            new = genes.names[gene_ok.size :]
            gene_ok = np.concatenate(
                [gene_ok, [cfg.keep_controls or not is_control(g) for g in new]]
            )
        if len(genes.names) > cap:
            cap = max(cap + cap // 4, len(genes.names))
            acc = np.pad(acc, ((0, 0), (0, cap - acc.shape[1])))
        gid = np.where(idx >= 0, lut[np.maximum(idx, 0)], -1)
        x, y = _float_col(batch, "he_x"), _float_col(batch, "he_y")
        g = grid_index(x, y)
        inside = g >= 0
        n_tx_outside += int((~inside).sum())
        ok = gid >= 0
        control = ok & ~gene_ok[np.maximum(gid, 0)]
        n_control += int(control.sum())
        ok &= ~control
        if has_qv:
            qv = _float_col(batch, "qv")
            low = ok & ~(qv >= cfg.min_qv)
            n_low_qv += int(low.sum())
            ok &= ~low
        # Only counted transcripts make a patch "covered": controls and low-qv ones are noise
        # that also lands outside the capture area's real signal.
        coverage += np.bincount(g[inside & ok], minlength=n_grid)
        if use_cells:
            cidx, cdict = _encode(batch.column("cell_id"))
            cnames = _normalise_ids(cdict)
            clut = cells.lut(cnames, grow=False)
            named = np.array([bool(c) for c in cnames] + [False], bool)  # [-1]: null id
            has_id = ok & named[np.where(cidx >= 0, cidx, len(cnames))]
            cid = np.where(cidx >= 0, clut[np.maximum(cidx, 0)], -1)
            n_with_cell += int(has_id.sum())
            n_unmatched += int((has_id & (cid < 0)).sum())
            patch = np.where(
                cid >= 0, cell_patch[np.maximum(cid, 0)] if cell_patch.size else -1, -1
            )
        else:
            patch = np.where(inside, compact[np.maximum(g, 0)], -1)
        ok &= patch >= 0
        n_used += int(ok.sum())
        np.add.at(acc.reshape(-1), patch[ok] * cap + gid[ok], 1)

    if n_unmatched:
        frac = n_unmatched / max(n_with_cell, 1)
        if frac > MAX_UNMATCHED_FRACTION:
            raise MintError(
                f"{sid} {paths.cell_seg}: {n_unmatched} of {n_with_cell} ({frac:.1%}) cell-assigned "
                f"transcripts of {tpath.name} have a cell_id missing from this segmentation file "
                f"(> {MAX_UNMATCHED_FRACTION:.0%}; mismatched files or id formats?)"
            )
        log.warning(
            "%s %s: %d of %d (%.2f%%) cell-assigned transcripts have a cell_id not in %s; "
            "not counted",
            sid,
            tpath,
            n_unmatched,
            n_with_cell,
            100 * frac,
            paths.cell_seg.name,
        )
    if n_used == 0:
        raise MintError(
            f"{sid} {tpath}: no transcript left to count (controls dropped, qv >= {cfg.min_qv}, "
            f"inside tissue patches{' and assigned to cells' if use_cells else ''})"
        )
    covered = coverage > 0
    keep_grid = np.flatnonzero(covered & is_tissue)  # raster order
    n_total = int(covered.sum())
    n_tissue = int((covered & ~is_tissue).sum())
    if keep_grid.size == 0:
        raise MintError(f"{sid} {tpath}: no tissue patch overlaps the transcripts")

    # Panel = feature names of the table (plus the h5ad's), controls dropped unless kept.
    panel = {gname for gname, ok in zip(genes.names, gene_ok, strict=True) if ok}
    panel |= {g for g in h5ad_names if cfg.keep_controls or not is_control(g)}
    panel_genes = sorted(panel)
    col_of = {gname: i for i, gname in enumerate(genes.names)}
    src_cols = np.array([col_of.get(gname, -1) for gname in panel_genes], np.int64)
    rows = compact[keep_grid]

    def expr_rows(start: int, stop: int) -> np.ndarray:
        sub = acc[rows[start:stop]]
        out = np.zeros((len(sub), len(panel_genes)), np.float32)
        have = src_cols >= 0
        out[:, have] = sub[:, src_cols[have]]
        return out

    if cell_source:
        n_cells = np.bincount(cell_grid[cell_grid >= 0], minlength=n_grid)[keep_grid].astype(
            np.int32
        )
    else:
        n_cells = np.full(keep_grid.size, -1, np.int32)
    row, col = keep_grid // nx, keep_grid % nx
    return Targets(
        tops=grid_tops[keep_grid],
        barcodes=[f"{r:03d}x{c:03d}" for r, c in zip(row, col, strict=True)],
        genes=panel_genes,
        expr_rows=expr_rows,
        n_cells=n_cells,
        stats=dict(
            n_spots_total=n_total,
            n_dropped_outside=0,
            n_dropped_tissue=n_tissue,
            size_src_px=s,
            n_transcripts_used=n_used,
            n_transcripts_low_qv=n_low_qv,
            n_transcripts_control=n_control,
            n_transcripts_outside=n_tx_outside,
            n_cells_outside=n_cells_outside,
            n_transcripts_unmatched=n_unmatched,
            cell_source=cell_source,
        ),
    )


def in_slide_tissue(
    mask: TissueMask, tops: np.ndarray, side: float, width: float, height: float
) -> np.ndarray:
    """Tissue fraction of each square patch, counting only its part inside the slide.

    The mask's last pixels and the contours can reach past the slide edge, and grid patches of
    the last row and column overhang it; that area is never tissue (the patch pixels there are
    padding), so the box is clipped to the slide and the tissue area divided by the full patch.
    """
    tops = np.asarray(tops, np.float64)
    w = np.clip(np.minimum(tops[:, 0] + side, width) - tops[:, 0], 0, None)
    h = np.clip(np.minimum(tops[:, 1] + side, height) - tops[:, 1], 0, None)
    out = np.zeros(len(tops), np.float32)
    ok = (w > 0) & (h > 0)
    if ok.any():
        boxes = np.column_stack([tops[ok], w[ok], h[ok]])
        out[ok] = mask.fractions(boxes) * (w[ok] * h[ok] / (side * side))
    return out


def _h5ad_genes(path: Path) -> list[str]:
    """Feature names of the h5ad (read from var only, controls included), if it exists."""
    if not path.is_file():
        return []
    import anndata as ad
    import h5py

    try:
        with h5py.File(path, "r") as f:
            var = ad.io.read_elem(f["var"])
        names = [str(g) for g in var.index]
    except Exception as exc:
        log.warning("%s: cannot read gene names (%s); using the transcript table's", path, exc)
        return []
    return names


# --------------------------------------------------------------------------------------------
# pixels and output
# --------------------------------------------------------------------------------------------
def read_patches(
    wsi: WSI,
    tops: np.ndarray,
    size_src: float,
    out_size: int,
    threads: int,
    batch: int,
    progress: bool = True,
    desc: str = "patches",
):
    """Yield (start, uint8 (b, out, out, 3)) batches of patches in `tops` order.

    `tops` (level-0 top-left x, y) and `size_src` (level-0 side) may be fractional: the box
    is resampled exactly (:meth:`WSI.read_box`), so a spot patch is centred on the spot to a
    small fraction of an output pixel. Whole-pixel boxes take the reader's crop/resize path.
    Batch arrays are reused: a batch stays valid until the next-but-one is requested.
    """
    n = len(tops)
    pool = ThreadPoolExecutor(max_workers=threads) if threads > 1 else None
    bar = tqdm(total=n, desc=desc, unit="patch", disable=not progress)

    side = float(size_src)

    def one(i: int) -> np.ndarray:
        x, y = float(tops[i, 0]), float(tops[i, 1])
        return wsi.read_box(x, y, side, side, out_size, out_size)

    # Two buffers used in turn, so the caller may still be writing the previous batch (in a
    # thread) while this one is read.
    bufs = [np.empty((min(batch, n), out_size, out_size, 3), np.uint8) for _ in range(2)]

    def fill(i: int, start: int) -> None:
        bufs[(start // batch) % 2][i - start] = one(i)

    try:
        for start in range(0, n, batch):
            ids = range(start, min(n, start + batch))
            if pool:
                list(pool.map(fill, ids, [start] * len(ids)))
            else:
                for i in ids:
                    fill(i, start)
            yield start, bufs[(start // batch) % 2][: len(ids)]
            bar.update(len(ids))
    finally:
        bar.close()
        if pool:
            pool.shutdown()


def tile_sample(info: SampleInfo, paths: SamplePaths, out: Path, cfg: TileConfig) -> dict:
    """Write the tile file of one sample atomically; returns its attributes."""
    check_pixel_size(info.pixel_size_um, info.sample_id, "metadata")
    if info.level not in ("spot", "patch"):
        raise MintError(f"{info.sample_id}: unknown tiling level {info.level!r}")
    wsi = WSI(paths.wsi, info.pixel_size_um, info.sample_id)
    with wsi:
        mask = tissue_mask(wsi, paths.contours)
        make = spot_targets if info.level == "spot" else xenium_targets
        t = make(info, paths, wsi, mask, cfg)
        n = len(t.barcodes)
        attrs = dict(
            sample_id=info.sample_id,
            pixel_size_um=float(wsi.pixel_size_um),
            target_pixel_size_um=float(cfg.pixel_size_um),
            patch_size_px=int(cfg.patch_size),
            technology=info.technology,
            level=info.level,
            modality=info.modality,
            organ=info.organ or "",
            oncotree_code=info.oncotree_code or "",
            xenium_target=cfg.xenium_target if info.level == "patch" else "",
            min_tissue=float(cfg.min_tissue),
            min_qv=float(cfg.min_qv) if info.level == "patch" else -1.0,
            tissue_source=mask.source,
            n_patches=n,
            **t.stats,
        )
        size_src = int(t.stats["size_src_px"])
        boxes = t.tops if t.boxes is None else t.boxes
        side = float(size_src if t.box_size is None else t.box_size)
        log.info(
            "%s: %d patches (%s level, %d level-0 px -> %d px), %d genes",
            info.sample_id,
            n,
            info.level,
            size_src,
            cfg.patch_size,
            len(t.genes),
        )
        with (
            ThreadPoolExecutor(max_workers=1) as writer,
            atomic_path(out) as tmp,
            TileWriter(tmp, n, cfg.patch_size, t.genes, t.barcodes, t.tops, attrs, t.n_cells) as w,
        ):
            step = 256
            for start in range(0, n, step):
                w.write_expr(start, t.expr_rows(start, min(n, start + step)))
            pending = None
            try:
                for start, imgs in read_patches(
                    wsi,
                    boxes,
                    side,
                    cfg.patch_size,
                    max(1, cfg.threads),
                    cfg.batch,
                    cfg.progress,
                    desc=info.sample_id,
                ):
                    # Write in a thread while the next batch is read (one write in flight).
                    if pending is not None:
                        pending.result()
                    pending = writer.submit(w.write_img, start, imgs)
                if pending is not None:
                    pending.result()
            finally:
                if pending is not None:  # never close the file under a running write
                    wait([pending])
    return attrs


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    from mint.settings import add_options

    p.add_argument("--sample", required=True, help="HEST sample id")
    p.add_argument("--hest-dir", required=True, type=Path, help="HEST-1k folder (wsis/, st/, ...)")
    p.add_argument("--metadata", required=True, type=Path, help="HEST metadata CSV")
    p.add_argument("--out", required=True, type=Path, help="output tile file (.h5)")
    # --patch-size, --pixel-size, ...: TileConfig's fields and defaults (mint.settings)
    add_options(p, "tile")


def run(args: argparse.Namespace) -> int:
    from mint.hest.metadata import level_of, modality_of, read_metadata, sample_row
    from mint.logging_utils import progress_enabled
    from mint.settings import from_args

    df = read_metadata(args.metadata)
    row = sample_row(df, args.sample)
    tech = str(row.get("st_technology", ""))
    info = SampleInfo(
        sample_id=args.sample,
        technology=tech,
        pixel_size_um=check_pixel_size(
            row.get("pixel_size_um_estimated"), args.sample, str(args.metadata)
        ),
        level=level_of(tech),
        modality=modality_of(tech),
        organ=_clean(row.get("organ")),
        oncotree_code=_clean(row.get("oncotree_code")),
    )
    cfg = from_args("tile", args, progress=progress_enabled())
    if cfg.patch_size < 1 or cfg.pixel_size_um <= 0:
        raise MintError(f"{args.sample}: --patch-size and --pixel-size must be positive")
    tile_sample(info, SamplePaths.from_hest_dir(args.hest_dir, args.sample), args.out, cfg)
    return 0


def _clean(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return str(v)
