"""Report sections a scientist needs to judge MINT: the ablation table (HEST-Bench with fold
std, EVA, forgetting), a paired per-gene comparison with the base model, HEST-Bench with
error bars, our rows placed inside the published leaderboard, DINO health and provenance.

Every input is read defensively: a missing drift file, health record or eva summary leaves a
dash and a sentence saying what is missing, never a failed report.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import html
import json
import logging
import math
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from mint.hest.bench import AVERAGE_EXCLUDED  # noqa: E402

log = logging.getLogger(__name__)

PACKAGES = (
    "mint-pathology",
    "torch",
    "timm",
    "numpy",
    "scikit-learn",
    "snakemake",
    "kaiko-eva",
    "webdataset",
)


# --------------------------------------------------------------------------- inputs
@dataclass
class ProbeResult:
    """One `results/bench/{model}/{task}.json`, one variant."""

    model: str
    task: str
    variant: str
    mean: float
    std: float
    folds: list[float]
    genes: dict[str, float]


def read_probe_results(paths: list[str | Path]) -> list[ProbeResult]:
    out = []
    for p in paths:
        try:
            res = json.loads(Path(p).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            log.warning("%s: unreadable probe result (%s)", p, exc)
            continue
        for variant, v in (res.get("variants") or {}).items():
            folds = [f.get("mean") for f in v.get("folds", [])]
            out.append(
                ProbeResult(
                    model=str(res.get("model")),
                    task=str(res.get("task")),
                    variant=variant,
                    mean=_num(v.get("mean")),
                    std=_num(v.get("std")),
                    folds=[_num(f) for f in folds],
                    genes={g: _num(x) for g, x in (v.get("gene_means") or {}).items()},
                )
            )
    return out


def _num(v) -> float:
    try:
        return math.nan if v is None else float(v)
    except (TypeError, ValueError):
        return math.nan


def read_json_or_none(path: str | Path | None) -> dict | None:
    if not path:
        return None
    p = Path(path)
    if not p.is_file():
        return None
    try:
        value = json.loads(p.read_text())
    except json.JSONDecodeError:
        log.warning("%s: not valid JSON; ignored", p)
        return None
    return value if isinstance(value, dict) else None


def read_health(run_dir: Path) -> dict | None:
    """The run's DINO health record: `health.json` next to metrics.csv, else config.json's
    `health` key (the trainer writes one of them); None when the run has neither."""
    rec = read_json_or_none(run_dir / "health.json")
    if rec is not None:
        return rec
    cfg = read_json_or_none(run_dir / "config.json") or {}
    health = cfg.get("health")
    return health if isinstance(health, dict) else None


def health_summary(rec: dict | None) -> str:
    """One line for the ablation table: the warning if any, else the entropy figures."""
    if rec is None:
        return "–"
    warnings = rec.get("warnings") or rec.get("warning")
    if isinstance(warnings, str):
        warnings = [warnings]
    if warnings:
        return "WARNING: " + "; ".join(str(w) for w in warnings)
    stats = rec.get("dino") if isinstance(rec.get("dino"), dict) else rec
    parts = []
    for key in ("status", "teacher_entropy", "teacher_entropy_ratio", "ln_k", "dino_kl"):
        if key in stats:
            v = stats[key]
            parts.append(f"{key} {v:.3f}" if isinstance(v, float) else f"{key} {v}")
    return ", ".join(parts) or "ok"


# --------------------------------------------------------------------------- tables
def _avg(results: list[ProbeResult], model: str, variant: str, tasks: list[str]):
    rows = {r.task: r for r in results if r.model == model and r.variant == variant}
    if not tasks or any(t not in rows for t in tasks):
        return math.nan, math.nan
    means = [rows[t].mean for t in tasks]
    stds = [rows[t].std for t in tasks]
    return float(np.mean(means)), float(np.mean(stds))


def averaged_tasks(results: list[ProbeResult]) -> list[str]:
    return sorted({r.task for r in results if r.task not in AVERAGE_EXCLUDED})


def ablation_table(
    results: list[ProbeResult],
    eva: pd.DataFrame | None,
    drift: dict[str, dict],
    health: dict[str, dict | None],
    base: str,
    runs: list[str],
) -> pd.DataFrame:
    """One row per model (base first): HEST-Bench average (cls, st) with mean fold std, EVA
    average, CKA / cosine against the base, morphology probe, DINO health."""
    tasks = averaged_tasks(results)
    rows = []
    for model in [base, *runs]:
        cls_mean, cls_std = _avg(results, model, "cls", tasks)
        st_mean, st_std = _avg(results, model, "st", tasks)
        d = drift.get(model) or {}
        morph = d.get("morphology") or {}
        eva_score = math.nan
        if eva is not None and "average" in eva.columns:
            hit = eva[eva["model"] == model]
            if len(hit):
                eva_score = _num(hit["average"].iloc[0])
        rows.append(
            {
                "model": model,
                "role": "base" if model == base else "run",
                "HEST-Bench cls": cls_mean,
                "± fold std (cls)": cls_std,
                "HEST-Bench st": st_mean,
                "± fold std (st)": st_std,
                "EVA": eva_score,
                "CKA to base": 1.0 if model == base else _num(d.get("linear_cka")),
                "cosine to base": 1.0 if model == base else _num(d.get("mean_cosine")),
                "morphology probe": _num(morph.get("base") if model == base else morph.get("run")),
                "DINO health": "–" if model == base else health_summary(health.get(model)),
            }
        )
    if not any(r["model"] == base and not math.isnan(r["morphology probe"]) for r in rows):
        # the base's own morphology score is in every run's drift.json; take the first
        for d in drift.values():
            if (d or {}).get("morphology"):
                rows[0]["morphology probe"] = _num(d["morphology"].get("base"))
                break
    return pd.DataFrame(rows)


def ablation_notes(table: pd.DataFrame, n_classes: int | None = None) -> list[str]:
    """Plain sentences on what the ablation table says, whatever it says."""
    notes: list[str] = []
    runs = table[table["role"] == "run"]
    base = table[table["role"] == "base"]
    if runs.empty or base.empty:
        return notes
    b = base.iloc[0]
    cka = runs.dropna(subset=["CKA to base"])
    if not cka.empty:
        order = cka.sort_values("CKA to base", ascending=False)
        notes.append(
            "Kept most of the base representation (CKA): "
            + ", ".join(f"{r['model']} {r['CKA to base']:.3f}" for _, r in order.iterrows())
            + "."
        )
        by = cka.set_index("model")
        if "mint" in by.index and "finetune" in by.index:
            m, f = by.at["mint", "CKA to base"], by.at["finetune", "CKA to base"]
            verdict = "keeps more of" if m > f else "does not keep more of"
            notes.append(
                f"MINT {verdict} the base than the plain fine-tune (CKA {m:.3f} vs {f:.3f})."
            )
    gain = runs["HEST-Bench cls"] - b["HEST-Bench cls"]
    if gain.notna().any():
        best = runs.loc[gain.idxmax()]
        notes.append(
            f"HEST-Bench (cls): base {b['HEST-Bench cls']:.3f}; best run "
            f"{best['model']} {best['HEST-Bench cls']:.3f} (fold std about "
            f"{runs['± fold std (cls)'].mean():.3f}, so differences between runs smaller than "
            "that are not resolved by this benchmark)."
        )
    morph = b.get("morphology probe")
    if n_classes and morph is not None and not math.isnan(morph) and morph < 1.5 / n_classes:
        notes.append(
            f"The base model's morphology probe is near chance ({morph:.3f}, chance "
            f"{1 / n_classes:.3f}): it did not learn the nuclear variants in pretraining, so "
            "there is no morphology to forget and the morphology column cannot separate the runs."
        )
    warned = [r["model"] for _, r in runs.iterrows() if str(r["DINO health"]).startswith("WARN")]
    if warned:
        notes.append("DINO health warnings for: " + ", ".join(warned) + ".")
    return notes


def paired_gene_table(
    results: list[ProbeResult], base: str, runs: list[str], variants=("cls", "st")
) -> pd.DataFrame:
    """Per run and variant: the per-gene Pearson r against the base's `cls`, gene by gene over
    every task (genes keyed by task): median difference and fraction of genes improved."""
    base_genes = {}
    for r in results:
        if r.model == base and r.variant == "cls":
            base_genes.update({(r.task, g): v for g, v in r.genes.items()})
    rows = []
    for run in runs:
        for variant in variants:
            diffs = []
            for r in results:
                if r.model != run or r.variant != variant:
                    continue
                for g, v in r.genes.items():
                    b = base_genes.get((r.task, g))
                    if b is not None and not math.isnan(b) and not math.isnan(v):
                        diffs.append(v - b)
            if not diffs:
                continue
            d = np.asarray(diffs)
            rows.append(
                {
                    "run": run,
                    "variant": variant,
                    "vs": f"{base} / cls",
                    "genes": len(d),
                    "median Δr": float(np.median(d)),
                    "mean Δr": float(np.mean(d)),
                    "fraction improved": float(np.mean(d > 0)),
                }
            )
    return pd.DataFrame(rows)


def leaderboard_with_ours(
    results: list[ProbeResult], base: str, runs: list[str]
) -> tuple[pd.DataFrame, bool]:
    """The published leaderboard with our `cls` rows inserted by average, marked as ours.

    Returns (table, comparable): comparable is False when our tasks are not the published
    ones (the synthetic demo), in which case our averages are over other tasks."""
    from mint.bench.summary import leaderboard_tasks, load_leaderboard

    lb = load_leaderboard()
    lb_tasks = leaderboard_tasks(lb)
    ours_tasks = averaged_tasks(results)
    comparable = set(ours_tasks) == set(lb_tasks)
    table = lb[["model", "average"]].copy()
    table["source"] = "published"
    ours = []
    for model in [base, *runs]:
        mean, std = _avg(results, model, "cls", ours_tasks)
        if not math.isnan(mean):
            ours.append({"model": f"{model} (ours)", "average": mean, "source": "ours"})
    table = pd.concat([table, pd.DataFrame(ours)], ignore_index=True)
    table = table.sort_values("average", ascending=False, na_position="last").reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table, comparable


# --------------------------------------------------------------------------- figures
def error_bar_figure(results: list[ProbeResult], models: list[str], variant: str = "cls"):
    tasks = sorted({r.task for r in results})
    by = {(r.model, r.task): r for r in results if r.variant == variant}
    models = [m for m in models if any((m, t) in by for t in tasks)]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(tasks) + 2), 3.6))
    width = 0.8 / max(len(models), 1)
    x = np.arange(len(tasks))
    cmap = plt.get_cmap("tab10")
    for i, m in enumerate(models):
        means = [by[(m, t)].mean if (m, t) in by else np.nan for t in tasks]
        stds = [by[(m, t)].std if (m, t) in by else np.nan for t in tasks]
        ax.bar(
            x + (i - (len(models) - 1) / 2) * width,
            means,
            width,
            yerr=stds,
            capsize=3,
            label=m,
            color=cmap(i % 10),
        )
    ax.set_xticks(x, tasks, rotation=20, ha="right")
    ax.set_ylabel(f"Pearson r ({variant})")
    ax.set_title(f"HEST-Bench per task, {variant} embedding (error bars: std over folds)")
    ax.axhline(0, color="black", lw=0.5)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


# --------------------------------------------------------------------------- provenance
def _git_commit(where: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        commit = out.stdout.strip()
        if not commit:
            return "unknown (not a git checkout)"
        dirty = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
        return commit + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown (git not available)"


def _version(pkg: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "not installed"


def _device() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        import os

        cores = os.cpu_count()
        import torch

        gpu = (
            ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
            if torch.cuda.is_available()
            else "no GPU"
        )
    except Exception:  # noqa: BLE001 - provenance must never fail the report
        cores, gpu = "?", "unknown"
    return f"{platform.node()}: {cpu}, {cores} CPU cores, {gpu} (report job's machine)"


def provenance(config_hash: str | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    import mint

    root = Path(mint.__file__).resolve().parent.parent
    rec = {
        "date (UTC)": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "git commit": _git_commit(root),
        "config hash (sha256 of the resolved config)": config_hash or "not given",
        "mint": mint.__version__,
        "python": platform.python_version(),
        "device": _device(),
    }
    for pkg in PACKAGES[1:]:
        rec[pkg] = _version(pkg)
    rec.update(extra or {})
    return rec


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def provenance_html(rec: dict[str, str]) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rec.items()
    )
    return f'<table class="data provenance">{rows}</table>'
