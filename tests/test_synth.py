"""Synthetic HEST-1k: pyramidal TIFFs, procedural tissue and the exact HEST file layout."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import openslide
import pandas as pd
import pyarrow.parquet as pq
import pytest
import shapely

from mint.cli import main
from mint.data.genes import is_control
from mint.hest import layout
from mint.hest.metadata import HEST_COLUMNS, read_metadata
from mint.synth.bench import generate_bench
from mint.synth.hest import FORMAT_VARIANTS, generate_sample, synthetic_metadata
from mint.synth.specs import SynthConfig, gene_model, sample_specs
from mint.synth.tiff import write_pyramidal_tiff, write_pyramidal_tiff_array
from mint.synth.tissue import CELL_TYPES, SlideModel, random_slide_model, render_patch
from mint.synth.xenium import CONTROL_PROBES

SMALL = SynthConfig(seed=3, n_visium=2, n_st=1, n_xenium=1, slide_size_um=500.0, n_genes=120)


def _read(slide: openslide.OpenSlide, x: int, y: int, w: int, h: int, level: int = 0) -> np.ndarray:
    return np.asarray(slide.read_region((x, y), level, (w, h)).convert("RGB"))


# --------------------------------------------------------------------------- TIFF
@pytest.mark.parametrize("ps", [0.25, 0.5, 1.0])
def test_tiff_array_roundtrip(tmp_path, ps):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (700, 1000, 3), dtype=np.uint8)
    p = write_pyramidal_tiff_array(tmp_path / "a.tif", img, ps)
    s = openslide.OpenSlide(str(p))
    assert s.level_count > 1
    assert s.dimensions == (1000, 700)
    assert s.level_dimensions[1] == (500, 350)
    assert float(s.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(ps, rel=1e-6)
    assert np.array_equal(_read(s, 300, 200, 400, 300), img[200:500, 300:700])
    # level 1 is the 2 x 2 mean
    l1 = _read(s, 0, 0, 50, 50, level=1).astype(int)
    ref = img[:100, :100].reshape(50, 2, 50, 2, 3).astype(int).mean((1, 3))
    assert np.abs(l1 - ref).max() <= 1
    assert not list(tmp_path.glob(".*"))  # no temporary left behind


def test_tiff_small_image_still_has_pyramid(tmp_path):
    img = np.full((64, 80, 3), 200, np.uint8)
    s = openslide.OpenSlide(str(write_pyramidal_tiff_array(tmp_path / "s.tif", img, 0.5)))
    assert s.level_count == 2


def test_tiff_tile_fn_calls_and_bad_tile(tmp_path):
    calls = []

    def fn(y0, x0, h, w):
        calls.append((y0, x0, h, w))
        return np.full((h, w, 3), (x0 // 256) * 40 + (y0 // 256) * 7, np.uint8)

    p = write_pyramidal_tiff(tmp_path / "t.tif", 600, 530, fn, 0.5)
    s = openslide.OpenSlide(str(p))
    assert s.level_count == 3
    assert len(calls) == 3 * 3  # one call per level-0 tile, row-major
    assert calls[0] == (0, 0, 256, 256) and calls[-1] == (512, 512, 88, 18)
    assert _read(s, 520, 300, 4, 4)[0, 0, 0] == 2 * 40 + 1 * 7

    with pytest.raises(ValueError, match="tile_fn"):
        write_pyramidal_tiff(
            tmp_path / "bad.tif", 300, 300, lambda y, x, h, w: np.zeros((h, w), np.uint8), 0.5
        )
    assert not (tmp_path / "bad.tif").exists()


# --------------------------------------------------------------------------- tissue
def test_render_is_seamless_and_deterministic():
    m = random_slide_model(11, 800, 800)
    whole = m.render(100, 50, 300, 400, 0.5)
    left = m.render(100, 50, 300, 170, 0.5)
    right = m.render(270, 50, 300, 230, 0.5)
    assert np.array_equal(whole, np.concatenate([left, right], 1))
    assert np.array_equal(whole, random_slide_model(11, 800, 800).render(100, 50, 300, 400, 0.5))
    assert whole.dtype == np.uint8 and whole.shape == (300, 400, 3)


def test_tile_fn_matches_render():
    m = random_slide_model(2, 700, 700)
    fn = m.tile_fn(0.5)
    assert np.array_equal(fn(256, 1024 + 256, 256, 120), m.render(1280, 256, 256, 120, 0.5))
    assert np.array_equal(fn(0, 256, 256, 256), m.render(256, 0, 256, 256, 0.5))


def test_slide_has_background_and_tissue_and_is_resolution_independent():
    m = random_slide_model(5, 1000, 1000)
    img = m.render(0, 0, 500, 500, 2.0)
    bright = img.mean(-1) > 235
    assert 0.05 < bright.mean() < 0.9  # some background, some tissue
    # same tissue map at two resolutions
    xs = np.linspace(5, 995, 60)
    t1 = m.types_grid(xs, xs)
    t2 = m.types_points(*[a.ravel() for a in np.meshgrid(xs, xs)]).reshape(60, 60)
    assert (t1 == t2).mean() > 0.99


def test_render_patch_types_differ():
    rng = np.random.default_rng(0)
    assert len(CELL_TYPES) >= 4
    stats = []
    for k in range(len(CELL_TYPES)):
        p = render_patch(k, 96, 0.5, rng)
        assert p.shape == (96, 96, 3) and p.dtype == np.uint8
        stats.append(p.reshape(-1, 3).mean(0))
    stats = np.array(stats)
    d = np.linalg.norm(stats[:, None] - stats[None], axis=-1)
    assert d[np.triu_indices(len(stats), 1)].min() > 3.0  # colour statistics differ per type
    with pytest.raises(ValueError):
        render_patch(99, 32, 0.5, rng)


def test_cells_sit_on_nuclei():
    m = SlideModel(seed=4, width_um=300, height_um=300)
    c = m.cells()
    assert len(c["x"]) > 50
    img = m.render(0, 0, 600, 600, 0.5)
    px = np.clip((c["x"] / 0.5).astype(int), 0, 599)
    py = np.clip((c["y"] / 0.5).astype(int), 0, 599)
    # nucleus centres are darker than the average tissue pixel (haematoxylin)
    assert img[py, px].mean() < img[img.mean(-1) < 235].mean() - 10


# --------------------------------------------------------------------------- HEST layout
def test_synthetic_metadata_is_fast_pure_and_complete():
    t = time.perf_counter()
    df = synthetic_metadata(SMALL)
    assert time.perf_counter() - t < 3.0
    assert list(df.columns) == HEST_COLUMNS
    ids = df["id"].tolist()
    assert ids[:4] == ["SYNV000", "SYNV001", "SYNST000", "SYNX000"]
    assert {"SYNBV000", "SYNBV003", "SYNBX000", "SYNBX001"} <= set(ids)
    assert set(df["st_technology"]) == {"Visium", "Spatial Transcriptomics", "Xenium"}
    assert (df["pixel_size_um_estimated"] > 0).all() and df[
        "pixel_size_um_estimated"
    ].nunique() >= 3
    pd.testing.assert_frame_equal(df, synthetic_metadata(SMALL))


@pytest.fixture(scope="module")
def hest_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("hest")
    for sid in ["SYNV000", "SYNV001", "SYNST000", "SYNX000"]:
        generate_sample(sid, out, SMALL)
    return out


def test_wsis_open_with_openslide(hest_dir):
    df = synthetic_metadata(SMALL).set_index("id")
    for sid in ["SYNV000", "SYNST000", "SYNX000"]:
        s = openslide.OpenSlide(str(hest_dir / "wsis" / f"{sid}.tif"))
        assert s.level_count > 1
        assert s.dimensions == (df.loc[sid, "fullres_px_width"], df.loc[sid, "fullres_px_height"])
    # like TENX95 in HEST, the first Xenium TIFF carries a wrong embedded pixel size
    s = openslide.OpenSlide(str(hest_dir / "wsis" / "SYNX000.tif"))
    assert float(s.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(1.0)
    assert df.loc["SYNX000", "pixel_size_um_estimated"] == pytest.approx(0.2125)


def test_spot_h5ad(hest_dir):
    meta = synthetic_metadata(SMALL).set_index("id")
    a = ad.read_h5ad(hest_dir / "st" / "SYNV000.h5ad")
    x = a.X.toarray()
    assert np.array_equal(x, np.round(x)) and x.min() >= 0 and x.sum() > 0
    assert a.var_names.is_unique and "EPCAM" in a.var_names
    assert all(
        len(b) == 18 and b.endswith("-1") and set(b[:16]) <= set("ACGT") for b in a.obs_names
    )
    sp = a.obsm["spatial"]
    assert sp.shape == (a.n_obs, 2)
    assert (sp[:, 0] < meta.loc["SYNV000", "fullres_px_width"]).all()
    assert (sp[:, 1] < meta.loc["SYNV000", "fullres_px_height"]).all()
    for k in CELL_TYPES:
        assert f"frac_{k}" in a.obs
    # one Visium sample misses some genes (vocabulary masks)
    b = ad.read_h5ad(hest_dir / "st" / "SYNV001.h5ad")
    assert b.n_vars < a.n_vars and set(b.var_names) < set(a.var_names)
    st = ad.read_h5ad(hest_dir / "st" / "SYNST000.h5ad")
    assert all("x" in bc and bc.replace("x", "").isdigit() for bc in st.obs_names)


def test_expression_follows_cell_types(hest_dir):
    a = ad.read_h5ad(hest_dir / "st" / "SYNV000.h5ad")
    x = np.log1p(a.X.toarray())
    for k, marker in [(0, "EPCAM"), (1, "COL1A1"), (2, "PTPRC")]:
        frac = a.obs[f"frac_{CELL_TYPES[k]}"].to_numpy()
        if frac.std() > 0:
            r = np.corrcoef(frac, x[:, a.var_names.get_loc(marker)])[0, 1]
            assert r > 0.5, (marker, r)


def test_xenium_files(hest_dir):
    tr = pq.read_table(hest_dir / "transcripts" / "SYNX000_transcripts.parquet").to_pandas()
    for col in ["feature_name", "he_x", "he_y", "qv", "cell_id", "x_location", "y_location"]:
        assert col in tr
    assert (tr["cell_id"] == "UNASSIGNED").any()
    assert (tr["qv"] < 20).any() and (tr["qv"] >= 20).any()
    names = set(tr["feature_name"])
    for prefix in ["BLANK_", "NegControlProbe_", "NegControlCodeword_", "UnassignedCodeword_"]:
        assert any(n.startswith(prefix) for n in names), prefix
    seg_path = hest_dir / "xenium_seg" / "SYNX000_xenium_cell_seg.parquet"
    seg = pq.read_table(seg_path)
    assert b"geo" in seg.schema.metadata
    geoms = shapely.from_wkb(seg.column("geometry").to_numpy(zero_copy_only=False))
    # HEST's current form: the cell id is the (pandas) index, as geopandas writes it
    ids = seg.column("__index_level_0__").to_pylist()
    assert list(pd.read_parquet(seg_path).index) == ids
    assert len(set(ids)) == len(ids) == len(geoms) > 10
    assert all(g.geom_type == "Polygon" and g.is_valid for g in geoms[:50])
    # transcripts of a cell lie inside (or on the rim of) its polygon, in H&E pixels
    poly = dict(zip(ids, geoms, strict=True))
    sub = tr[tr["cell_id"].isin(ids[:20]) & ~tr["feature_name"].isin(CONTROL_PROBES)]
    inside = [
        poly[c].buffer(2).contains(shapely.Point(x, y))
        for c, x, y in zip(sub.cell_id, sub.he_x, sub.he_y, strict=True)
    ]
    assert np.mean(inside) > 0.97
    # the st h5ad holds HEST-style 100 um pseudo-spots with every feature (controls included)
    a = ad.read_h5ad(hest_dir / "st" / "SYNX000.h5ad")
    assert "ST" in a.uns["spatial"]  # HEST's reader requires it
    assert all(len(b) == 7 and b[3] == "x" for b in a.obs_names)
    assert any(g.startswith("BLANK_") for g in a.var_names)
    assert a.X.sum() == len(tr)


def test_tissue_geojson_and_metadata_json(hest_dir):
    gj = json.loads((hest_dir / "tissue_seg" / "SYNV000_contours.geojson").read_text())
    assert gj["type"] == "FeatureCollection" and gj["features"]
    polys = [shapely.geometry.shape(f["geometry"]) for f in gj["features"]]
    union = shapely.union_all(polys)
    meta = synthetic_metadata(SMALL).set_index("id")
    w, h = meta.loc["SYNV000", "fullres_px_width"], meta.loc["SYNV000", "fullres_px_height"]
    assert 0.05 * w * h < union.area < w * h
    # spots with in_tissue=1 mostly lie inside the polygons
    a = ad.read_h5ad(hest_dir / "st" / "SYNV000.h5ad")
    sp = a.obsm["spatial"][a.obs["in_tissue"].to_numpy() == 1]
    assert np.mean([union.buffer(20).contains(shapely.Point(*p)) for p in sp]) > 0.9
    j = json.loads((hest_dir / "metadata" / "SYNV000.json").read_text())
    assert (
        j["id"] == "SYNV000"
        and j["pixel_size_um_estimated"] == meta.loc["SYNV000", "pixel_size_um_estimated"]
    )


def test_generate_sample_is_deterministic(hest_dir, tmp_path):
    generate_sample("SYNST000", tmp_path, SMALL)
    for rel in ["wsis/SYNST000.tif", "tissue_seg/SYNST000_contours.geojson"]:
        assert (tmp_path / rel).read_bytes() == (hest_dir / rel).read_bytes()
    a, b = ad.read_h5ad(tmp_path / "st/SYNST000.h5ad"), ad.read_h5ad(hest_dir / "st/SYNST000.h5ad")
    assert np.array_equal(a.X.toarray(), b.X.toarray())


def test_unknown_synthetic_id(tmp_path):
    from mint.errors import MintError

    with pytest.raises(MintError, match="NOPE"):
        generate_sample("NOPE", tmp_path, SMALL)


def test_generate_bench_layout(tmp_path):
    cfg = dataclasses.replace(SMALL, slide_size_um=700.0)
    d = generate_bench(tmp_path, "SYNTH_VISIUM", cfg)
    genes = json.loads((d / "var_50genes.json").read_text())["genes"]
    assert len(genes) == 50 and genes == sorted(genes)
    assert sorted(p.name for p in (d / "splits").iterdir()) == [
        "test_0.csv",
        "test_1.csv",
        "train_0.csv",
        "train_1.csv",
    ]
    tr = pd.read_csv(d / "splits" / "train_0.csv")
    assert list(tr.columns) == ["sample_id", "patches_path", "expr_path"]
    te = pd.read_csv(d / "splits" / "test_0.csv")
    assert not set(tr.sample_id) & set(te.sample_id)
    specs = {s.id: s for s in sample_specs(cfg)}
    assert not {specs[s].patient for s in tr.sample_id} & {specs[s].patient for s in te.sample_id}
    for _, r in tr.iterrows():
        with h5py.File(d / r.patches_path) as f:
            assert f["img"].dtype == np.uint8 and f["img"].shape[1:] == (224, 224, 3)
            assert f["coords"].shape == (len(f["img"]), 2) and f["barcode"].shape == (
                len(f["img"]),
                1,
            )
            bcs = [b[0].decode() for b in f["barcode"][:]]
        a = ad.read_h5ad(d / r.expr_path)
        assert set(bcs) <= set(a.obs_names) and set(genes) <= set(a.var_names)


def test_cli_metadata(tmp_path, capsys):
    rc = main(
        [
            "synth",
            "metadata",
            "--out",
            str(tmp_path),
            "--seed",
            "3",
            "--n-visium",
            "2",
            "--n-st",
            "1",
            "--n-xenium",
            "1",
            "--slide-size-um",
            "500",
            "--n-genes",
            "120",
        ]
    )
    assert rc == 0
    df = read_metadata(tmp_path / "HEST_metadata.csv")
    ref = synthetic_metadata(SMALL)
    assert df["id"].tolist() == ref["id"].tolist()
    assert np.allclose(df["pixel_size_um_estimated"], ref["pixel_size_um_estimated"])
    assert not (tmp_path / "wsis").exists()


def test_cli_parts_write_one_sample_or_one_task(tmp_path):
    """`mint synth samples` / `mint synth bench` (the workflow's synthetic download jobs) write
    exactly one sample or task, no metadata CSV, with the sizes given as SynthConfig's flags."""
    sizes = ["--seed", "3", "--n-visium", "2", "--n-st", "1", "--n-xenium", "1"]
    sizes += ["--slide-size-um", "500", "--n-genes", "120"]
    hest = tmp_path / "hest"
    assert main(["synth", "samples", "--out", str(hest), "--samples", "SYNX000", *sizes]) == 0
    written = sorted(str(p.relative_to(hest)) for p in hest.rglob("*") if p.is_file())
    assert written == sorted(layout.sample_files("SYNX000", "Xenium").values())
    ref = tmp_path / "ref"
    generate_sample("SYNX000", ref, SMALL)
    for rel in written:
        assert (hest / rel).read_bytes() == (ref / rel).read_bytes(), rel
    bench = tmp_path / "bench"
    args = ["synth", "bench", "--bench-out", str(bench), "--bench-tasks", "SYNTH_XENIUM", *sizes]
    assert main(args) == 0
    assert [p.name for p in bench.iterdir()] == ["SYNTH_XENIUM"] and not hest.joinpath(
        layout.METADATA_CSV
    ).exists()
    from mint.hest.download_bench import check_task

    assert check_task(bench / "SYNTH_XENIUM", "SYNTH_XENIUM") == 2
    assert layout.bench_task_sample_ids(bench / "SYNTH_XENIUM") == {"SYNBX000", "SYNBX001"}


def test_synth_config_is_the_one_list_of_sizes():
    """The CLI flags and the workflow's flags are generated from SynthConfig, and the config
    schema's `synthetic` section holds its fields: a size added in one place only fails here."""
    import argparse

    import yaml

    from mint.synth import cli

    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    fields = [f.name for f in dataclasses.fields(SynthConfig)]
    assert SynthConfig.from_args(p.parse_args([])) == SynthConfig()
    got = SynthConfig.from_args(p.parse_args(["--n-xenium", "5", "--slide-size-um", "700"]))
    assert got == SynthConfig(n_xenium=5, slide_size_um=700.0)
    flags = [str(w) for kv in got.cli_flags().items() for w in kv]
    assert SynthConfig.from_args(p.parse_args(flags)) == got
    schema_file = Path(__file__).parents[1] / "workflow" / "schemas" / "config.schema.yaml"
    schema = yaml.safe_load(schema_file.read_text())
    section = schema["properties"]["synthetic"]["properties"]
    assert set(fields) <= set(section)
    assert (
        SynthConfig.from_config({k: v.get("default") for k, v in section.items()}) == SynthConfig()
    )
    for name in fields:  # a default the schema states must be the dataclass's
        if "default" in section[name]:
            assert section[name]["default"] == getattr(SynthConfig(), name), name


def test_control_probes_are_what_the_pipeline_drops():
    """The generator's control codewords are controls by the one rule (mint.data.genes), its
    genes are not; the transcript table's is_gene column follows the same rule."""
    assert all(is_control(c) for c in CONTROL_PROBES)
    g = gene_model(0, 300)
    assert not any(is_control(n) for n in g.genes)


@pytest.mark.parametrize("n_genes", [60, 300])
def test_gene_model_sizes(n_genes):
    g = gene_model(0, n_genes)
    assert len(g.visium) == n_genes and len(set(g.visium)) == n_genes
    assert len(set(g.xenium)) == len(g.xenium) >= 50
    assert set(g.xenium) & set(g.visium) and set(g.xenium) - set(
        g.visium
    )  # overlap + Xenium-only genes
    assert not any(c in g.xenium for c in CONTROL_PROBES)
    r = g.rates(g.visium)
    assert r.shape == (n_genes, len(CELL_TYPES)) and np.allclose(r.sum(0), 1.0)


# --------------------------------------------------------------------------- real-format variants
def test_format_variants_tile_identically(tmp_path):
    """Every real-file form HEST's files take (old contours, int / bytes ids, bytes gene names,
    null ids with a geometry column, id column instead of index) gives the same tiles."""
    from mint.data.tiling import SampleInfo, SamplePaths, TileConfig, tile_sample

    cfg = dataclasses.replace(SMALL, slide_size_um=600.0)
    ps = float(synthetic_metadata(cfg).set_index("id").loc["SYNX000", "pixel_size_um_estimated"])
    info = SampleInfo("SYNX000", "Xenium", ps, "patch", "xenium")
    got = {}
    for variant in ("",) + FORMAT_VARIANTS:
        out = tmp_path / (variant or "current")
        generate_sample("SYNX000", out, cfg, variants=(variant,) if variant else ())
        tile_sample(
            info,
            SamplePaths.from_hest_dir(out, "SYNX000"),
            out / "t.h5",
            TileConfig(progress=False),
        )
        with h5py.File(out / "t.h5") as f:
            got[variant] = {k: f[k][:] for k in ("expr", "barcode", "n_cells", "coords")}
    assert got[""]["expr"].sum() > 0 and (got[""]["n_cells"] > 0).any()
    tr = pq.read_table(
        tmp_path / "null_ids_geometry" / "transcripts" / "SYNX000_transcripts.parquet"
    )
    assert tr.column("cell_id").null_count > 0 and "geometry" in tr.column_names
    tr = pq.read_table(tmp_path / "bytes_names" / "transcripts" / "SYNX000_transcripts.parquet")
    assert isinstance(tr.column("feature_name")[0].as_py(), bytes)
    for variant in FORMAT_VARIANTS:
        for k, v in got[""].items():
            np.testing.assert_array_equal(got[variant][k], v, err_msg=f"{variant} {k}")


def test_bad_input_unknown_format_variant(tmp_path):
    from mint.errors import MintError

    with pytest.raises(MintError, match="'nope' unknown"):
        generate_sample("SYNX000", tmp_path, SMALL, variants=("nope",))
    assert not any(tmp_path.iterdir())
