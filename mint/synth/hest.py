"""A synthetic HEST-1k look-alike, in the exact on-disk layout of the real one.

Why: the whole pipeline (download -> tile -> shards -> train -> bench) must run offline in
minutes and must exercise the same code as real data. So every file mirrors HEST, at the paths
named by `mint.hest.layout`:

    wsis/{id}.tif                           pyramidal tiled TIFF (openslide), level-0 pixels
    st/{id}.h5ad                            raw counts, gene symbols, obsm['spatial'] (x, y) px
    metadata/{id}.json                      the metadata row
    tissue_seg/{id}_contours.geojson        tissue polygons, level-0 px (FeatureCollection)
    transcripts/{id}_transcripts.parquet    Xenium: feature_name, he_x, he_y, qv, cell_id, ...
    xenium_seg/{id}_xenium_cell_seg.parquet Xenium: one polygon (WKB 'geometry') per cell, the
                                            cell id as the pandas index (HEST's geopandas form)
    HEST_metadata.csv                       every sample, HEST columns

The h5ad carries ``uns['spatial']['ST']`` (thumbnail and scale factors), which HEST's own reader
requires. Other forms real HEST files take can be written on request (``variants``, see
`FORMAT_VARIANTS`), so the readers are tested on each of them.

The modules behind it: `mint.synth.specs` (config, samples, genes), `mint.synth.spots` (Visium,
ST), `mint.synth.xenium` (cells, transcripts), `mint.synth.bench` (the HEST-Bench look-alike).
Everything is a deterministic function of (config, sample id).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from mint.errors import MintError
from mint.hest import layout
from mint.hest.metadata import HEST_COLUMNS
from mint.io import atomic_path, write_json
from mint.synth.specs import (
    DEFAULT_CONFIG,
    PSEUDO_SPOT_UM,
    ST_SPOT_DIAMETER_UM,
    ST_SPOT_DIST_UM,
    VISIUM_SPOT_DIAMETER_UM,
    VISIUM_SPOT_DIST_UM,
    SampleSpec,
    SynthConfig,
    gene_model,
    sample_genes,
    sample_specs,
    spec_of,
)
from mint.synth.spots import spot_table, st_grid, visium_grid
from mint.synth.tiff import write_pyramidal_tiff
from mint.synth.tissue import SlideModel
from mint.synth.xenium import pseudo_spots, transcript_table, write_cell_seg, xenium_data

log = logging.getLogger(__name__)


#: Real-file forms the writer can produce besides the current HEST one (``variants=``):
#:   contours_old       tissue contours in HEST's older format: a list of Features, one
#:                      MultiPolygon of exterior rings each, holes listed under 'hole'
#:   int_cell_ids       integer cell ids (-1 = unassigned) in transcripts and segmentation
#:   bytes_names        cell ids and gene names stored as bytes
#:   null_ids_geometry  unassigned transcripts with a null cell id, plus a GeoParquet point
#:                      'geometry' column in the transcript table
#:   seg_id_column      segmentation with 'cell_id' as a plain column (not the index)
FORMAT_VARIANTS = (
    "contours_old",
    "int_cell_ids",
    "bytes_names",
    "null_ids_geometry",
    "seg_id_column",
)


def _check_variants(variants) -> set[str]:
    bad = [v for v in variants if v not in FORMAT_VARIANTS]
    if bad:
        raise MintError(f"synthetic format variant {bad[0]!r} unknown; known: {FORMAT_VARIANTS}")
    return set(variants)


def write_h5ad(
    path: Path, obs: pd.DataFrame, spatial: np.ndarray, counts: np.ndarray, genes: list[str]
) -> None:
    import anndata as ad
    import scipy.sparse as sp

    var = pd.DataFrame(index=pd.Index(genes))
    adata = ad.AnnData(X=sp.csr_matrix(counts.astype(np.float32)), obs=obs.copy(), var=var)
    adata.obsm["spatial"] = np.asarray(spatial, np.float64)
    # HEST's reader requires uns['spatial']['ST'] (a small thumbnail and its scale factors).
    adata.uns["spatial"] = {
        "ST": {
            "images": {"downscaled_fullres": np.full((8, 8, 3), 255, np.uint8)},
            "scalefactors": {"tissue_downscaled_fullres_scalef": 0.01},
            "metadata": {},
        }
    }
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)


# --------------------------------------------------------------------------- metadata
def _magnification(ps: float) -> str:
    return "40x" if ps < 0.3 else "20x" if ps < 0.6 else "10x"


def _metadata_row(spec: SampleSpec, n_genes: int, spots_under_tissue: float) -> dict:
    row = {c: np.nan for c in HEST_COLUMNS}
    tech = spec.technology
    row.update(
        dataset_title=spec.dataset_title,
        id=spec.id,
        image_filename=Path(layout.sample_file("wsi", spec.id)).name,
        organ=spec.organ,
        disease_state="Cancer",
        oncotree_code=spec.oncotree_code,
        species="Homo sapiens",
        patient=spec.patient,
        st_technology=tech,
        data_publication_date="1/1/26",
        license="CC BY 4.0 (synthetic)",
        preservation_method="FFPE",
        nb_genes=n_genes,
        inter_spot_dist={
            "Visium": VISIUM_SPOT_DIST_UM,
            "Spatial Transcriptomics": ST_SPOT_DIST_UM,
        }.get(tech, np.nan),
        spot_diameter={
            "Visium": VISIUM_SPOT_DIAMETER_UM,
            "Spatial Transcriptomics": ST_SPOT_DIAMETER_UM,
        }.get(tech, np.nan),
        spots_under_tissue=spots_under_tissue,
        pixel_size_um_embedded=spec.pixel_size_embedded,
        pixel_size_um_estimated=spec.pixel_size_um,
        magnification=_magnification(spec.pixel_size_um),
        fullres_px_width=spec.width_px,
        fullres_px_height=spec.height_px,
        tissue=spec.organ,
        subseries=spec.bench_task if spec.bench_task else np.nan,
        hest_version_added="synthetic",
    )
    return row


def _spots_under_tissue(spec: SampleSpec, model: SlideModel) -> int:
    if spec.technology == "Xenium":
        step = PSEUDO_SPOT_UM
        xs = np.arange(step / 2, spec.width_um, step)
        ys = np.arange(step / 2, spec.height_um, step)
        gx, gy = np.meshgrid(xs, ys)
        return int(model.composition(gx.ravel(), gy.ravel(), 50.0, n=21)[1].__gt__(0).sum())
    grid = st_grid(spec) if spec.technology == "Spatial Transcriptomics" else visium_grid(spec)
    radius = (
        ST_SPOT_DIAMETER_UM
        if spec.technology == "Spatial Transcriptomics"
        else VISIUM_SPOT_DIAMETER_UM
    ) / 2
    return int((model.composition(grid[0], grid[1], radius, n=21)[1] >= 0.5).sum())


def synthetic_metadata(cfg: SynthConfig = DEFAULT_CONFIG) -> pd.DataFrame:
    """The HEST metadata table of the synthetic dataset (training and bench samples).

    Pure and fast (no pixels): the Snakefile calls it at parse time.
    """
    gm = gene_model(cfg.seed, cfg.n_genes)
    rows = []
    for spec in sample_specs(cfg):
        model = spec.model()
        rows.append(
            _metadata_row(
                spec, len(sample_genes(spec, gm, cfg.seed)), _spots_under_tissue(spec, model)
            )
        )
    df = pd.DataFrame(rows, columns=HEST_COLUMNS)
    for c in ("fullres_px_width", "fullres_px_height", "nb_genes", "spots_under_tissue"):
        df[c] = df[c].astype(np.int64)
    return df


def write_metadata_csv(path: str | os.PathLike, df: pd.DataFrame) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return path


# --------------------------------------------------------------------------- tissue / cells files
def _tissue_geojson(spec: SampleSpec, model: SlideModel) -> dict:
    import contourpy

    step = 8.0
    xs = np.arange(-step, spec.width_um + 2 * step, step)
    ys = np.arange(-step, spec.height_um + 2 * step, step)
    inside = (xs >= 0) & (xs <= spec.width_um)
    z = model.tissue_grid(xs, ys).astype(np.float64)
    z[:, ~inside] = 0
    z[(ys < 0) | (ys > spec.height_um)] = 0
    gen = contourpy.contour_generator(xs, ys, z, fill_type="OuterOffset")
    pts_list, offs_list = gen.filled(0.5, 2.0)
    feats = []
    ps = spec.pixel_size_um
    for pts, offs in zip(pts_list, offs_list, strict=True):
        rings = [
            np.round(pts[offs[i] : offs[i + 1]] / ps, 2).tolist() for i in range(len(offs) - 1)
        ]
        if len(rings[0]) < 4:
            continue
        feats.append(
            {
                "type": "Feature",
                "properties": {"tissue_id": len(feats)},
                "geometry": {"type": "Polygon", "coordinates": rings},
            }
        )
    return {"type": "FeatureCollection", "features": feats}


def _old_format_contours(fc: dict) -> list:
    """HEST's older contour file: one Feature per tissue piece, a MultiPolygon of exterior
    rings (holes as polygons of their own) and the hole indices under 'hole'."""
    out = []
    for k, feat in enumerate(fc["features"]):
        rings = feat["geometry"]["coordinates"]
        polys = [[rings[0]]] + [[r] for r in rings[1:]]
        out.append(
            {
                "type": "Feature",
                "id": f"tissue-{k}",
                "geometry": {"type": "MultiPolygon", "coordinates": polys},
                "properties": {
                    "objectType": "annotation",
                    "classification": {"name": str(k), "color": [255, 0, 0]},
                    "hole": list(range(1, len(rings))),
                },
            }
        )
    return out


# --------------------------------------------------------------------------- one sample
def generate_sample(
    sample_id: str,
    out_dir: str | os.PathLike,
    cfg: SynthConfig = DEFAULT_CONFIG,
    variants: tuple[str, ...] = (),
) -> list[Path]:
    """Write one synthetic sample in HEST layout under `out_dir`; returns the files written.

    `variants` (names from `FORMAT_VARIANTS`) writes the same data in other real-file forms.
    """
    variant_set = _check_variants(variants)
    spec = spec_of(cfg, sample_id)
    gm = gene_model(cfg.seed, cfg.n_genes)
    model = spec.model()
    written: list[Path] = []
    sid = spec.id

    def path(key: str) -> Path:
        return Path(layout.sample_file(key, sid, out_dir))

    if spec.technology == "Xenium":
        xd = xenium_data(spec, model, gm, cfg.seed)
        obs, spatial, counts, genes = pseudo_spots(xd.transcripts, spec.pixel_size_um)
        p = path("transcripts")
        with atomic_path(p) as tmp:
            import pyarrow.parquet as pq

            pq.write_table(transcript_table(xd.transcripts, xd, variant_set), tmp)
        written.append(p)
        p = path("cell_seg")
        write_cell_seg(p, spec, xd, variant_set)
        written.append(p)
    else:
        obs, spatial, counts, genes = spot_table(spec, model, gm, cfg.seed)
    p = path("st")
    write_h5ad(p, obs, spatial, counts, genes)
    written.append(p)

    p = path("contours")
    contours = _tissue_geojson(spec, model)
    if "contours_old" in variant_set:
        contours = _old_format_contours(contours)
    write_json(p, contours, indent=None)
    written.append(p)

    row = _metadata_row(
        spec, len(sample_genes(spec, gm, cfg.seed)), _spots_under_tissue(spec, model)
    )
    row = {k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()}
    p = path("meta")
    write_json(p, row)
    written.append(p)

    p = path("wsi")
    write_pyramidal_tiff(
        p,
        spec.height_px,
        spec.width_px,
        model.tile_fn(spec.pixel_size_um),
        spec.pixel_size_embedded,
        description=f"MINT synthetic {spec.technology} slide {sid}",
    )
    written.append(p)
    log.info(
        "synthetic %s (%s, %dx%d px @ %.4f um/px)",
        sid,
        spec.technology,
        spec.width_px,
        spec.height_px,
        spec.pixel_size_um,
    )
    return written
