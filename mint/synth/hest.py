"""A synthetic HEST-1k and HEST-Bench look-alike, in the exact on-disk layout of the real ones.

Why: the whole pipeline (download -> tile -> shards -> train -> bench) must run offline in
minutes and must exercise the same code as real data. So every file mirrors HEST:

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

and a HEST-Bench look-alike (<TASK>/adata, patches, splits, var_50genes.json).

Expression is a function of the tissue the pixels show: each gene has a rate per cell type;
a spot's counts are Poisson-Gamma around depth x (cell-type area fractions under the spot) x
rates; a Xenium cell's counts are drawn from its own type. So morphology predicts expression.
Everything is a deterministic function of (seed, sample id).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from mint.errors import MintError
from mint.hest.bench import SYNTHETIC_BENCH_TASKS, BenchTask
from mint.hest.metadata import HEST_COLUMNS
from mint.io import atomic_path, write_json
from mint.synth.tiff import write_pyramidal_tiff
from mint.synth.tissue import CELL_TYPES, K, SlideModel, random_slide_model

log = logging.getLogger(__name__)

VISIUM_SPOT_DIAMETER_UM = 55.0
VISIUM_SPOT_DIST_UM = 100.0
ST_SPOT_DIAMETER_UM = 100.0
ST_SPOT_DIST_UM = 200.0
PSEUDO_SPOT_UM = 100.0  # HEST's Xenium pseudo-spot grid
BENCH_PATCH_PX = 224
BENCH_PIXEL_SIZE_UM = 0.5

# Pixel sizes cycle through these per technology (several resolutions exercise resampling;
# the first Xenium slide's TIFF carries a wrong embedded mpp, like TENX95 in HEST).
_PIXEL_SIZES = {
    "Visium": [0.5, 0.8, 0.65, 0.2738],
    "Spatial Transcriptomics": [1.0, 0.9],
    "Xenium": [0.2125, 0.2737],
}
_ORGANS = [("Bowel", "COAD"), ("Breast", "IDC"), ("Prostate", "PRAD"), ("Lung", "LUAD")]

MARKERS: dict[int, list[str]] = {
    0: ["EPCAM", "KRT8", "KRT18", "KRT19", "MKI67", "TOP2A", "CEACAM5", "ERBB2", "MYC", "CDH1"],
    1: ["COL1A1", "COL1A2", "COL3A1", "DCN", "LUM", "FN1", "SPARC", "ACTA2", "PDGFRB", "VIM"],
    2: ["PTPRC", "CD3E", "CD3D", "CD2", "CD79A", "MS4A1", "CD19", "CCL19", "CXCL13", "CD68"],
    3: ["ADIPOQ", "PLIN1", "FABP4", "LEP", "CIDEA", "LPL", "CFD", "PPARG"],
    4: ["MUC2", "TFF3", "KRT20", "AGR2", "LGR5", "OLFM4", "SPINK4", "CDX2", "PIGR", "MUC5AC"],
}
HOUSEKEEPING = [
    "ACTB",
    "GAPDH",
    "B2M",
    "RPLP0",
    "RPL13",
    "RPS18",
    "EEF1A1",
    "TPT1",
    "MALAT1",
    "FTL",
]
CONTROL_PROBES = (
    [f"BLANK_{i:04d}" for i in range(1, 9)]
    + [f"NegControlProbe_{i:05d}" for i in (42, 67, 79, 101, 118)]
    + [f"NegControlCodeword_{i:04d}" for i in range(500, 504)]
    + [f"UnassignedCodeword_{i:04d}" for i in range(1, 4)]
)


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class SynthConfig:
    """Size of the synthetic dataset; every sample is a pure function of these and its id."""

    seed: int = 0
    n_visium: int = 3
    n_st: int = 1
    n_xenium: int = 2
    slide_size_um: float = 1600.0
    n_genes: int = 300

    def __post_init__(self) -> None:
        if self.n_genes < 60:
            raise MintError(f"synthetic n_genes={self.n_genes}: need at least 60")
        if self.slide_size_um < 300:
            raise MintError(f"synthetic slide_size_um={self.slide_size_um}: need at least 300")


@dataclass(frozen=True)
class SampleSpec:
    id: str
    technology: str
    index: int  # index within its technology
    slide_seed: int
    pixel_size_um: float
    pixel_size_embedded: float
    width_um: float
    height_um: float
    organ: str
    oncotree_code: str
    patient: str
    dataset_title: str
    bench_task: str | None = None

    @property
    def width_px(self) -> int:
        return int(round(self.width_um / self.pixel_size_um))

    @property
    def height_px(self) -> int:
        return int(round(self.height_um / self.pixel_size_um))

    def model(self) -> SlideModel:
        return random_slide_model(self.slide_seed, self.width_um, self.height_um)


def _mix(seed: int, *parts: int) -> int:
    return int(np.random.default_rng([int(seed), *parts]).integers(2**31 - 1))


def sample_specs(cfg: SynthConfig) -> list[SampleSpec]:
    """All synthetic samples (training then bench), without touching any pixel."""
    specs: list[SampleSpec] = []
    s = float(cfg.slide_size_um)
    plan = [
        ("Visium", "SYNV", cfg.n_visium, 1.0),
        ("Spatial Transcriptomics", "SYNST", cfg.n_st, 1.0),
        ("Xenium", "SYNX", cfg.n_xenium, 0.5),
    ]
    for t_i, (tech, prefix, n, extent) in enumerate(plan):
        for i in range(n):
            ps = _PIXEL_SIZES[tech][i % len(_PIXEL_SIZES[tech])]
            organ, onco = _ORGANS[i % len(_ORGANS)]
            # SYNV002 shares its patient with the Visium bench cohort (exercises the leakage report)
            if tech == "Visium" and i == 2:
                dataset, patient = "MINT synthetic Visium bench cohort", "Patient B"
            else:
                dataset, patient = f"MINT synthetic {tech} cohort {i // 2}", f"patient {i}"
            specs.append(
                SampleSpec(
                    id=f"{prefix}{i:03d}",
                    technology=tech,
                    index=i,
                    slide_seed=_mix(cfg.seed, t_i, i),
                    pixel_size_um=ps,
                    pixel_size_embedded=1.0 if (tech == "Xenium" and i == 0) else ps,
                    width_um=s * extent,
                    height_um=s * extent * (0.9 if i % 2 else 1.0),
                    organ=organ,
                    oncotree_code=onco,
                    patient=patient,
                    dataset_title=dataset,
                )
            )
    bench_extent = 0.5
    for b_i, task in enumerate(SYNTHETIC_BENCH_TASKS.values()):
        for i, sid in enumerate(task.sample_ids):
            ps = 0.5 if task.technology == "Visium" else _PIXEL_SIZES["Xenium"][i % 2]
            patient = ("Patient A", "Patient B")[i * 2 // max(len(task.sample_ids), 1)]
            specs.append(
                SampleSpec(
                    id=sid,
                    technology=task.technology,
                    index=i,
                    slide_seed=_mix(cfg.seed, 10 + b_i, i),
                    pixel_size_um=ps,
                    pixel_size_embedded=ps,
                    width_um=s * bench_extent,
                    height_um=s * bench_extent,
                    organ="Bowel",
                    oncotree_code="COAD",
                    patient=patient if task.technology == "Visium" else f"patient X{i}",
                    dataset_title=f"MINT synthetic {task.technology} bench cohort",
                    bench_task=task.name,
                )
            )
    return specs


def spec_of(cfg: SynthConfig, sample_id: str) -> SampleSpec:
    for sp in sample_specs(cfg):
        if sp.id == sample_id:
            return sp
    raise MintError(f"{sample_id} synthetic metadata: unknown sample id for this synthetic config")


# --------------------------------------------------------------------------- genes
@dataclass
class GeneModel:
    """Genes shared by all samples: per-type rates and who measures what."""

    genes: list[str]  # universe
    log_rates: np.ndarray  # (G, K)
    visium: list[str]
    xenium: list[str]  # panel without controls

    def rates(self, names: list[str]) -> np.ndarray:
        """(len(names), K) rates normalised so each cell type's rates sum to 1 over `names`."""
        idx = [self._index[n] for n in names]
        r = np.exp(self.log_rates[idx])
        return r / r.sum(0, keepdims=True)

    def __post_init__(self) -> None:
        self._index = {g: i for i, g in enumerate(self.genes)}


