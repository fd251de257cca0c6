"""`mint select`: which HEST samples train the model, and which of them are close to a bench sample.

Default (v1.1.0): all Homo sapiens samples minus every HEST-Bench sample = 577 (Visium 364,
ST 163, Xenium 44, Visium HD 6). The same `select_samples` is called by the Snakefile at parse
time, so the DAG and `results/samples.tsv` can never disagree.

Leakage: removing the bench samples themselves is not enough for a clean benchmark. Training
samples that come from the same patient (patient strings normalised; compared within a
dataset, since "Patient 1" means different people in different studies) or the same dataset as
a bench sample, and the known pairs of NOTES.md (same patient, same cohort, a duplicate), are
reported in `results/leakage.tsv` and can be removed with `--exclude-leakage`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field

import pandas as pd

from mint.errors import MintError
from mint.hest.bench import bench_tasks
from mint.hest.metadata import (
    canonical_technology,
    level_of,
    modality_of,
    normalise_patient,
    read_metadata,
)
from mint.io import atomic_path

log = logging.getLogger(__name__)

SAMPLE_COLUMNS = [
    "id",
    "st_technology",
    "organ",
    "oncotree_code",
    "species",
    "patient",
    "dataset_title",
    "pixel_size_um_estimated",
    "level",
    "modality",
]
LEAKAGE_COLUMNS = [
    "id",
    "st_technology",
    "reason",
    "bench_samples",
    "bench_tasks",
    "detail",
    "excluded",
]


def _r(prefix: str, lo: int, hi: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(lo, hi + 1)]


# Known near-leakage of HEST v1.1.0 (NOTES.md): training id -> (bench ids, reason, detail).
KNOWN_LEAKAGE: dict[str, tuple[list[str], str, str]] = {
    "TENX98": (["TENX99"], "known_patient", "same patient as TENX99 (IDC)"),
    "NCBI784": (["NCBI785"], "known_patient", "same patient as NCBI785 (IDC)"),
    "TENX114": (["TENX111"], "known_dataset", "same colon Xenium dataset as TENX111 (COAD)"),
    **{
        t: (["TENX147", "TENX148", "TENX149"], "known_cohort", "same cohort as TENX147-149 (COAD)")
        for t in _r("TENX", 152, 156)
    },
    "TENX128": (["TENX155"], "known_duplicate", "duplicate of TENX155 (same cohort as COAD bench)"),
    **{
        z: (
            ["ZEN36", "ZEN40", "ZEN48", "ZEN49"],
            "known_cohort",
            "same cohort as ZEN36/40/48/49 (READ)",
        )
        for z in _r("ZEN", 37, 47)
        if z != "ZEN40"  # itself a READ bench sample
    },
}

# Rough on-disk size per sample for the download estimate (the CSV has no file sizes).
_BYTES_PER_WSI_PIXEL = 1.0  # pyramidal JPEG TIFF incl. lower levels (estimate)
_EXTRA_BYTES = {  # st/ h5ad, transcripts, segmentation (estimate)
    "Visium": 30e6,
    "Spatial Transcriptomics": 5e6,
    "Xenium": 3e9,
    "Visium HD": 2e9,
}


@dataclass
class SelectionConfig:
    species: list[str] = field(default_factory=lambda: ["Homo sapiens"])
    technologies: list[str] = field(default_factory=list)
    organs: list[str] = field(default_factory=list)
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    exclude_bench: bool = True
    exclude_leakage: bool = False
    #: Visium HD counts in released HEST files may be unpooled (see mint.data.spots'
    #: Visium HD QC); this leaves the technology out of training altogether.
    exclude_visium_hd: bool = False
    max_samples: int | None = None

    @classmethod
    def from_dict(cls, d: dict | None) -> SelectionConfig:
        """From the workflow's `select:` config section (unknown keys -> MintError naming them)."""
        d = dict(d or {})
        known = set(cls.__dataclass_fields__)
        bad = [k for k in d if k not in known]
        if bad:
            raise MintError(f"select config: unknown key {bad[0]!r}")
        return cls(**d)


@dataclass
class SelectionResult:
    samples: pd.DataFrame  # SAMPLE_COLUMNS
    leakage: pd.DataFrame  # LEAKAGE_COLUMNS

    def counts(self) -> dict[str, int]:
        return self.samples["st_technology"].value_counts().to_dict()


