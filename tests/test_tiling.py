"""`mint tile` against ground truth: spot centring, Xenium binning, bad input, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
import shapely
from alignment import PATCH, TARGET_UM, offset_px, render_um, truth_patch

from mint.cli import main
from mint.data import spots, xenium
from mint.data.tiling import SampleInfo, SamplePaths, TileConfig, tile_sample
from mint.errors import MintError
from mint.synth.tiff import write_pyramidal_tiff_array

CFG = TileConfig(progress=False)


# ------------------------------------------------------------------------------------ helpers
def make_slide(path: Path, ps: float, w_um: float, h_um: float) -> np.ndarray:
    img = render_um(
        np.arange(int(h_um / ps)) * ps + ps / 2, np.arange(int(w_um / ps)) * ps + ps / 2
    )
    # Wrong embedded resolution on purpose: the metadata's pixel size must win.
    write_pyramidal_tiff_array(path, img, pixel_size_um=1.0 if ps != 1.0 else 0.3)
    return img


def write_geojson(path: Path, polygons: list[list[tuple[float, float]]]) -> None:
    feats = [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [p]}}
        for p in polygons
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))


def box(x0, y0, x1, y1):
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]


def write_h5ad(path: Path, barcodes, centres, counts, genes) -> None:
    a = ad.AnnData(
        X=sp.csr_matrix(np.asarray(counts, np.float32)),
        obs=pd.DataFrame(index=pd.Index(barcodes)),
        var=pd.DataFrame(index=pd.Index(genes)),
    )
    a.obsm["spatial"] = np.asarray(centres, np.float64)
    path.parent.mkdir(parents=True, exist_ok=True)
    a.write_h5ad(path)


def read_tiles(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        out = {k: f[k][()] for k in f}
        out["attrs"] = dict(f.attrs)
        out["dtypes"] = {k: f[k].dtype for k in f}
    out["barcodes"] = [b[0].decode() for b in out["barcode"]]
    out["gene_names"] = [g.decode() for g in out["genes"]]
    return out


def info(sid, tech, ps, level, modality) -> SampleInfo:
    return SampleInfo(sid, tech, ps, level, modality, organ="Bowel", oncotree_code="COAD")


# --------------------------------------------------------------------------------- spot level
@pytest.mark.parametrize("ps", [0.2125, 0.25, 0.5, 1.0, 1.111])
def test_spot_patches_are_centred_and_targets_aligned(tmp_path, ps):
    """Arbitrary fractional spot centres; truth cropped at the real centre, not a snapped one."""
    sid = f"SPOT{int(ps * 10000)}"
    w_um, h_um = 360.0, 300.0
    paths = SamplePaths.from_hest_dir(tmp_path, sid)
    paths.wsi.parent.mkdir(parents=True)
    img = make_slide(paths.wsi, ps, w_um, h_um)
    H = img.shape[0]
    # Tissue everywhere except the right strip x > 250 um.
    write_geojson(paths.contours, [box(0, 0, 250 / ps, H)])
    rng = np.random.default_rng(0)
    inside = [(rng.uniform(60, 190), rng.uniform(60, 240)) for _ in range(7)]  # um, tissue
    no_tissue = [(320.0, 150.0)]  # patch fully right of 250 um: 0 % tissue
    outside = [(-5.0, 100.0), (w_um + 1, 50.0), (100.0, h_um + 30)]
    c_um = np.array(inside + no_tissue + outside)
    centres = c_um / ps  # fractional level-0 centres, not snapped to the pixel grid
    n = len(centres)
    barcodes = [f"AC{i:04d}-1" for i in range(n)]
    genes = ["ACTB", "EPCAM", "VIM", "PTPRC"]
    counts = rng.poisson(5, (n, len(genes)))
    write_h5ad(paths.st, barcodes, centres, counts, genes)
    out = tmp_path / "tiles" / f"{sid}.h5"
    attrs = tile_sample(info(sid, "Visium", ps, "spot", "visium"), paths, out, CFG)

    t = read_tiles(out)
    size_src = round(PATCH * TARGET_UM / ps)
    side = PATCH * TARGET_UM / ps
    assert attrs["size_src_px"] == size_src
    assert attrs["size_src_exact_px"] == pytest.approx(side)
    a = t["attrs"]
    assert (a["n_spots_total"], a["n_dropped_outside"], a["n_dropped_tissue"]) == (n, 3, 1)
    assert a["pixel_size_um"] == ps and a["target_pixel_size_um"] == 0.5
    assert (a["level"], a["modality"], a["technology"], a["sample_id"]) == (
        "spot",
        "visium",
        "Visium",
        sid,
    )
    assert t["img"].shape == (7, PATCH, PATCH, 3) and t["dtypes"]["img"] == np.uint8
    assert t["coords"].shape == (7, 2) and t["dtypes"]["coords"] == np.int64
    assert t["barcode"].shape == (7, 1) and t["dtypes"]["barcode"].kind == "S"
    assert t["dtypes"]["expr"] == np.float32 and t["gene_names"] == genes
    assert "n_cells" not in t
    assert sorted(t["barcodes"]) == barcodes[:7]
    for k, bc in enumerate(t["barcodes"]):
        i = barcodes.index(bc)
        np.testing.assert_array_equal(t["expr"][k], counts[i])
        # coords: HEST's integer level-0 top-left of the exact box
        np.testing.assert_array_equal(t["coords"][k], np.round(centres[i] - side / 2))
        # Physical truth: the texture on the 0.5 um grid centred on the real (fractional) spot.
        patch = t["img"][k]
        truth = truth_patch(*(centres[i] * ps))
        off, mad = offset_px(truth, patch), np.abs(patch.astype(int) - truth).mean()
        # <= 1 px is the requirement; measured <= 0.1 (rounding the centre: up to 2.1 px)
        assert off <= 0.5 and mad < 2.0, (bc, off, mad)


def _visium_sample(tmp_path: Path, sid: str, ps: float = 1.0, n: int = 6):
    paths = SamplePaths.from_hest_dir(tmp_path, sid)
    paths.wsi.parent.mkdir(parents=True, exist_ok=True)
    make_slide(paths.wsi, ps, 300, 300)
    centres = np.column_stack([np.linspace(60, 240, n), np.full(n, 150.0)]) / ps
    barcodes = [f"B{i}-1" for i in range(n)]
    write_h5ad(paths.st, barcodes, centres, np.arange(n * 3).reshape(n, 3), ["A", "B", "C"])
    return paths


def test_threads_give_identical_output(tmp_path, caplog):
    """One and two reader threads write the same tile file, and the log says where the pixels
    come from (a slide that misses the direct reader is only slower, so it must be visible:
    every HEST slide did until LZW was decoded)."""
    paths = _visium_sample(tmp_path, "THR")
    one, two = tmp_path / "one.h5", tmp_path / "two.h5"
    i = info("THR", "Visium", 1.0, "spot", "visium")
    with caplog.at_level("INFO", logger="mint.data.tiling"):
        tile_sample(i, paths, one, TileConfig(progress=False, threads=1, batch=4))
    assert "pixels from the TIFF's tiles (LZW 256x256 tiles, horizontal predictor)" in caplog.text
    tile_sample(i, paths, two, TileConfig(progress=False, threads=2, batch=4))
    a, b = read_tiles(one), read_tiles(two)
    for k in ("img", "coords", "barcode", "expr"):
        np.testing.assert_array_equal(a[k], b[k])
    assert a["attrs"]["tissue_source"] == "otsu"  # no contours file: thumbnail mask


@pytest.mark.filterwarnings("ignore:Observation names are not unique")
def test_spot_bad_inputs_leave_no_file(tmp_path):
    i = info("BAD", "Visium", 1.0, "spot", "visium")
    paths = _visium_sample(tmp_path, "BAD")
    out = tmp_path / "out" / "BAD.h5"

    def fails(match, inf=i, p=paths):
        with pytest.raises(MintError, match=match):
            tile_sample(inf, p, out, CFG)
        assert not out.exists()
        assert not list(out.parent.glob("*")) if out.parent.exists() else True

    # every spot outside the slide
    write_h5ad(paths.st, ["a-1", "b-1"], [[-10, 5], [5000, 5]], np.ones((2, 3)), ["A", "B", "C"])
    fails(r"BAD .*BAD\.h5ad: no spot kept \(2 outside the slide")
    # duplicate barcodes
    write_h5ad(paths.st, ["a-1", "a-1"], [[100, 100], [120, 100]], np.ones((2, 3)), ["A", "B", "C"])
    fails(r"BAD .*duplicate spot barcodes")
    # spatial coordinates missing
    a = ad.AnnData(X=np.ones((2, 3), np.float32), obs=pd.DataFrame(index=["a-1", "b-1"]))
    a.write_h5ad(paths.st)
    fails(r"BAD .*obsm\['spatial'\].*missing")
    # barcodes of the spot table do not match the expression rows
    a.obsm["spatial"] = pd.DataFrame({"x": [100.0, 120.0], "y": [100.0, 100.0]}, index=a.obs_names)
    a.write_h5ad(paths.st)
    with h5py.File(paths.st, "r+") as f:
        f["obsm/spatial/_index"][1] = "zz-1"
    fails(r"BAD .*barcodes of an obsm entry do not match obs_names")
    # corrupt slide
    _visium_sample(tmp_path, "BAD")
    paths.wsi.write_bytes(paths.wsi.read_bytes()[:300])
    fails(r"BAD .*BAD\.tif: cannot open slide")
    # missing / bad pixel size
    for bad in (float("nan"), 0.0, -1.0):
        fails(
            r"BAD metadata: pixel_size_um_estimated",
            inf=info("BAD", "Visium", bad, "spot", "visium"),
        )


def test_bad_expression_and_centres_fail_clearly(tmp_path, caplog):
    """NaN / negative counts and NaN centres: one-line errors naming sample and h5ad."""
    i = info("EXPR", "Visium", 1.0, "spot", "visium")
    paths = _visium_sample(tmp_path, "EXPR")
    out = tmp_path / "out" / "EXPR.h5"
    bc, genes = ["a-1", "b-1"], ["A", "B", "C"]
    good = [[100.0, 100.0], [150.0, 150.0]]
    cases = [
        (good, [[1, np.nan, 0], [0, 2, 1]], r"EXPR .*EXPR\.h5ad: X holds 1 NaN or infinite"),
        (good, [[1, np.inf, 0], [0, 2, 1]], r"EXPR .*EXPR\.h5ad: X holds 1 NaN or infinite"),
        (good, [[1, -3, 0], [0, 2, 1]], r"EXPR .*EXPR\.h5ad: X holds 1 negative values"),
        (
            [[100.0, np.nan], [150.0, 150.0]],
            [[1, 1, 0], [0, 2, 1]],
            r"EXPR .*EXPR\.h5ad: 1 of 2 spot centres .* NaN or infinite \(e\.g\. 'a-1'\)",
        ),
    ]
    for centres, counts, match in cases:
        write_h5ad(paths.st, bc, centres, counts, genes)
        with pytest.raises(MintError, match=match) as err:
            tile_sample(i, paths, out, CFG)
        assert "\n" not in str(err.value) and "outside the slide" not in str(err.value)
        assert not out.exists()
    # Dense X too (not only the sparse .data path).
    a = ad.AnnData(
        X=np.array([[1.0, np.nan, 0], [0, 2, 1]], np.float32), obs=pd.DataFrame(index=bc)
    )
    a.obsm["spatial"] = np.array(good)
    a.write_h5ad(paths.st)
    with pytest.raises(MintError, match=r"EXPR .*X holds 1 NaN"):
        tile_sample(i, paths, out, CFG)
    # Non-integer values (normalised, not raw counts): a warning, the tiles are still written.
    write_h5ad(paths.st, bc, good, [[1.5, 1, 0], [0, 2, 1]], genes)
    with caplog.at_level("WARNING", logger="mint.data.spots"):
        tile_sample(i, paths, out, CFG)
    assert "not integer-valued" in caplog.text and out.exists()


@pytest.mark.filterwarnings("ignore:Variable names are not unique")
@pytest.mark.parametrize("sparse", [True, False])
def test_duplicate_gene_symbols_are_summed(tmp_path, caplog, sparse):
    paths = _visium_sample(tmp_path, "DUP")
    genes = ["A", "B", "A", "C", "B", "A"]
    counts = np.array([[1, 2, 3, 4, 5, 6], [10, 20, 30, 40, 50, 60]], np.float32)
    a = ad.AnnData(
        X=sp.csr_matrix(counts) if sparse else counts,
        obs=pd.DataFrame(index=["a-1", "b-1"]),
        var=pd.DataFrame(index=pd.Index(genes)),
    )
    a.obsm["spatial"] = np.array([[100.0, 100.0], [150.0, 150.0]])
    a.write_h5ad(paths.st)
    _, _, x, names, n_dup = spots.read_spots(paths.st, "DUP")
    assert names == ["A", "B", "C"] and n_dup == 3 and sp.issparse(x) == sparse
    want = np.array([[10, 7, 4], [100, 70, 40]], np.float32)
    np.testing.assert_array_equal(x.toarray() if sparse else x, want)
    out = tmp_path / "DUP.h5"
    with caplog.at_level("WARNING", logger="mint.data.spots"):
        tile_sample(info("DUP", "Visium", 1.0, "spot", "visium"), paths, out, CFG)
    assert "3 duplicate gene symbols" in caplog.text and "summed" in caplog.text
    t = read_tiles(out)
    assert t["gene_names"] == ["A", "B", "C"] and t["attrs"]["n_genes_duplicate"] == 3
    rows = {bc: k for k, bc in enumerate(t["barcodes"])}
    for j, bc in enumerate(["a-1", "b-1"]):
        np.testing.assert_array_equal(t["expr"][rows[bc]], want[j])


# ---------------------------------------------------------------------------- Xenium patches
PS_X = 0.25
S_X = round(PATCH * TARGET_UM / PS_X)  # 448 level-0 px = 112 um
GENES_X = [f"G{i}" for i in range(12)]
CONTROLS = [
    "BLANK_0001",
    "NegControlProbe_00042",
    "antisense_ACTB",
    "DeprecatedCodeword_0001",
    "UnassignedCodeword_0002",
    "NegControlCodeword_0500",
]


def _xenium_tables(seed: int = 0):
    """Cells (square polygons) and transcripts on a 400 x 300 um slide at 0.25 um/px.

    Includes a cell whose centroid is exactly on a vertical patch border and one on a horizontal
    border; transcripts spread around each cell (so border cells put transcripts in two patches),
    unassigned transcripts, controls and low-qv transcripts.
    """
    rng = np.random.default_rng(seed)
    W, H = int(400 / PS_X), int(300 / PS_X)
    n = 60
    cx = rng.uniform(30, W - 30, n)
    cy = rng.uniform(30, 2 * S_X - 30, n)  # rows 0-1 only; row 2 stays empty (not covered)
    cx[0], cy[0] = S_X, 200.0  # on the border between patch columns 0 and 1
    cx[1], cy[1] = 700.0, S_X  # on the border between rows 0 and 1
    half = rng.uniform(12, 25, n)
    polys = [
        shapely.Polygon(box(x - h, y - h, x + h, y + h))
        for x, y, h in zip(cx, cy, half, strict=True)
    ]
    ids = [f"cell{i:03d}-1" for i in range(n)]
    rows = []
    for i in range(n):
        for _ in range(rng.integers(5, 30)):
            g = rng.choice(GENES_X[:10])  # G10, G11 are panel genes never detected
            rows.append(
                (
                    ids[i],
                    g,
                    cx[i] + rng.uniform(-half[i], half[i]),
                    cy[i] + rng.uniform(-half[i], half[i]),
                    rng.uniform(20, 40),
                )
            )
    for _ in range(80):  # unassigned
        rows.append(
            (
                "UNASSIGNED",
                rng.choice(GENES_X[:10]),
                rng.uniform(0, W),
                rng.uniform(0, 2 * S_X),
                rng.uniform(20, 40),
            )
        )
    for _ in range(60):  # controls, half inside cells
        i = rng.integers(n)
        cid = ids[i] if rng.random() < 0.5 else "UNASSIGNED"
        rows.append((cid, rng.choice(CONTROLS), cx[i] + 1, cy[i] + 1, rng.uniform(20, 40)))
    for _ in range(70):  # low quality, inside cells
        i = rng.integers(n)
        rows.append((ids[i], rng.choice(GENES_X[:10]), cx[i], cy[i] - 1, rng.uniform(0, 19.9)))
    tx = pd.DataFrame(rows, columns=["cell_id", "feature_name", "he_x", "he_y", "qv"])
    tx = tx.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    tx["x_location"] = tx["he_x"] * PS_X
    tx["y_location"] = tx["he_y"] * PS_X
    return ids, polys, tx, (W, H)


def _write_xenium(tmp_path: Path, sid: str, with_seg: bool = True, tx_hook=None):
    ids, polys, tx, (W, H) = _xenium_tables()
    paths = SamplePaths.from_hest_dir(tmp_path, sid)
    paths.wsi.parent.mkdir(parents=True, exist_ok=True)
    make_slide(paths.wsi, PS_X, W * PS_X, H * PS_X)
    # Tissue everywhere except patch (col 3, row 0).
    write_geojson(paths.contours, [box(0, S_X, W, H), box(0, 0, 3 * S_X, S_X)])
    if tx_hook:
        tx = tx_hook(tx)
    paths.transcripts.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.Table.from_pandas(tx, preserve_index=False), paths.transcripts, row_group_size=97
    )
    # HEST's Xenium h5ad (pseudo-spots) lists the whole panel, controls included.
    write_h5ad(
        paths.st,
        ["000x000"],
        [[1.0, 1.0]],
        np.zeros((1, len(GENES_X + CONTROLS))),
        GENES_X + CONTROLS,
    )
    if with_seg:
        paths.cell_seg.parent.mkdir(parents=True, exist_ok=True)
        # geopandas' layout: WKB geometry + the cell id as the pandas index column
        table = pa.table(
            {
                "geometry": pa.array(list(shapely.to_wkb(polys)), pa.binary()),
                "__index_level_0__": ids,
            }
        )
        pq.write_table(table, paths.cell_seg)
    return paths, ids, polys, tx, (W, H)


def _brute_force(ids, cents, tx, W, H, mode):
    """{(row, col): (counts over GENES_X, n_cells)} for kept patches, computed naively."""
    ncol, nrow = int(np.ceil(W / S_X)), int(np.ceil(H / S_X))
    covered = set()  # only counted transcripts (panel genes, qv >= 20) cover a patch
    for x, y, g, qv in zip(tx["he_x"], tx["he_y"], tx["feature_name"], tx["qv"], strict=True):
        if g in GENES_X and qv >= 20:
            covered.add((int(y // S_X), int(x // S_X)))
    keep = {p for p in covered if p != (0, 3)}  # (0, 3) is not tissue
    cell_patch = {
        cid: (int(c[1] // S_X), int(c[0] // S_X)) for cid, c in zip(ids, cents, strict=True)
    }
    out = {p: [np.zeros(len(GENES_X)), 0] for p in keep}
    for p in cell_patch.values():
        if p in out:
            out[p][1] += 1
    for cid, g, x, y, qv in zip(
        tx["cell_id"], tx["feature_name"], tx["he_x"], tx["he_y"], tx["qv"], strict=True
    ):
        if g not in GENES_X or qv < 20:
            continue
        if mode == "cells":
            p = cell_patch.get(cid)
        else:
            p = (int(y // S_X), int(x // S_X))
        if p in out:
            out[p][0][GENES_X.index(g)] += 1
    assert len(keep) < nrow * ncol
    return out


@pytest.mark.parametrize("mode", ["cells", "transcripts"])
def test_xenium_counts_equal_brute_force(tmp_path, monkeypatch, mode):
    monkeypatch.setattr(xenium, "TRANSCRIPT_BATCH_ROWS", 256)  # many batches
    paths, ids, polys, tx, (W, H) = _write_xenium(tmp_path, "XEN")
    out = tmp_path / "XEN.h5"
    tile_sample(
        info("XEN", "Xenium", PS_X, "patch", "xenium"),
        paths,
        out,
        TileConfig(progress=False, xenium_target=mode),
    )
    t = read_tiles(out)
    assert t["gene_names"] == sorted(GENES_X)  # panel from the table, no controls, incl. G10/G11
    cents = shapely.get_coordinates(shapely.centroid(polys))
    assert cents[0, 0] == S_X and cents[1, 1] == S_X  # the border cells really are on borders
    truth = _brute_force(ids, cents, tx, W, H, mode)
    got = {}
    for k, bc in enumerate(t["barcodes"]):
        r, c = (int(v) for v in bc.split("x"))
        np.testing.assert_array_equal(t["coords"][k], [c * S_X, r * S_X])
        got[(r, c)] = (t["expr"][k], t["n_cells"][k])
    assert set(got) == set(truth)
    order = [GENES_X.index(g) for g in t["gene_names"]]
    for p, (counts, n_cells) in truth.items():
        np.testing.assert_array_equal(got[p][0], counts[order], err_msg=str(p))
        assert got[p][1] == n_cells
    a = t["attrs"]
    assert a["level"] == "patch" and a["modality"] == "xenium" and a["xenium_target"] == mode
    assert a["n_dropped_tissue"] == 1 and a["n_spots_total"] == len(truth) + 1
    assert a["n_transcripts_control"] == tx["feature_name"].isin(CONTROLS).sum()
    # the border cell: its counts appear in exactly one patch (cells mode)
    if mode == "cells":
        total = sum(v[0].sum() for v in truth.values())
        assert t["expr"].sum() == total
    # images are the slide at 0.5 um/px
    assert t["img"].shape[1:] == (PATCH, PATCH, 3)


@pytest.mark.parametrize("column", ["feature_name", "cell_id"])
def test_xenium_batch_without_any_gene_or_cell_id(tmp_path, monkeypatch, column):
    """A record batch whose gene names (or cell ids) are all null counts nothing, no crash.

    Such a batch has an empty dictionary, so nothing can be looked up in it (the old code
    raised IndexError). The same transcripts without the null rows give the same tiles.
    """
    monkeypatch.setattr(xenium, "TRANSCRIPT_BATCH_ROWS", 256)

    def with_null_head(tx):
        head = tx.iloc[:300].copy()  # covers the first batch whole
        head[column] = None
        return pd.concat([head, tx], ignore_index=True)

    out = {}
    for name, hook in (("plain", None), ("null", with_null_head)):
        paths, *_ = _write_xenium(tmp_path / name, "XNULL", tx_hook=hook)
        out[name] = tmp_path / name / "XNULL.h5"
        tile_sample(info("XNULL", "Xenium", PS_X, "patch", "xenium"), paths, out[name], CFG)
    plain, null = read_tiles(out["plain"]), read_tiles(out["null"])
    assert null["barcodes"] == plain["barcodes"] and null["gene_names"] == plain["gene_names"]
    np.testing.assert_array_equal(null["expr"], plain["expr"])
    assert null["attrs"]["n_transcripts_used"] == plain["attrs"]["n_transcripts_used"]


def test_xenium_old_style_table_int_ids_bytes_genes(tmp_path, monkeypatch):
    """HEST variants: integer cell ids (-1 = none) and bytes feature names in the table, the
    segmentation's integer cell ids stored as the pandas index (``__index_level_0__``).

    Without the h5ad the panel comes from the table alone (G10, G11 never detected: absent),
    and the accumulator has to grow while new genes appear batch after batch.
    """
    monkeypatch.setattr(xenium, "TRANSCRIPT_BATCH_ROWS", 300)
    monkeypatch.setattr(xenium, "INITIAL_GENE_CAPACITY", 2)

    def old_style(tx):
        tx = tx.copy()
        tx["cell_id"] = [-1 if c == "UNASSIGNED" else int(c[4:7]) for c in tx["cell_id"]]
        tx["feature_name"] = [g.encode() for g in tx["feature_name"]]
        return tx

    paths, ids, polys, tx, (W, H) = _write_xenium(tmp_path, "XOLD", tx_hook=old_style)
    table = pa.table(
        {
            "geometry": pa.array(list(shapely.to_wkb(polys)), pa.binary()),
            "__index_level_0__": pa.array([int(c[4:7]) for c in ids], pa.int64()),
        }
    )
    pq.write_table(table, paths.cell_seg)
    paths.st.unlink()
    out = tmp_path / "XOLD.h5"
    tile_sample(info("XOLD", "Xenium", PS_X, "patch", "xenium"), paths, out, CFG)
    t = read_tiles(out)
    assert t["attrs"]["cell_source"] == "xenium_seg"
    assert t["attrs"]["n_transcripts_unmatched"] == 0
    tx = tx.copy()
    tx["feature_name"] = [g.decode() for g in tx["feature_name"]]
    cents = shapely.get_coordinates(shapely.centroid(polys))
    truth = _brute_force(list(range(len(ids))), cents, tx, W, H, "cells")
    got = {tuple(int(v) for v in bc.split("x")): k for k, bc in enumerate(t["barcodes"])}
    assert set(got) == set(truth)
    assert t["gene_names"] == sorted(GENES_X[:10])
    order = [GENES_X.index(g) for g in t["gene_names"]]
    for p, (counts, n_cells) in truth.items():
        np.testing.assert_array_equal(t["expr"][got[p]], counts[order])
        assert t["n_cells"][got[p]] == n_cells


def _counted(tx) -> pd.Series:
    """Transcripts that count in cells mode when assigned: panel genes with qv >= 20."""
    return tx["feature_name"].isin(GENES_X) & (tx["qv"] >= 20)


@pytest.mark.parametrize("fraction", [0.02, 0.2])
def test_xenium_unmatched_cell_ids(tmp_path, caplog, fraction):
    """Transcripts whose cell is missing from xenium_seg: counted; > 5 % is an error."""

    def orphan(tx):
        tx = tx.copy()
        assigned = np.flatnonzero((tx["cell_id"] != "UNASSIGNED") & _counted(tx))
        n = int(round(fraction * len(assigned)))
        tx.loc[assigned[:n], "cell_id"] = [f"ghost{k}-1" for k in range(n)]
        return tx

    sid = f"XUN{int(fraction * 100)}"
    paths, ids, polys, tx, (W, H) = _write_xenium(tmp_path, sid, tx_hook=orphan)
    n_assigned = int(((tx["cell_id"] != "UNASSIGNED") & _counted(tx)).sum())
    n_ghost = int((tx["cell_id"].str.startswith("ghost") & _counted(tx)).sum())
    out = tmp_path / "o" / f"{sid}.h5"
    i = info(sid, "Xenium", PS_X, "patch", "xenium")
    if fraction > 0.05:
        match = rf"{sid} .*{sid}_xenium_cell_seg\.parquet: {n_ghost} of {n_assigned} .*missing"
        with pytest.raises(MintError, match=match):
            tile_sample(i, paths, out, CFG)
        assert not out.exists() and not list(out.parent.glob("*"))
        return
    with caplog.at_level("WARNING", logger="mint.data.xenium"):
        tile_sample(i, paths, out, CFG)
    assert f"{n_ghost} of {n_assigned}" in caplog.text
    t = read_tiles(out)
    assert t["attrs"]["n_transcripts_unmatched"] == n_ghost > 0
    cents = shapely.get_coordinates(shapely.centroid(polys))
    truth = _brute_force(ids, cents, tx, W, H, "cells")  # ghosts belong to no cell
    assert t["expr"].sum() == sum(v[0].sum() for v in truth.values())


def test_xenium_numeric_ids_and_geoparquet_geometry_column(tmp_path):
    """Seg ids stored as floats (1.0), transcript ids as ints; polygons in 'combined'."""

    def int_ids(tx):
        tx = tx.copy()
        tx["cell_id"] = [-1 if c == "UNASSIGNED" else int(c[4:7]) for c in tx["cell_id"]]
        return tx

    paths, ids, polys, tx, (W, H) = _write_xenium(tmp_path, "XNUM", tx_hook=int_ids)
    geo = {
        "version": "1.0.0",
        "primary_column": "combined",
        "columns": {"combined": {"encoding": "WKB", "geometry_types": ["Polygon"]}},
    }
    table = pa.table(
        {
            "combined": pa.array(list(shapely.to_wkb(polys)), pa.binary()),
            "geometry": pa.array([b"not wkb"] * len(polys), pa.binary()),  # a decoy
            "cell_id": pa.array([float(int(c[4:7])) for c in ids], pa.float64()),
        }
    ).replace_schema_metadata({b"geo": json.dumps(geo).encode()})
    pq.write_table(table, paths.cell_seg)
    out = tmp_path / "XNUM.h5"
    tile_sample(info("XNUM", "Xenium", PS_X, "patch", "xenium"), paths, out, CFG)
    t = read_tiles(out)
    assert t["attrs"]["cell_source"] == "xenium_seg"
    assert t["attrs"]["n_transcripts_unmatched"] == 0
    cents = shapely.get_coordinates(shapely.centroid(polys))
    truth = _brute_force(list(range(len(ids))), cents, tx, W, H, "cells")
    got = {tuple(int(v) for v in bc.split("x")): k for k, bc in enumerate(t["barcodes"])}
    assert set(got) == set(truth)
    order = [GENES_X.index(g) for g in t["gene_names"]]
    for p, (counts, n_cells) in truth.items():
        np.testing.assert_array_equal(t["expr"][got[p]], counts[order])
        assert t["n_cells"][got[p]] == n_cells


def test_normalise_ids():
    ids = [1, 1.0, "1", b"1", "1.0", np.int64(7), np.float32(7.0), -1, -1.0, None, float("nan")]
    assert xenium._normalise_ids(ids) == ["1", "1", "1", "1", "1", "7", "7", "", "", "", ""]
    assert xenium._normalise_ids(["aaab-1", "UNASSIGNED", " x "]) == ["aaab-1", "", "x"]


def test_xenium_bad_inputs_leave_no_file(tmp_path):
    i = info("XB", "Xenium", PS_X, "patch", "xenium")
    paths, *_ = _write_xenium(tmp_path, "XB")
    out = tmp_path / "o" / "XB.h5"
    empty = pa.table(
        {
            "feature_name": pa.array([], pa.string()),
            "he_x": pa.array([], pa.float64()),
            "he_y": pa.array([], pa.float64()),
            "qv": pa.array([], pa.float32()),
            "cell_id": pa.array([], pa.string()),
        }
    )
    pq.write_table(empty, paths.transcripts)
    with pytest.raises(MintError, match=r"XB .*XB_transcripts\.parquet: transcript table is empty"):
        tile_sample(i, paths, out, CFG)
    assert not out.exists()
    pq.write_table(empty.drop(["he_x"]), paths.transcripts)
    with pytest.raises(MintError, match=r"XB .*lacks columns \['he_x'\]"):
        tile_sample(i, paths, out, CFG)
    # only controls and low-qv transcripts
    bad = pa.table(
        {
            "feature_name": ["BLANK_0001", "G1"],
            "he_x": [10.0, 20.0],
            "he_y": [10.0, 20.0],
            "qv": [30.0, 5.0],
            "cell_id": ["UNASSIGNED", "UNASSIGNED"],
        }
    )
    pq.write_table(bad, paths.transcripts)
    with pytest.raises(MintError, match=r"XB .*no transcript left to count"):
        tile_sample(i, paths, out, TileConfig(progress=False, xenium_target="transcripts"))
    paths.transcripts.unlink()
    with pytest.raises(MintError, match=r"XB .*transcript table not found"):
        tile_sample(i, paths, out, CFG)
    assert not out.exists() and not list((tmp_path / "o").glob("*"))


@pytest.mark.parametrize("damage", ["missing", "garbage", "no_geometry"])
def test_bad_input_xenium_segmentation_required_for_cell_targets(tmp_path, damage):
    """Cell targets never fall back silently: a missing or unreadable segmentation is one
    error naming the sample and file, with no output; transcript targets do not need it."""
    i = info("XS", "Xenium", PS_X, "patch", "xenium")
    paths, *_ = _write_xenium(tmp_path, "XS")
    if damage == "missing":
        paths.cell_seg.unlink()
    elif damage == "garbage":
        paths.cell_seg.write_bytes(b"not a parquet file")
    else:
        pq.write_table(pa.table({"cell_id": ["a", "b"]}), paths.cell_seg)
    out = tmp_path / "o" / "XS.h5"
    with pytest.raises(MintError, match=r"^XS .*XS_xenium_cell_seg\.parquet: ") as err:
        tile_sample(i, paths, out, CFG)
    assert "\n" not in str(err.value)
    assert not out.exists() and not list((tmp_path / "o").glob("*"))
    if damage == "missing":
        tile_sample(i, paths, out, TileConfig(progress=False, xenium_target="transcripts"))
        assert read_tiles(out)["attrs"]["cell_source"] == ""


def test_xenium_dropped_transcripts_do_not_cover_a_patch(tmp_path):
    """Row 2 is tissue but holds only controls and low-qv transcripts: no patch there."""

    def noise_in_row_2(tx):
        extra = pd.DataFrame(
            {
                "cell_id": ["UNASSIGNED"] * 4,
                "feature_name": [CONTROLS[0], CONTROLS[1], "G1", "G2"],
                "he_x": [100.0, 600.0, 1000.0, 1400.0],
                "he_y": [2 * S_X + 50.0] * 4,
                "qv": [30.0, 30.0, 5.0, 10.0],
            }
        )
        extra["x_location"] = extra["he_x"] * PS_X
        extra["y_location"] = extra["he_y"] * PS_X
        return pd.concat([tx, extra], ignore_index=True)

    paths, *_ = _write_xenium(tmp_path, "XC", tx_hook=noise_in_row_2)
    out = tmp_path / "XC.h5"
    tile_sample(info("XC", "Xenium", PS_X, "patch", "xenium"), paths, out, CFG)
    rows = {int(bc.split("x")[0]) for bc in read_tiles(out)["barcodes"]}
    assert rows == {0, 1}


def test_in_slide_tissue_ignores_area_beyond_the_slide():
    """A mask (and contours) reaching past the slide edge never makes an overhanging patch
    tissue: a patch with 10 % of its area inside the slide has at most 10 % tissue."""
    from mint.data.tissue import TissueMask

    mask = TissueMask(mask=np.ones((30, 30), np.uint8), scale=4.0, source="geojson")
    W = H = 100.0  # the slide; the mask covers 120 x 120
    tops = np.array([[0.0, 0.0], [W - 4.0, 0.0], [W - 4.0, H - 4.0], [W + 1, 0.0]])
    got = xenium.in_slide_tissue(mask, tops, 40.0, W, H)
    np.testing.assert_allclose(got, [1.0, 0.1, 0.01, 0.0], atol=1e-6)


def test_old_format_contour_holes_are_subtracted(tmp_path):
    """HEST's older contour files list holes as separate polygons under 'hole': they are cut
    out, giving the same mask as the current format (polygon interiors)."""
    from types import SimpleNamespace

    from mint.data.tissue import mask_from_geojson
    from mint.synth.hest import _old_format_contours

    outer = box(0, 0, 400, 400)
    hole = box(100, 100, 300, 300)
    current = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "properties": {},
                "geometry": {"type": "Polygon", "coordinates": [outer, hole]},
            },
            {
                "type": "Feature",
                "properties": {},
                "geometry": {"type": "Polygon", "coordinates": [box(500, 0, 600, 100)]},
            },
        ],
    }
    old = _old_format_contours(current)
    assert old[0]["properties"]["hole"] == [1] and old[1]["properties"]["hole"] == []
    wsi = SimpleNamespace(width=800, height=800, pixel_size_um=1.0, sample_id="S")
    masks = []
    for name, obj in (("current", current), ("old", old)):
        path = tmp_path / f"{name}.geojson"
        path.write_text(json.dumps(obj))
        masks.append(mask_from_geojson(path, wsi, mask_um=4.0))
    np.testing.assert_array_equal(masks[0].mask, masks[1].mask)
    assert masks[1].fraction(120, 120, 160, 160) == 0.0  # inside the hole
    assert masks[1].fraction(0, 0, 80, 80) == 1.0
    filled = (400 * 400 + 100 * 100) / 16  # mask pixels if the hole were filled
    assert masks[1].mask.sum() < filled - 0.8 * 200 * 200 / 16  # the hole is not tissue


@pytest.mark.parametrize("pooled", [True, False])
def test_visium_hd_bins_are_checked_and_covered_whole(tmp_path, pooled):
    """Visium HD: the patch covers the whole 128 um bin (target and pixels see the same
    tissue), and bins with far fewer counts than their area predicts are flagged."""
    ps = 1.0
    paths = SamplePaths.from_hest_dir(tmp_path, "HD")
    paths.wsi.parent.mkdir(parents=True, exist_ok=True)
    make_slide(paths.wsi, ps, 640, 400)
    gx, gy = np.meshgrid(np.arange(4) * 128.0 + 128, [136.0, 264.0])
    centres = np.column_stack([gx.ravel(), gy.ravel()]) / ps
    per_bin = 20000 if pooled else 300  # one 16 um bin of a 128 um bin: ~1/64 of the counts
    counts = np.full((len(centres), 2), per_bin / 2)
    write_h5ad(paths.st, [f"s_128um_{i:05d}-1" for i in range(8)], centres, counts, ["A", "B"])
    out = tmp_path / "HD.h5"
    tile_sample(info("HD", "Visium HD", ps, "spot", "visium"), paths, out, CFG)
    a = read_tiles(out)["attrs"]
    assert a["bin_um"] == pytest.approx(128.0)
    assert a["size_src_exact_px"] == pytest.approx(128.0 / ps)  # not 112 um
    assert bool(a["qc_flags"]) != pooled and ("unpooled" in a["qc_flags"]) != pooled


def test_select_can_exclude_visium_hd():
    from mint.hest.select import SelectionConfig, select_samples

    meta = pd.DataFrame(
        {
            "id": ["A", "B"],
            "st_technology": ["Visium", "Visium HD"],
            "species": ["Homo sapiens"] * 2,
            "organ": ["Bowel"] * 2,
            "oncotree_code": ["COAD"] * 2,
            "patient": [None] * 2,
            "dataset_title": ["a", "b"],
            "pixel_size_um_estimated": [0.5, 0.27],
        }
    )
    keep = select_samples(meta, SelectionConfig(), "synthetic").samples["id"].tolist()
    drop = select_samples(meta, SelectionConfig(exclude_visium_hd=True), "synthetic")
    assert keep == ["A", "B"] and drop.samples["id"].tolist() == ["A"]


# ------------------------------------------------------------------------- CLI and end to end
def _metadata_csv(path: Path, rows: list[dict]) -> Path:
    from mint.hest.metadata import REQUIRED_COLUMNS

    df = pd.DataFrame(rows)
    for c in REQUIRED_COLUMNS:
        if c not in df:
            df[c] = "x"
    df.to_csv(path, index=False)
    return path


def test_bad_input_cli_missing_pixel_size(tmp_path, capsys):
    _visium_sample(tmp_path, "NOPS")
    csv = _metadata_csv(
        tmp_path / "meta.csv",
        [{"id": "NOPS", "st_technology": "Visium", "pixel_size_um_estimated": ""}],
    )
    out = tmp_path / "tiles" / "NOPS.h5"
    rc = main(
        [
            "tile",
            "--sample",
            "NOPS",
            "--hest-dir",
            str(tmp_path),
            "--metadata",
            str(csv),
            "--out",
            str(out),
        ]
    )
    assert rc == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "NOPS" in err and "pixel_size_um_estimated" in err
    assert "np.float64" not in err and "nan" not in err and "missing" in err
    assert err.count("\n") == 1


def test_end_to_end_on_synthetic_hest(tmp_path):
    """A's synthetic HEST samples through the CLI: Visium and Xenium, targets consistent."""
    from mint.synth import hest as synth
    from mint.synth.specs import SynthConfig

    kw = SynthConfig(seed=0, n_visium=1, n_st=0, n_xenium=1, slide_size_um=500, n_genes=60)
    meta = synth.synthetic_metadata(kw)
    csv = tmp_path / "hest" / "HEST_metadata.csv"
    synth.write_metadata_csv(csv, meta)
    train = [s for s in meta["id"] if not s.startswith("SYNB")]
    for sid in train:
        synth.generate_sample(sid, tmp_path / "hest", kw)
        out = tmp_path / "tiles" / f"{sid}.h5"
        rc = main(
            [
                "tile",
                "--sample",
                sid,
                "--hest-dir",
                str(tmp_path / "hest"),
                "--metadata",
                str(csv),
                "--out",
                str(out),
                "--threads",
                "2",
            ]
        )
        assert rc == 0
        t = read_tiles(out)
        assert len(t["img"]) > 0 and t["img"].std() > 5
        row = meta.set_index("id").loc[sid]
        assert t["attrs"]["pixel_size_um"] == pytest.approx(row["pixel_size_um_estimated"])
        adata = ad.read_h5ad(tmp_path / "hest" / "st" / f"{sid}.h5ad")
        if t["attrs"]["level"] == "spot":
            x = adata[t["barcodes"], t["gene_names"]].X
            np.testing.assert_array_equal(t["expr"], x.toarray() if sp.issparse(x) else x)
        else:
            assert not any(g.startswith(("BLANK", "NegControl")) for g in t["gene_names"])
            assert t["expr"].sum() > 0 and (t["n_cells"] >= 0).all()
    # ... then vocabularies and shards from those tiles
    tiles = [str(tmp_path / "tiles" / f"{sid}.h5") for sid in train]
    bench = tmp_path / "bench" / "T"
    bench.mkdir(parents=True)
    v_genes = read_tiles(tiles[0])["gene_names"]
    (bench / "var_50genes.json").write_text(json.dumps({"genes": v_genes[:5]}))
    assert (
        main(
            [
                "vocab",
                "--tiles",
                *tiles,
                "--bench-dir",
                str(tmp_path / "bench"),
                "--bench-tasks",
                "T",
                "--n-top-genes",
                "20",
                "--out-dir",
                str(tmp_path / "genes"),
            ]
        )
        == 0
    )
    assert set(v_genes[:5]) <= set((tmp_path / "genes" / "visium.txt").read_text().split())
    assert (
        main(
            [
                "shards",
                "--tiles",
                *tiles,
                "--vocab-dir",
                str(tmp_path / "genes"),
                "--out-dir",
                str(tmp_path / "shards"),
                "--samples-per-shard",
                "16",
                "--val-fraction",
                "0.1",
                "--seed",
                "0",
                "--jpeg-quality",
                "90",
            ]
        )
        == 0
    )
    index = json.loads((tmp_path / "shards" / "index.json").read_text())
    n_tiles = sum(len(read_tiles(p)["img"]) for p in tiles)
    assert index["n_train"] + index["n_val"] == n_tiles
    assert set(index["samples"]) == set(train)
