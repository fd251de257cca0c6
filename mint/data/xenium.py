"""Patch-level targets (Xenium): a grid of patches with counts binned from the transcripts.

A grid of non-overlapping patches anchored at the slide origin. A grid patch is a candidate
when at least one counted transcript (not a control, ``qv >= min_qv``) falls inside it (the
Xenium capture area can be smaller than the H&E section, and a patch outside it would get a
false zero target) and is kept when it is also tissue; the tissue fraction counts only the part
of the patch inside the slide (the last grid row and column overhang the slide edge).

* ``cells`` (default): target = summed counts of the cells whose centroid (of the
  ``xenium_seg`` polygon) lies in the patch; each cell belongs to exactly one patch, by
  ``floor(centroid / size_src)``. The segmentation is required in this mode: a missing or
  unreadable file is an error naming the sample and file (never a silent switch to other
  targets). Transcripts whose cell id is not in ``xenium_seg`` are counted
  (``n_transcripts_unmatched``) and not used; more than 5 % of the cell-assigned ones is an
  error (the two files do not belong together). Ids are compared as normalised strings
  (``1``, ``1.0`` and ``"1"`` are the same cell).
* ``transcripts``: counts every transcript whose (he_x, he_y) falls inside the patch.

Control codewords and ``qv < min_qv`` are dropped in both. Transcript tables can hold hundreds
of millions of rows: they are streamed in record batches with only the needed columns, binned
with ``np.add.at`` on flat (patch, gene) indices, and the accumulator is (tissue patches x
genes), independent of the number of transcripts.

One function per step: `patch_grid` (the grid and its tissue patches), `cell_patches` (cell
centroids placed on the grid), `bin_transcripts` (one streaming pass: QC filters, coverage,
counts); `xenium_targets` checks the inputs, runs them and assembles the gene panel.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from mint.data.genes import as_str, is_control
from mint.data.tiles import Targets
from mint.data.tissue import TissueMask
from mint.data.wsi import WSI
from mint.errors import MintError, one_line

if TYPE_CHECKING:  # tiling imports this module: the stage's types only for the hints
    from mint.data.tiling import SampleInfo, SamplePaths, TileConfig

log = logging.getLogger(__name__)

TRANSCRIPT_BATCH_ROWS = 1 << 20  # rows per record batch: bounds memory (~0.3 GB)
#: Largest tolerated fraction of cell-assigned gene transcripts whose cell id is missing from
#: the segmentation file (cells mode). Above it the two files do not belong together (other
#: run, other id format) and the targets would be silently depleted.
MAX_UNMATCHED_FRACTION = 0.05
INITIAL_GENE_CAPACITY = 512  # accumulator columns (at least the h5ad's genes); grows if needed
_UNASSIGNED = {"", "unassigned", "-1", "none", "nan"}


# --------------------------------------------------------------------------------------------
# reading: ids, parquet batches, cell polygons
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


def _lookup(table: np.ndarray, idx: np.ndarray, missing) -> np.ndarray:
    """``table[idx]`` where ``idx >= 0``, `missing` where ``idx`` is -1 (or the table is empty).

    A batch whose names or ids are all null has an empty dictionary, hence an empty table.
    """
    if table.size == 0:
        return np.full(idx.shape, missing, table.dtype)
    return np.where(idx >= 0, table[np.maximum(idx, 0)], missing)


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
    except Exception as exc:
        raise MintError(
            f"{sample_id} {path}: error while reading transcripts: {one_line(exc)}"
        ) from None
    finally:
        bar.close()


def cells_from_segmentation(path: Path, sample_id: str) -> tuple[list[str], np.ndarray]:
    """(cell ids, centroids (N, 2) in H&E level-0 px) from HEST's cell polygons.

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
# the grid, the cells on it, the transcripts binned on it
# --------------------------------------------------------------------------------------------
@dataclass
class PatchGrid:
    """Non-overlapping patches of level-0 side `size` anchored at the slide origin, raster order."""

    size: int
    nx: int
    width: int
    height: int
    tops: np.ndarray  # (n, 2) int64 level-0 top-left of every grid patch
    is_tissue: np.ndarray  # (n,) bool: in-slide tissue fraction >= min_tissue
    #: (n,) int64 row of each tissue patch in the accumulator (-1 elsewhere): the accumulator
    #: holds only tissue patches.
    compact: np.ndarray

    @property
    def n(self) -> int:
        return len(self.tops)

    def index(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Grid patch of each level-0 point; -1 when outside the slide or not finite."""
        ok = (
            np.isfinite(x)
            & np.isfinite(y)
            & (x >= 0)
            & (y >= 0)
            & (x < self.width)
            & (y < self.height)
        )
        s = self.size
        g = np.full(x.shape, -1, np.int64)
        row = np.floor(y[ok] / s).astype(np.int64)
        g[ok] = row * self.nx + np.floor(x[ok] / s).astype(np.int64)
        return g


def patch_grid(wsi: WSI, mask: TissueMask, cfg: TileConfig) -> PatchGrid:
    """The grid over the whole slide (the last row and column overhang it) and its tissue."""
    s = wsi.size_at(cfg.pixel_size_um, cfg.patch_size)
    nx, ny = math.ceil(wsi.width / s), math.ceil(wsi.height / s)
    gx, gy = np.meshgrid(np.arange(nx), np.arange(ny))
    tops = np.column_stack([gx.ravel() * s, gy.ravel() * s]).astype(np.int64)
    is_tissue = in_slide_tissue(mask, tops, s, wsi.width, wsi.height) >= cfg.min_tissue
    compact = np.full(nx * ny, -1, np.int64)
    tissue_ids = np.flatnonzero(is_tissue)
    compact[tissue_ids] = np.arange(tissue_ids.size)
    return PatchGrid(s, nx, wsi.width, wsi.height, tops, is_tissue, compact)


@dataclass
class CellPatches:
    """The segmented cells: their ids and the grid patch of each centroid."""

    ids: _Ids  # normalised cell id -> cell index
    grid: np.ndarray  # (C,) grid patch of each centroid (-1: outside the slide)
    row: np.ndarray  # (C,) accumulator row of each cell (-1: not on a tissue patch)

    @property
    def n_outside(self) -> int:
        return int((self.grid < 0).sum())


def cell_patches(path: Path, sample_id: str, grid: PatchGrid) -> CellPatches:
    """Cells of the segmentation file placed on the grid by the centroid of their polygon.

    A duplicated id keeps its first polygon; an unassigned id (see `_normalise_ids`) is no cell.
    """
    ids, cents = cells_from_segmentation(path, sample_id)
    cells = _Ids()
    lut = cells.lut(ids, grow=True)  # global ids in order of first appearance
    valid = np.flatnonzero(lut >= 0)
    _, first = np.unique(lut[valid], return_index=True)
    cents = cents[valid[first]]
    g = grid.index(cents[:, 0], cents[:, 1])
    return CellPatches(ids=cells, grid=g, row=_lookup(grid.compact, g, -1))


@dataclass
class TranscriptCounts:
    """Counts per (tissue patch, gene) and the filters' tallies, filled batch by batch."""

    acc: np.ndarray  # (tissue patches, capacity) int32; column = gene id in `genes`
    coverage: np.ndarray  # (grid patches,) counted transcripts lying in each grid patch
    genes: _Ids = field(default_factory=_Ids)
    gene_ok: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # per gene id: counted
    n_used: int = 0
    n_low_qv: int = 0
    n_control: int = 0
    n_outside: int = 0
    n_with_cell: int = 0  # cells mode: counted transcripts with a cell id
    n_unmatched: int = 0  # cells mode: ... whose id is not in the segmentation

    def gene_ids(self, batch, keep_controls: bool) -> np.ndarray:
        """Gene id of each transcript (-1: no name); new genes widen the accumulator."""
        idx, dictionary = _encode(batch.column("feature_name"))
        lut = self.genes.lut([as_str(v) if v is not None else "" for v in dictionary], grow=True)
        if len(self.genes.names) > self.gene_ok.size:
            new = self.genes.names[self.gene_ok.size :]
            self.gene_ok = np.concatenate(
                [self.gene_ok, [keep_controls or not is_control(g) for g in new]]
            )
        cap = self.acc.shape[1]
        if len(self.genes.names) > cap:
            cap = max(cap + cap // 4, len(self.genes.names))
            self.acc = np.pad(self.acc, ((0, 0), (0, cap - self.acc.shape[1])))
        return _lookup(lut, idx, -1)

    def counted(self, batch, gid: np.ndarray, has_qv: bool, min_qv: float) -> np.ndarray:
        """The QC filters: a named gene, not a control (unless kept), ``qv >= min_qv``."""
        ok = gid >= 0
        control = ok & ~_lookup(self.gene_ok, gid, True)
        self.n_control += int(control.sum())
        ok &= ~control
        if has_qv:
            qv = _float_col(batch, "qv")
            low = ok & ~(qv >= min_qv)
            self.n_low_qv += int(low.sum())
            ok &= ~low
        return ok

    def cell_rows(self, batch, ok: np.ndarray, cells: CellPatches) -> np.ndarray:
        """Accumulator row of each transcript's cell (-1: no cell, unknown id, off tissue).

        Counted transcripts with a cell id missing from the segmentation are tallied.
        """
        cidx, cdict = _encode(batch.column("cell_id"))
        cnames = _normalise_ids(cdict)
        clut = cells.ids.lut(cnames, grow=False)
        named = np.array([bool(c) for c in cnames] + [False], bool)  # [-1]: null id
        has_id = ok & named[np.where(cidx >= 0, cidx, len(cnames))]
        cid = _lookup(clut, cidx, -1)
        self.n_with_cell += int(has_id.sum())
        self.n_unmatched += int((has_id & (cid < 0)).sum())
        return _lookup(cells.row, cid, -1)


def bin_transcripts(
    pf,
    path: Path,
    sample_id: str,
    grid: PatchGrid,
    cells: CellPatches | None,
    has_qv: bool,
    n_genes_hint: int,
    cfg: TileConfig,
) -> TranscriptCounts:
    """One streaming pass over the transcript table: QC filters, coverage and counts.

    A counted transcript covers the grid patch it lies in, and adds one count to its cell's
    patch (`cells` given: cells mode) or to the patch it lies in (`cells` None). Accumulator
    columns start at `n_genes_hint` + 8 (the h5ad lists the panel) or more, and grow if needed.
    """
    cap = max(INITIAL_GENE_CAPACITY, n_genes_hint + 8)
    n_tissue = int(np.count_nonzero(grid.is_tissue))
    t = TranscriptCounts(
        acc=np.zeros((n_tissue, cap), np.int32), coverage=np.zeros(grid.n, np.int64)
    )
    columns = (
        ["feature_name", "he_x", "he_y"]
        + (["qv"] if has_qv else [])
        + (["cell_id"] if cells is not None else [])
    )
    desc = f"{sample_id} transcripts"
    for batch in _iter_batches(pf, columns, sample_id, path, desc, cfg.progress):
        gid = t.gene_ids(batch, cfg.keep_controls)
        g = grid.index(_float_col(batch, "he_x"), _float_col(batch, "he_y"))
        inside = g >= 0
        t.n_outside += int((~inside).sum())
        ok = t.counted(batch, gid, has_qv, cfg.min_qv)
        # Only counted transcripts make a patch "covered": controls and low-qv ones are noise
        # that also lands outside the capture area's real signal.
        t.coverage += np.bincount(g[inside & ok], minlength=grid.n)
        if cells is not None:
            patch = t.cell_rows(batch, ok, cells)
        else:
            patch = _lookup(grid.compact, g, -1)
        ok &= patch >= 0
        t.n_used += int(ok.sum())
        np.add.at(t.acc.reshape(-1), patch[ok] * t.acc.shape[1] + gid[ok], 1)
    return t


def _check_unmatched(t: TranscriptCounts, sid: str, tpath: Path, seg: Path) -> None:
    """Too many cell ids missing from the segmentation is an error, a few a warning."""
    if not t.n_unmatched:
        return
    frac = t.n_unmatched / max(t.n_with_cell, 1)
    if frac > MAX_UNMATCHED_FRACTION:
        raise MintError(
            f"{sid} {seg}: {t.n_unmatched} of {t.n_with_cell} ({frac:.1%}) cell-assigned "
            f"transcripts of {tpath.name} have a cell_id missing from this segmentation file "
            f"(> {MAX_UNMATCHED_FRACTION:.0%}; mismatched files or id formats?)"
        )
    log.warning(
        "%s %s: %d of %d (%.2f%%) cell-assigned transcripts have a cell_id not in %s; not counted",
        sid,
        tpath,
        t.n_unmatched,
        t.n_with_cell,
        100 * frac,
        seg.name,
    )


def _panel(
    t: TranscriptCounts, h5ad_names: list[str], keep_controls: bool
) -> tuple[list[str], np.ndarray]:
    """(sorted panel, accumulator column of each panel gene or -1).

    Panel = feature names of the table plus the h5ad's (a gene never detected still belongs to
    the panel, with zeros), controls dropped unless kept.
    """
    panel = {gname for gname, ok in zip(t.genes.names, t.gene_ok, strict=True) if ok}
    panel |= {g for g in h5ad_names if keep_controls or not is_control(g)}
    panel_genes = sorted(panel)
    col_of = {gname: i for i, gname in enumerate(t.genes.names)}
    return panel_genes, np.array([col_of.get(gname, -1) for gname in panel_genes], np.int64)


def xenium_targets(
    info: SampleInfo, paths: SamplePaths, wsi: WSI, mask: TissueMask, cfg: TileConfig
) -> Targets:
    """The grid patches that counted transcripts cover and that are tissue, in raster order."""
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

    grid = patch_grid(wsi, mask, cfg)
    has_seg = paths.cell_seg.is_file()
    if use_cells and not has_seg:
        raise MintError(
            f"{sid} {paths.cell_seg}: cell segmentation not found (needed for cell targets; "
            "set tile.xenium_target: transcripts to count transcripts per patch instead)"
        )
    # Transcript targets still count the cells per patch when the segmentation is there.
    cells = cell_patches(paths.cell_seg, sid, grid) if has_seg else None
    h5ad_names = _h5ad_genes(paths.st)
    t = bin_transcripts(
        pf, tpath, sid, grid, cells if use_cells else None, has_qv, len(h5ad_names), cfg
    )
    _check_unmatched(t, sid, tpath, paths.cell_seg)
    if t.n_used == 0:
        raise MintError(
            f"{sid} {tpath}: no transcript left to count (controls dropped, qv >= {cfg.min_qv}, "
            f"inside tissue patches{' and assigned to cells' if use_cells else ''})"
        )
    covered = t.coverage > 0
    keep_grid = np.flatnonzero(covered & grid.is_tissue)  # raster order
    # Reachable in cells mode only: a cell's counts go to its centroid's patch, while coverage
    # follows the transcripts' own positions (which may all be off tissue or off the slide).
    if keep_grid.size == 0:
        raise MintError(f"{sid} {tpath}: no tissue patch overlaps the transcripts")

    panel_genes, src_cols = _panel(t, h5ad_names, cfg.keep_controls)
    rows = grid.compact[keep_grid]
    acc = t.acc

    def expr_rows(start: int, stop: int) -> np.ndarray:
        sub = acc[rows[start:stop]]
        out = np.zeros((len(sub), len(panel_genes)), np.float32)
        have = src_cols >= 0
        out[:, have] = sub[:, src_cols[have]]
        return out

    if cells is not None:
        n_cells = np.bincount(cells.grid[cells.grid >= 0], minlength=grid.n)[keep_grid]
        n_cells = n_cells.astype(np.int32)
    else:
        n_cells = np.full(keep_grid.size, -1, np.int32)
    row, col = keep_grid // grid.nx, keep_grid % grid.nx
    return Targets(
        tops=grid.tops[keep_grid],
        barcodes=[f"{r:03d}x{c:03d}" for r, c in zip(row, col, strict=True)],
        genes=panel_genes,
        expr_rows=expr_rows,
        n_cells=n_cells,
        stats=dict(
            n_spots_total=int(covered.sum()),
            n_dropped_outside=0,
            n_dropped_tissue=int((covered & ~grid.is_tissue).sum()),
            size_src_px=grid.size,
            n_transcripts_used=t.n_used,
            n_transcripts_low_qv=t.n_low_qv,
            n_transcripts_control=t.n_control,
            n_transcripts_outside=t.n_outside,
            n_cells_outside=cells.n_outside if cells is not None else 0,
            n_transcripts_unmatched=t.n_unmatched,
            cell_source="xenium_seg" if cells is not None else "",
        ),
    )