def _check_ids(df: pd.DataFrame, ids: list[str], what: str) -> None:
    known = set(df["id"])
    for i in ids:
        if i not in known:
            raise MintError(
                f"{i} {df.attrs.get('path', 'metadata')}: unknown sample id (in select {what})"
            )


def _leakage(df: pd.DataFrame, train_ids: list[str], bench: dict[str, str]) -> pd.DataFrame:
    """One row per training sample related to a bench sample (bench: id -> task)."""
    by_id = df.set_index("id")
    b_rows = by_id.loc[[b for b in bench if b in by_id.index]]
    b_patient: dict[tuple[str, str], list[str]] = {}
    b_dataset: dict[str, list[str]] = {}
    for bid, r in b_rows.iterrows():
        ds = str(r["dataset_title"]).strip()
        p = normalise_patient(r["patient"])
        b_dataset.setdefault(ds, []).append(bid)
        if p is not None:
            b_patient.setdefault((ds, p), []).append(bid)
    rows = []
    for tid in train_ids:
        r = by_id.loc[tid]
        ds = str(r["dataset_title"]).strip()
        p = normalise_patient(r["patient"])
        reasons: list[str] = []
        related: list[str] = []
        details: list[str] = []
        if p is not None and (ds, p) in b_patient:
            reasons.append("same_patient")
            related += b_patient[(ds, p)]
            details.append(f"patient {r['patient']!s} of dataset shared with bench")
        elif ds in b_dataset:
            reasons.append("same_dataset")
            related += b_dataset[ds]
            details.append("dataset shared with bench")
        if tid in KNOWN_LEAKAGE:
            ids, why, det = KNOWN_LEAKAGE[tid]
            ids = [i for i in ids if i in bench or i in by_id.index]
            reasons.append(why)
            related += ids
            details.append(det)
        if reasons:
            related = sorted(set(related))
            tasks = sorted({bench[b] for b in related if b in bench})
            rows.append(
                {
                    "id": tid,
                    "st_technology": r["st_technology"],
                    "reason": ";".join(dict.fromkeys(reasons)),
                    "bench_samples": ",".join(related),
                    "bench_tasks": ",".join(tasks),
                    "detail": "; ".join(details),
                    "excluded": False,
                }
            )
    return pd.DataFrame(rows, columns=LEAKAGE_COLUMNS)


def select_samples(df: pd.DataFrame, cfg: SelectionConfig, source: str) -> SelectionResult:
    """Apply the filters of `cfg` to the metadata `df` (see module docstring)."""
    _check_ids(df, list(cfg.include), "include")
    _check_ids(df, list(cfg.exclude), "exclude")
    keep = pd.Series(True, index=df.index)
    if cfg.species:
        keep &= df["species"].isin(cfg.species)
    if cfg.technologies:
        techs = {canonical_technology(t) for t in cfg.technologies}
        keep &= df["st_technology"].isin(techs)
    if cfg.exclude_visium_hd:
        keep &= df["st_technology"].map(canonical_technology) != "Visium HD"
    if cfg.organs:
        organs = {o.strip().lower() for o in cfg.organs}
        keep &= df["organ"].astype(str).str.strip().str.lower().isin(organs)
    bench = {s: t.name for t in bench_tasks(source).values() for s in t.sample_ids}
    if cfg.exclude_bench:
        keep &= ~df["id"].isin(list(bench))
    keep &= ~df["id"].isin(list(cfg.exclude))
    cand = df.loc[keep, "id"].tolist()

    leakage = _leakage(df, cand, bench)
    if cfg.exclude_leakage and len(leakage):
        drop = set(leakage["id"]) - set(cfg.include)
        leakage["excluded"] = leakage["id"].isin(drop)
        cand = [c for c in cand if c not in drop]
    for i in cfg.include:
        if i not in cand:
            if i in bench:
                log.warning("%s: included although it is a HEST-Bench sample (%s)", i, bench[i])
            cand.append(i)
    cand = sorted(cand)
    if cfg.max_samples is not None:
        cand = cand[: int(cfg.max_samples)]
    out = df.set_index("id").loc[cand].reset_index()
    out["level"] = [level_of(t) for t in out["st_technology"]]
    out["modality"] = [modality_of(t) for t in out["st_technology"]]
    return SelectionResult(samples=out[SAMPLE_COLUMNS].copy(), leakage=leakage)


