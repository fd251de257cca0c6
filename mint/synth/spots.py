"""Spot-level synthetic samples (Visium, legacy ST): spot grids, barcodes and counts.

A spot's counts are Poisson-Gamma around depth x (cell-type area fractions under the spot) x
per-type gene rates, so morphology predicts expression.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from mint.synth.specs import (
    ST_SPOT_DIAMETER_UM,
    ST_SPOT_DIST_UM,
    VISIUM_SPOT_DIAMETER_UM,
    VISIUM_SPOT_DIST_UM,
    GeneModel,
    SampleSpec,
    mix_seed,
    sample_genes,
)
from mint.synth.tissue import CELL_TYPES, SlideModel


def visium_grid(spec: SampleSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
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


def st_grid(spec: SampleSpec):
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


def spot_table(spec: SampleSpec, model: SlideModel, gm: GeneModel, seed: int):
    """Spots of a Visium/ST sample: obs DataFrame, spatial (x, y px), counts, genes."""
    rng = np.random.default_rng([seed, 2, mix_seed(seed, spec.slide_seed)])
    if spec.technology == "Spatial Transcriptomics":
        x, y, rows, cols = st_grid(spec)
        radius, depth = ST_SPOT_DIAMETER_UM / 2, 6000.0
        barcodes = [f"{r}x{c}" for r, c in zip(rows, cols, strict=True)]
    else:
        x, y, rows, cols = visium_grid(spec)
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
    genes = sample_genes(spec, gm, seed)
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