def gene_model(seed: int, n_genes: int) -> GeneModel:
    rng = np.random.default_rng([int(seed), 1234])
    named = [g for k in range(K) for g in MARKERS[k]] + HOUSEKEEPING
    n_xonly = max(10, n_genes // 15)
    synthetic = [f"SG{i:04d}" for i in range(1, n_genes - len(named) + 1)]
    visium = (named + synthetic)[:n_genes]
    xonly = [f"XG{i:03d}" for i in range(1, n_xonly + 1)]
    genes = visium + xonly
    g = len(genes)
    base = rng.normal(-0.5, 1.0, g)
    effect = rng.normal(0.0, 0.25, (g, K))
    programmes = rng.random(g) < 0.45  # genes with a strong cell-type programme
    effect[programmes] += rng.normal(0.0, 1.3, (int(programmes.sum()), K))
    pos = {n: i for i, n in enumerate(genes)}
    for k, names in MARKERS.items():
        for n in names:
            effect[pos[n]] = -1.0
            effect[pos[n], k] = 3.0
    for n in HOUSEKEEPING:
        base[pos[n]] = 2.5
        effect[pos[n]] = rng.normal(0, 0.1, K)
    log_rates = (base[:, None] + effect).astype(np.float64)
    n_panel = int(min(max(60, n_genes * 0.35), 140))
    core = [n for k in range(K) for n in MARKERS[k]]
    rest = [x for x in visium if x not in core and x not in HOUSEKEEPING]
    pick = list(rng.choice(rest, size=min(len(rest), max(0, n_panel - len(core))), replace=False))
    xenium = sorted(core + pick) + xonly
    return GeneModel(genes=genes, log_rates=log_rates, visium=visium, xenium=xenium)


def _sample_genes(spec: SampleSpec, gm: GeneModel, seed: int) -> list[str]:
    """The genes this sample measured (one Visium sample lacks ~10%, so vocab masks matter)."""
    if spec.technology == "Xenium":
        return list(gm.xenium)
    genes = list(gm.visium)
    if spec.technology == "Visium" and spec.bench_task is None and spec.index == 1:
        rng = np.random.default_rng([seed, 99])
        drop = set(rng.choice(genes[len(HOUSEKEEPING) :], size=len(genes) // 10, replace=False))
        genes = [g for g in genes if g not in drop]
    return genes


# --------------------------------------------------------------------------- spots and counts
def _visium_grid(spec: SampleSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hexagonal Visium spot centres (um), array rows and cols, covering the slide."""
    dy = VISIUM_SPOT_DIST_UM * math.sqrt(3) / 2
    xs, ys, rows, cols = [], [], [], []
    r = 0
    y = 60.0
    while y < spec.height_um - 30:
        x = 60.0 + (VISIUM_SPOT_DIST_UM / 2 if r % 2 else 0.0)
        c = r % 2
        while x < spec.width_um - 30:
            xs.append(x)
            ys.append(y)
            rows.append(r)
            cols.append(c)
            x += VISIUM_SPOT_DIST_UM
            c += 2
        y += dy
        r += 1
    return np.array(xs), np.array(ys), np.array(rows), np.array(cols)


def _st_grid(spec: SampleSpec):
    xs, ys, rows, cols = [], [], [], []
    for r, y in enumerate(np.arange(100.0, spec.height_um - 60, ST_SPOT_DIST_UM)):
        for c, x in enumerate(np.arange(100.0, spec.width_um - 60, ST_SPOT_DIST_UM)):
            xs.append(x)
            ys.append(y)
            rows.append(r)
            cols.append(c)
    return np.array(xs), np.array(ys), np.array(rows), np.array(cols)


def _visium_barcodes(rng: np.random.Generator, n: int) -> list[str]:
    letters = np.array(list("ACGT"))
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        b = "".join(letters[rng.integers(0, 4, 16)]) + "-1"
        if b not in seen:
            seen.add(b)
            out.append(b)
    return out


def _nb(rng: np.random.Generator, mu: np.ndarray, shape_r: float = 4.0) -> np.ndarray:
    """Negative-binomial counts with mean `mu` (Poisson-Gamma, dispersion 1/shape_r)."""
    return rng.poisson(mu * rng.gamma(shape_r, 1.0 / shape_r, size=mu.shape))


def _spot_table(spec: SampleSpec, model: SlideModel, gm: GeneModel, seed: int):
    """Spots of a Visium/ST sample: obs DataFrame, spatial (x, y px), counts, genes."""
    rng = np.random.default_rng([seed, 2, _mix(seed, spec.slide_seed)])
    if spec.technology == "Spatial Transcriptomics":
        x, y, rows, cols = _st_grid(spec)
        radius, depth = ST_SPOT_DIAMETER_UM / 2, 6000.0
        barcodes = [f"{r}x{c}" for r, c in zip(rows, cols, strict=True)]
    else:
        x, y, rows, cols = _visium_grid(spec)
        radius, depth = VISIUM_SPOT_DIAMETER_UM / 2, 2500.0
        barcodes = _visium_barcodes(rng, len(x))
    frac, tissue = model.composition(x, y, radius)
    # context: keep spots with any tissue within a patch half-width (some barely tissue)
    _, near = model.composition(x, y, 60.0, n=31)
    keep = near > 0
    x, y, rows, cols, frac, tissue = (
        x[keep],
        y[keep],
        rows[keep],
        cols[keep],
        frac[keep],
        tissue[keep],
    )
    barcodes = [b for b, k in zip(barcodes, keep, strict=True) if k]
    genes = _sample_genes(spec, gm, seed)
    rates = gm.rates(genes)  # (G, K)
    sample_factor = rng.uniform(0.6, 1.4)
    gene_batch = np.exp(rng.normal(0.0, 0.15, len(genes)))
    mu = depth * sample_factor * (frac @ rates.T) * gene_batch + 0.02  # ambient
    counts = _nb(rng, mu).astype(np.float32)
    obs = pd.DataFrame(
        {
            "in_tissue": (tissue >= 0.5).astype(np.int64),
            "array_row": rows.astype(np.int64),
            "array_col": cols.astype(np.int64),
            "pxl_col_in_fullres": x / spec.pixel_size_um,
            "pxl_row_in_fullres": y / spec.pixel_size_um,
            "tissue_frac": tissue,
            **{f"frac_{name}": frac[:, k] for k, name in enumerate(CELL_TYPES)},
        },
        index=pd.Index(barcodes, name=None),
    )
    spatial = np.stack([x, y], 1) / spec.pixel_size_um
    return obs, spatial, counts, genes


_CELL_DEPTH = np.array([110.0, 60.0, 45.0, 40.0, 80.0])  # transcripts per cell by type


def _xenium_id(n: np.ndarray) -> np.ndarray:
    """Xenium-style cell ids: 8 hex digits spelled with letters a-p, then '-1'."""
    out = []
    for v in n.tolist():
        out.append("".join(chr(ord("a") + int(ch, 16)) for ch in f"{v:08x}") + "-1")
    return np.array(out, dtype=object)


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


@dataclass
class XeniumData:
    cells: dict[str, np.ndarray]  # x, y (um), type, cell_radius, ...
    cell_ids: np.ndarray
    transcripts: pd.DataFrame


def _xenium_data(spec: SampleSpec, model: SlideModel, gm: GeneModel, seed: int) -> XeniumData:
    rng = np.random.default_rng([seed, 3, _mix(seed, spec.slide_seed)])
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
            "is_gene": ~np.isin(feat[order], CONTROL_PROBES),
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


def _pseudo_spots(tr: pd.DataFrame, pixel_size_um: float):
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


def _write_h5ad(
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
        image_filename=f"{spec.id}.tif",
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
    grid = _st_grid(spec) if spec.technology == "Spatial Transcriptomics" else _visium_grid(spec)
    radius = (
        ST_SPOT_DIAMETER_UM
        if spec.technology == "Spatial Transcriptomics"
        else VISIUM_SPOT_DIAMETER_UM
    ) / 2
    return int((model.composition(grid[0], grid[1], radius, n=21)[1] >= 0.5).sum())


def synthetic_metadata(
    seed: int = 0,
    n_visium: int = 3,
    n_st: int = 1,
    n_xenium: int = 2,
    slide_size_um: float = 1600.0,
    n_genes: int = 300,
) -> pd.DataFrame:
    """The HEST metadata table of the synthetic dataset (training and bench samples).

    Pure and fast (no pixels): the Snakefile calls it at parse time.
    """
    cfg = SynthConfig(seed, n_visium, n_st, n_xenium, float(slide_size_um), n_genes)
    gm = gene_model(cfg.seed, cfg.n_genes)
    rows = []
    for spec in sample_specs(cfg):
        model = spec.model()
        rows.append(
            _metadata_row(
                spec, len(_sample_genes(spec, gm, cfg.seed)), _spots_under_tissue(spec, model)
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


def _write_cell_seg(
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


def _transcript_variants(df: pd.DataFrame, xd: XeniumData, variants: set[str]):
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
    seed: int = 0,
    n_visium: int = 3,
    n_st: int = 1,
    n_xenium: int = 2,
    slide_size_um: float = 1600.0,
    n_genes: int = 300,
    variants: tuple[str, ...] = (),
) -> list[Path]:
    """Write one synthetic sample in HEST layout under `out_dir`; returns the files written.

    `variants` (names from `FORMAT_VARIANTS`) writes the same data in other real-file forms.
    """
    variant_set = _check_variants(variants)
    cfg = SynthConfig(seed, n_visium, n_st, n_xenium, float(slide_size_um), n_genes)
    spec = spec_of(cfg, sample_id)
    gm = gene_model(cfg.seed, cfg.n_genes)
    model = spec.model()
    out = Path(out_dir)
    written: list[Path] = []
    sid = spec.id

    if spec.technology == "Xenium":
        xd = _xenium_data(spec, model, gm, cfg.seed)
        obs, spatial, counts, genes = _pseudo_spots(xd.transcripts, spec.pixel_size_um)
        p = out / "transcripts" / f"{sid}_transcripts.parquet"
        with atomic_path(p) as tmp:
            import pyarrow.parquet as pq

            pq.write_table(_transcript_variants(xd.transcripts, xd, variant_set), tmp)
        written.append(p)
        p = out / "xenium_seg" / f"{sid}_xenium_cell_seg.parquet"
        _write_cell_seg(p, spec, xd, variant_set)
        written.append(p)
        n_genes_sample = len(gm.xenium)
    else:
        obs, spatial, counts, genes = _spot_table(spec, model, gm, cfg.seed)
        n_genes_sample = len(genes)
    p = out / "st" / f"{sid}.h5ad"
    _write_h5ad(p, obs, spatial, counts, genes)
    written.append(p)

    p = out / "tissue_seg" / f"{sid}_contours.geojson"
    contours = _tissue_geojson(spec, model)
    if "contours_old" in variant_set:
        contours = _old_format_contours(contours)
    write_json(p, contours, indent=None)
    written.append(p)

    row = _metadata_row(spec, n_genes_sample, _spots_under_tissue(spec, model))
    row = {k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()}
    p = out / "metadata" / f"{sid}.json"
    write_json(p, row)
    written.append(p)

    p = out / "wsis" / f"{sid}.tif"
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


# --------------------------------------------------------------------------- HEST-Bench look-alike
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
        xd = _xenium_data(spec, model, gm, seed)
        obs, spatial, counts, genes = _pseudo_spots(xd.transcripts, spec.pixel_size_um)
    else:
        obs, spatial, counts, genes = _spot_table(spec, model, gm, seed)
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

    def is_control(g: str) -> bool:
        return any(s in g for s in ("BLANK", "Control", "Unassigned", "NegControl"))

    shared = sorted(set.intersection(*(set(a.var_names) for a in adatas)))
    shared = [g for g in shared if not is_control(g)]
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
    out_dir: str | os.PathLike,
    task: str,
    seed: int = 0,
    slide_size_um: float = 1600.0,
    n_genes: int = 300,
    n_visium: int = 3,
    n_st: int = 1,
    n_xenium: int = 2,
) -> Path:
    """Write one synthetic HEST-Bench task to `out_dir/<task>/` (atomically); returns that folder."""
    import anndata as ad

    from mint.io import atomic_dir

    if task not in SYNTHETIC_BENCH_TASKS:
        raise MintError(
            f"unknown synthetic bench task {task!r} (known: {', '.join(SYNTHETIC_BENCH_TASKS)})"
        )
    bt = SYNTHETIC_BENCH_TASKS[task]
    cfg = SynthConfig(seed, n_visium, n_st, n_xenium, float(slide_size_um), n_genes)
    specs = {s.id: s for s in sample_specs(cfg)}
    gm = gene_model(cfg.seed, cfg.n_genes)
    dest = Path(out_dir) / task
    with atomic_dir(dest) as tmp:
        adatas = []
        for sid in bt.sample_ids:
            obs, spatial, counts, genes, imgs, coords, barcodes = _bench_sample(
                specs[sid], gm, cfg.seed
            )
            _write_h5ad(tmp / "adata" / f"{sid}.h5ad", obs, spatial, counts, genes)
            a = ad.AnnData(X=counts, obs=obs[[]].copy(), var=pd.DataFrame(index=genes))
            adatas.append(a)
            _write_patches(tmp / "patches" / f"{sid}.h5", imgs, coords, barcodes)
        write_json(tmp / "var_50genes.json", {"genes": _select_bench_genes(adatas)})
        (tmp / "splits").mkdir()
        for k, (train, test) in enumerate(_bench_folds(bt, specs)):
            for name, ids in (("train", train), ("test", test)):
                pd.DataFrame(
                    {
                        "sample_id": ids,
                        "patches_path": [f"patches/{s}.h5" for s in ids],
                        "expr_path": [f"adata/{s}.h5ad" for s in ids],
                    }
                ).to_csv(tmp / "splits" / f"{name}_{k}.csv", index=False)
    log.info("synthetic bench task %s -> %s", task, dest)
    return dest


def generate_all(
    out_dir: str | os.PathLike,
    bench_out: str | os.PathLike | None,
    cfg: SynthConfig,
    include_bench_samples: bool = False,
) -> pd.DataFrame:
    """Write the metadata CSV, every training sample and every bench task."""
    from tqdm import tqdm

    df = synthetic_metadata(**asdict(cfg))
    write_metadata_csv(Path(out_dir) / "HEST_metadata.csv", df)
    specs = sample_specs(cfg)
    todo = [s for s in specs if include_bench_samples or s.bench_task is None]
    for s in tqdm(todo, desc="synthetic samples", disable=None):
        generate_sample(s.id, out_dir, **asdict(cfg))
    if bench_out is not None:
        for task in SYNTHETIC_BENCH_TASKS:
            generate_bench(bench_out, task, **asdict(cfg))
    return df