def size_estimate(df: pd.DataFrame, ids: list[str]) -> pd.DataFrame:
    """Per technology: samples, level-0 gigapixels and an ESTIMATED download size (GB)."""
    sub = df[df["id"].isin(ids)].copy()
    w = pd.to_numeric(sub.get("fullres_px_width"), errors="coerce")
    h = pd.to_numeric(sub.get("fullres_px_height"), errors="coerce")
    sub["gpx"] = (w * h).fillna(0) / 1e9
    sub["est_gb"] = (
        sub["gpx"] * _BYTES_PER_WSI_PIXEL + sub["st_technology"].map(_EXTRA_BYTES).fillna(0) / 1e9
    )
    g = sub.groupby("st_technology").agg(
        samples=("id", "size"), gigapixels=("gpx", "sum"), est_gb=("est_gb", "sum")
    )
    return g.sort_values("samples", ascending=False)


def write_tsv(path, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, sep="\t", index=False)


# --------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metadata", required=True, help="HEST metadata CSV")
    parser.add_argument("--out", required=True, help="samples TSV to write (results/samples.tsv)")
    parser.add_argument(
        "--leakage-out", required=True, help="leakage report TSV (results/leakage.tsv)"
    )
    parser.add_argument(
        "--source",
        choices=["hub", "local", "synthetic"],
        required=True,
        help="data source: decides which bench tasks (real or synthetic) are excluded",
    )
    parser.add_argument(
        "--species", nargs="*", default=["Homo sapiens"], help="species to keep (none = all)"
    )
    parser.add_argument(
        "--technologies",
        nargs="*",
        default=[],
        help="st_technology values (Visium, ST, Xenium, 'Visium HD')",
    )
    parser.add_argument("--organs", nargs="*", default=[], help="organs to keep (none = all)")
    parser.add_argument("--include", nargs="*", default=[], help="sample ids always kept")
    parser.add_argument("--exclude", nargs="*", default=[], help="sample ids always removed")
    parser.add_argument(
        "--no-exclude-bench", action="store_true", help="keep HEST-Bench samples in training"
    )
    parser.add_argument(
        "--exclude-leakage",
        action="store_true",
        help="also remove samples listed in the leakage report",
    )
    parser.add_argument(
        "--exclude-visium-hd",
        action="store_true",
        help="leave Visium HD samples out (their released counts may be unpooled)",
    )
    parser.add_argument(
        "--max-samples", type=int, default=None, help="keep at most N samples (first by id)"
    )


def run(args: argparse.Namespace) -> int:
    df = read_metadata(args.metadata)
    cfg = SelectionConfig(
        species=list(args.species or []),
        technologies=list(args.technologies or []),
        organs=list(args.organs or []),
        include=list(args.include or []),
        exclude=list(args.exclude or []),
        exclude_bench=not args.no_exclude_bench,
        exclude_leakage=bool(args.exclude_leakage),
        exclude_visium_hd=bool(args.exclude_visium_hd),
        max_samples=args.max_samples,
    )
    res = select_samples(df, cfg, args.source)
    write_tsv(args.out, res.samples)
    write_tsv(args.leakage_out, res.leakage)
    n = len(res.samples)
    est = size_estimate(df, res.samples["id"].tolist())
    lines = [f"selected {n} samples from {args.metadata} -> {args.out}"]
    for tech, r in est.iterrows():
        lines.append(
            f"  {tech:<24} {int(r['samples']):>5} samples  {r['gigapixels']:8.1f} Gpx  ~{r['est_gb']:8.1f} GB (estimate)"
        )
    lines.append(
        f"  {'total':<24} {n:>5} samples  {est['gigapixels'].sum():8.1f} Gpx  ~{est['est_gb'].sum():8.1f} GB "
        "(estimate: WSI ~1 byte/level-0 px + per-technology ST files; real sizes vary)"
    )
    n_leak = len(res.leakage)
    lines.append(
        f"leakage report: {n_leak} training samples share a patient/dataset/cohort with a bench sample"
        + (" (excluded)" if cfg.exclude_leakage else " (kept; --exclude-leakage removes them)")
        + f" -> {args.leakage_out}"
    )
    # stderr: the rule log (`2> {log}`) and the terminal both get it
    print("\n".join(lines), file=sys.stderr, flush=True)
    return 0
