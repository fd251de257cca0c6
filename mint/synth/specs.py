"""What the synthetic HEST is made of, before any pixel or count: its size (`SynthConfig`), its
samples (`sample_specs`) and its genes (`gene_model`).

Everything is a deterministic function of the config and the sample id: the workflow calls
`mint.synth.hest.synthetic_metadata` at parse time, and each download job writes one sample.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

import numpy as np

from mint.errors import MintError
from mint.hest.bench import SYNTHETIC_BENCH_TASKS
from mint.synth.tissue import K, SlideModel, random_slide_model

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

    @classmethod
    def from_config(cls, section: dict) -> SynthConfig:
        """From the workflow config's `synthetic` section (which also sizes the EVA task)."""
        return cls(
            **{f.name: section[f.name] for f in dataclasses.fields(cls) if f.name in section}
        )

    def cli_flags(self) -> dict[str, object]:
        """{'--n-visium': 3, ...}: the `mint synth` flags that give this config."""
        return {_flag(f.name): getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One flag per field with the field's type and default: the fields above are the only
        list of the synthetic sizes."""
        g = parser.add_argument_group(
            "synthetic dataset size (must match between every `mint synth` call of a run)"
        )
        for f in dataclasses.fields(cls):
            g.add_argument(_flag(f.name), type=type(f.default), default=f.default)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SynthConfig:
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


#: The demo's sizes (the schema's defaults), frozen: safe as a default argument.
DEFAULT_CONFIG = SynthConfig()


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


def mix_seed(seed: int, *parts: int) -> int:
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
                    slide_seed=mix_seed(cfg.seed, t_i, i),
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
                    slide_seed=mix_seed(cfg.seed, 10 + b_i, i),
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


def sample_genes(spec: SampleSpec, gm: GeneModel, seed: int) -> list[str]:
    """The genes this sample measured (one Visium sample lacks ~10%, so vocab masks matter)."""
    if spec.technology == "Xenium":
        return list(gm.xenium)
    genes = list(gm.visium)
    if spec.technology == "Visium" and spec.bench_task is None and spec.index == 1:
        rng = np.random.default_rng([seed, 99])
        drop = set(rng.choice(genes[len(HOUSEKEEPING) :], size=len(genes) // 10, replace=False))
        genes = [g for g in genes if g not in drop]
    return genes
