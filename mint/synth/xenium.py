"""Patch-level synthetic samples (Xenium): cells, transcripts, the cell segmentation, and
HEST's pseudo-spot expression.

A cell's counts are drawn from its own type; ~8% of transcripts lie outside cells and ~1.5% are
control codewords. Transcript tables and segmentations can be written in the other real-file
forms of `mint.synth.hest.FORMAT_VARIANTS`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mint.data.genes import is_control
from mint.io import atomic_path
from mint.synth.specs import PSEUDO_SPOT_UM, GeneModel, SampleSpec, mix_seed
from mint.synth.tissue import SlideModel

#: The control codewords the generator writes (real Xenium panels' naming; which names count as
#: controls is decided by `mint.data.genes.is_control` alone).
CONTROL_PROBES = (
    [f"BLANK_{i:04d}" for i in range(1, 9)]
    + [f"NegControlProbe_{i:05d}" for i in (42, 67, 79, 101, 118)]
    + [f"NegControlCodeword_{i:04d}" for i in range(500, 504)]
    + [f"UnassignedCodeword_{i:04d}" for i in range(1, 4)]
)


_CELL_DEPTH = np.array([110.0, 60.0, 45.0, 40.0, 80.0])  # transcripts per cell by type


def _xenium_id(n: np.ndarray) -> np.ndarray:
    """Xenium-style cell ids: 8 hex digits spelled with letters a-p, then '-1'."""
    out = []
    for v in n.tolist():
        out.append("".join(chr(ord("a") + int(ch, 16)) for ch in f"{v:08x}") + "-1")
    return np.array(out, dtype=object)


def _is_gene(names: np.ndarray) -> np.ndarray:
    """False for control codewords (by `mint.data.genes.is_control`, the one rule)."""
    uniq, inv = np.unique(names.astype(str), return_inverse=True)
    return np.array([not is_control(n) for n in uniq], dtype=bool)[inv.reshape(-1)]


@dataclass
class XeniumData:
    cells: dict[str, np.ndarray]  # x, y (um), type, cell_radius, ...
    cell_ids: np.ndarray
    transcripts: pd.DataFrame


def xenium_data(spec: SampleSpec, model: SlideModel, gm: GeneModel, seed: int) -> XeniumData:
    rng = np.random.default_rng([seed, 3, mix_seed(seed, spec.slide_seed)])
    cells = model.cells()
    n = len(cells["x"])
    cell_ids = _xenium_id(rng.choice(2**28, size=n, replace=False) + 2**28)
    panel = gm.xenium
    rates = gm.rates(panel)  # (G, K)
    ctype = cells["type"].astype(np.int64)
    mu = (_CELL_DEPTH[ctype] * rng.uniform(0.7, 1.3, n))[:, None] * rates.T[ctype]
    counts = rng.poisson(mu)  # (n, G)
    ci, gi = np.nonzero(counts)
    reps = counts[ci, gi]
    ci, gi = np.repeat(ci, reps), np.repeat(gi, reps)
    t = len(ci)
    r = cells["cell_radius"][ci] * np.sqrt(rng.random(t))
    a = rng.random(t) * 2 * np.pi
    tx = cells["x"][ci] + r * np.cos(a)
    ty = cells["y"][ci] + r * np.sin(a)
    names = np.array(panel, dtype=object)[gi]
    cid = cell_ids[ci]
    # transcripts outside any cell: ~8% of the assigned ones, following the local cell type
    n_out = int(0.08 * t)
    ox = rng.uniform(0, spec.width_um, n_out * 2)
    oy = rng.uniform(0, spec.height_um, n_out * 2)
    ok = model.tissue_points(ox, oy)
    ox, oy = ox[ok][:n_out], oy[ok][:n_out]
    otype = model.types_points(ox, oy).astype(np.int64)
    cum = np.cumsum(rates, axis=0)  # (G, K)
    u = rng.random(len(ox))
    ogi = np.minimum((cum[:, otype] < u[None, :]).sum(0), len(panel) - 1)
    # control probes: ~1.5%, anywhere on the slide, half of them inside cells
    n_ctrl = max(20, int(0.015 * t))
    cx = rng.uniform(0, spec.width_um, n_ctrl)
    cy = rng.uniform(0, spec.height_um, n_ctrl)
    cnames = np.array(CONTROL_PROBES, dtype=object)[rng.integers(0, len(CONTROL_PROBES), n_ctrl)]
    in_cell = rng.random(n_ctrl) < 0.5
    pick = rng.integers(0, max(n, 1), n_ctrl)
    if n:
        cx = np.where(in_cell, cells["x"][pick], cx)
        cy = np.where(in_cell, cells["y"][pick], cy)
    ccid = np.where(in_cell & (n > 0), cell_ids[pick] if n else "UNASSIGNED", "UNASSIGNED")

    all_x = np.concatenate([tx, ox, cx])
    all_y = np.concatenate([ty, oy, cy])
    feat = np.concatenate([names, np.array(panel, dtype=object)[ogi], cnames])
    cell_col = np.concatenate([cid, np.full(len(ox), "UNASSIGNED", dtype=object), ccid])
    m = len(all_x)
    qv = np.where(rng.random(m) < 0.1, rng.uniform(5, 20, m), rng.uniform(20, 40, m))
    order = rng.permutation(m)
    ps = spec.pixel_size_um
    df = pd.DataFrame(
        {
            "transcript_id": np.arange(m, dtype=np.uint64) + 281474976710656,
            "cell_id": cell_col[order].astype(str),
            "overlaps_nucleus": np.zeros(m, np.uint8),
            "feature_name": feat[order].astype(str),
            "is_gene": _is_gene(feat[order]),
            # DAPI frame (um): a small rigid offset from the H&E frame, as after registration
            "x_location": (all_x[order] + 12.5).astype(np.float32),
            "y_location": (all_y[order] - 7.25).astype(np.float32),
            "z_location": rng.uniform(8, 20, m).astype(np.float32),
            "qv": qv[order].astype(np.float32),
            "he_x": (all_x[order] / ps).astype(np.float64),
            "he_y": (all_y[order] / ps).astype(np.float64),
        }
    )
    return XeniumData(cells=cells, cell_ids=cell_ids, transcripts=df)


def pseudo_spots(tr: pd.DataFrame, pixel_size_um: float):
    """HEST-style pseudo-spots: all transcripts (controls, any qv) on a 100 um grid, empties dropped."""
    step = PSEUDO_SPOT_UM / pixel_size_um
    x, y = tr["he_x"].to_numpy(), tr["he_y"].to_numpy()
    x0, y0 = x.min(), y.min()
    col = np.floor((x - x0) / step).astype(np.int64)
    row = np.floor((y - y0) / step).astype(np.int64)
    feats, fidx = np.unique(tr["feature_name"].to_numpy().astype(str), return_inverse=True)
    ncol = int(col.max()) + 1
    spot = row * ncol + col
    spots, sidx = np.unique(spot, return_inverse=True)
    mat = np.zeros((len(spots), len(feats)), np.float32)
    np.add.at(mat, (sidx, fidx), 1.0)
    srow, scol = spots // ncol, spots % ncol
    barcodes = [f"{r:03d}x{c:03d}" for r, c in zip(srow, scol, strict=True)]
    spatial = np.stack([x0 + (scol + 0.5) * step, y0 + (srow + 0.5) * step], 1)
    obs = pd.DataFrame(
        {"in_tissue": np.ones(len(spots), np.int64), "array_row": srow, "array_col": scol},
        index=pd.Index(barcodes),
    )
    return obs, spatial, mat, list(feats)


def write_cell_seg(
    path: Path, spec: SampleSpec, xd: XeniumData, variants: set[str] = frozenset()
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import shapely

    c = xd.cells
    n = len(c["x"])
    nv = 16
    ang = np.linspace(0, 2 * np.pi, nv, endpoint=False)
    # slightly irregular cell outlines around each nucleus, in H&E level-0 pixels
    rng = np.random.default_rng(spec.slide_seed)
    rad = c["cell_radius"][:, None] * (0.9 + 0.2 * rng.random((n, nv)))
    vx = (c["x"][:, None] + rad * np.cos(ang)) / spec.pixel_size_um
    vy = (c["y"][:, None] + rad * np.sin(ang)) / spec.pixel_size_um
    ring = np.stack([vx, vy], -1)
    ring = np.concatenate([ring, ring[:, :1]], 1).reshape(-1, 2)
    offsets_ring = np.arange(0, (n + 1) * (nv + 1), nv + 1)
    offsets_poly = np.arange(n + 1)
    geoms = shapely.from_ragged_array(
        shapely.GeometryType.POLYGON, ring, (offsets_ring, offsets_poly)
    )
    wkb = shapely.to_wkb(geoms)
    geo_meta = {
        "version": "1.0.0",
        "primary_column": "geometry",
        "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["Polygon"]}},
    }
    if "int_cell_ids" in variants:
        ids = list(range(n))
    elif "bytes_names" in variants:
        ids = [c.encode() for c in xd.cell_ids.astype(str)]
    else:
        ids = list(xd.cell_ids.astype(str))
    if "seg_id_column" in variants:
        df = pd.DataFrame({"cell_id": ids, "geometry": list(wkb)})
        table = pa.Table.from_pandas(df, preserve_index=False)
    else:
        # geopandas writes the GeoDataFrame's unnamed index (HEST: the cell id) as the pandas
        # index column __index_level_0__
        df = pd.DataFrame({"geometry": list(wkb)}, index=pd.Index(ids))
        table = pa.Table.from_pandas(df, preserve_index=True)
    meta = dict(table.schema.metadata or {})
    meta[b"geo"] = json.dumps(geo_meta).encode()
    table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def transcript_table(df: pd.DataFrame, xd: XeniumData, variants: set[str]):
    """The transcript table in the requested real-file form (a pyarrow Table)."""
    import pyarrow as pa

    df = df.copy()
    unassigned = df["cell_id"].to_numpy() == "UNASSIGNED"
    if "int_cell_ids" in variants:
        pos = {c: i for i, c in enumerate(xd.cell_ids.astype(str))}
        df["cell_id"] = np.array(
            [-1 if u else pos[c] for c, u in zip(df["cell_id"], unassigned, strict=True)]
        )
    elif "bytes_names" in variants:
        df["cell_id"] = [c.encode() for c in df["cell_id"]]
    if "bytes_names" in variants:
        df["feature_name"] = [g.encode() for g in df["feature_name"]]
    if "null_ids_geometry" in variants:
        df["cell_id"] = df["cell_id"].astype(object).where(~unassigned, None)
    table = pa.Table.from_pandas(df, preserve_index=False)
    if "null_ids_geometry" in variants:
        import shapely

        pts = shapely.points(df["he_x"].to_numpy(), df["he_y"].to_numpy())
        table = table.append_column("geometry", pa.array(list(shapely.to_wkb(pts)), pa.binary()))
        geo = {
            "version": "1.0.0",
            "primary_column": "geometry",
            "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["Point"]}},
        }
        meta = dict(table.schema.metadata or {})
        meta[b"geo"] = json.dumps(geo).encode()
        table = table.replace_schema_metadata(meta)
    return table
