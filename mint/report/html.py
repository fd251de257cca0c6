"""`mint report`: one self-contained HTML page comparing the base model with MINT runs.

The page must open offline on a laptop after being copied off the cluster, so every figure is
a PNG embedded as base64 and there is no JavaScript or external stylesheet. The same PNGs are
written to a folder so `snakemake --report` can list them too.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from mint.errors import MintError  # noqa: E402
from mint.io import atomic_dir, atomic_path  # noqa: E402

log = logging.getLogger(__name__)

LOSS_TERMS = ["loss", "loss_visium", "loss_xenium", "loss_dino", "loss_anchor"]


@dataclass
class Figure:
    name: str
    title: str
    png: bytes
    caption: str = ""


@dataclass
class Section:
    title: str
    anchor: str
    blocks: list[str] = field(default_factory=list)


def _fig_to_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _img_tag(fig: Figure) -> str:
    data = base64.b64encode(fig.png).decode("ascii")
    cap = f"<figcaption>{html.escape(fig.caption)}</figcaption>" if fig.caption else ""
    return (
        f'<figure id="fig-{fig.name}"><img alt="{html.escape(fig.title)}" '
        f'src="data:image/png;base64,{data}"/>{cap}</figure>'
    )


def _table(df: pd.DataFrame, caption: str = "", float_digits: int = 3) -> str:
    if df.empty:
        return f'<p class="empty">{html.escape(caption or "table")}: no rows.</p>'
    body = df.to_html(
        index=False,
        na_rep="–",
        float_format=lambda v: f"{v:.{float_digits}f}",
        classes="data",
        border=0,
        escape=True,
    )
    cap = f"<p class='caption'>{html.escape(caption)}</p>" if caption else ""
    return cap + body


def _read_csv(path: str | Path, what: str) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise MintError(f"{path}: {what} not found")
    return pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",", comment=None)


# --------------------------------------------------------------------------- sections


ROLE_ORDER = {"base": 0, "MINT": 1, "backbone": 2}


def _role(model: str, base: str, runs: list[str]) -> str:
    """How a results row relates to the comparison: the base model, a MINT run, or another backbone."""
    if model == base:
        return "base"
    return "MINT" if model in runs else "backbone"


def _score_comparison_figure(
    df: pd.DataFrame, tasks: list[str], label_col: str, title: str, name: str
) -> Figure:
    """Grouped bars: one group per task (+ average), one bar per model/variant row."""
    cols = [t for t in tasks if t in df.columns]
    n_rows = len(df)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(cols) + 2), 3.6))
    width = 0.8 / max(n_rows, 1)
    x = np.arange(len(cols))
    cmap = plt.get_cmap("tab10")
    for i, (_, row) in enumerate(df.iterrows()):
        vals = pd.to_numeric(row[cols], errors="coerce").to_numpy(dtype=float)
        ax.bar(x + (i - (n_rows - 1) / 2) * width, vals, width, label=row[label_col], color=cmap(i))
    ax.set_xticks(x, cols, rotation=30, ha="right")
    ax.set_title(title)
    ax.axhline(0, color="black", lw=0.5)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return Figure(name=name, title=title, png=_fig_to_png(fig))


def bench_section(summary_csv: str, base: str, runs: list[str]) -> tuple[Section, list[Figure]]:
    from mint.bench.summary import load_leaderboard

    df = _read_csv(summary_csv, "HEST-Bench summary")
    sec = Section("HEST-Bench", "hest-bench")
    if df.empty:
        sec.blocks.append("<p>No HEST-Bench results.</p>")
        return sec, []
    meta_cols = {"model", "variant", "average", "HCC", "precision"}
    tasks = [c for c in df.columns if c not in meta_cols]
    df = df.copy()
    df["role"] = [_role(m, base, runs) for m in df["model"]]
    df = df.sort_values(
        by=["role", "model", "variant"],
        key=lambda s: s.map(ROLE_ORDER) if s.name == "role" else s,
    )
    # A variant a model cannot produce (e.g. `st` of a base model) has no scores: drop its row.
    df = df[df[[*tasks, "average"]].notna().any(axis=1)]
    df["label"] = df["model"] + " / " + df["variant"]
    sec.blocks.append(
        "<p>Mean Pearson r over the 50 genes of each task (PCA-256 + ridge, HEST protocol); "
        "<b>average</b> excludes HCC. Rows: our models and embedding variants.</p>"
    )
    show_cols = ["model", "role", "variant", *tasks, "average"] + (["HCC"] if "HCC" in df else [])
    show_cols += ["precision"] if "precision" in df else []  # variant = tokens; precision: forward
    sec.blocks.append(_table(df[show_cols], "Our models"))

    # Base vs MINT delta per task, for every variant both have.
    deltas = []
    base_rows = df[df["model"] == base].set_index("variant")
    for run in runs:
        run_rows = df[df["model"] == run].set_index("variant")
        for variant in run_rows.index:
            ref_variant = variant if variant in base_rows.index else "cls"
            if ref_variant not in base_rows.index:
                continue
            row = {"run": run, "variant": variant, "vs base variant": ref_variant}
            for t in [*tasks, "average"]:
                if t in run_rows.columns:
                    row[t] = run_rows.at[variant, t] - base_rows.at[ref_variant, t]
            deltas.append(row)
    if deltas:
        sec.blocks.append(
            _table(pd.DataFrame(deltas), "Gain of MINT over the base model (r difference)")
        )

    lb = load_leaderboard()
    lb_tasks = [t for t in tasks if t in lb.columns]
    if lb_tasks:
        lb = lb.copy()
        cols = ["model", *lb_tasks]
        lb_avg_tasks = [t for t in lb_tasks if t != "HCC"]
        all_lb_tasks = [c for c in lb.columns if c not in {"model", "average", "HCC"}]
        if set(lb_avg_tasks) != set(all_lb_tasks):
            # A partial run: the published 9-task average is not comparable with ours, so
            # average the leaderboard over the tasks this run has.
            lb["average (these tasks)"] = lb[lb_avg_tasks].mean(axis=1)
            cols += ["average (these tasks)", "average"]
        elif "average" in lb.columns:
            cols.append("average")
        sec.blocks.append(_table(lb[cols], "Published HEST-Bench leaderboard (same tasks)", 4))
    else:
        sec.blocks.append(
            "<p>The published HEST-Bench leaderboard (IDC, PRAD, PAAD, SKCM, COAD, READ, CCRCC, "
            "LUNG, LYMPH_IDC) shares no task with this run (synthetic tasks in the demo); see "
            "below for its reference numbers.</p>"
        )
        sec.blocks.append(_table(lb.head(8), "Published HEST-Bench leaderboard (top 8)", 4))

    figs = [
        _score_comparison_figure(
            df, [*tasks, "average"], "label", "HEST-Bench: Pearson r per task", "hest_bench"
        )
    ]
    sec.blocks.extend(_img_tag(f) for f in figs)
    return sec, figs


def eva_section(summary_csv: str, base: str, runs: list[str]) -> tuple[Section, list[Figure]]:
    from mint.eva.summary import load_leaderboard

    df = _read_csv(summary_csv, "EVA summary")
    sec = Section("EVA (kaiko-eva)", "eva")
    if df.empty:
        sec.blocks.append("<p>No EVA results.</p>")
        return sec, []
    df = df.copy()
    df.insert(1, "role", [_role(m, base, runs) for m in df["model"]])
    meta = {"model", "role", "average", "n_tasks", "note", "embedding", "precision"}
    tasks = [c for c in df.columns if c not in meta]  # embedding/precision: tokens, forward dtype
    sec.blocks.append(
        "<p>Scores from eva's own <code>results.json</code> (test split where the task has one, "
        "else validation), as kaiko's leaderboard reports them; <b>average</b> is the mean of the "
        "tasks other than BACH.</p>"
    )
    sec.blocks.append(_table(df, "Our models"))
    lb = load_leaderboard()
    shared = [t for t in tasks if t in lb.columns]
    lb_cols = ["model", *shared] + (["average"] if "average" in lb.columns else [])
    sec.blocks.append(_table(lb[lb_cols] if shared else lb.head(8), "Published EVA leaderboard"))
    numeric = [
        t for t in [*tasks, "average"] if t in df.columns and pd.api.types.is_numeric_dtype(df[t])
    ]
    figs = []
    if numeric:
        figs.append(_score_comparison_figure(df, numeric, "model", "EVA: score per task", "eva"))
    sec.blocks.extend(_img_tag(f) for f in figs)
    return sec, figs


# Panels of the training curves: each compares like with like (the same term on train and
# held-out data); DINO and anchoring get their own panels, the total loss (a sum of terms whose
# mix differs between train and val) is left out.
CURVE_PANELS = [
    ("loss_visium", "visium regression (MSE)"),
    ("loss_xenium", "xenium regression (MSE)"),
    ("loss_dino", "DINO (cross-entropy)"),
    ("loss_anchor", "anchor (1 - cos)"),
    ("teacher_entropy", "DINO teacher entropy"),
    ("dino_kl", "DINO student-teacher KL"),
]


def _dino_k(run_dir: Path) -> int | None:
    try:
        cfg = json.loads((run_dir / "config.json").read_text())
        return int(cfg["train"]["dino_prototypes"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _entropy_column(df: pd.DataFrame) -> str | None:
    for name in ("teacher_entropy", "dino_teacher_entropy", "entropy_teacher"):
        if name in df.columns and df[name].notna().any():
            return name
    return None


def curves_figure(df: pd.DataFrame, title: str, k: int | None) -> plt.Figure | None:
    """One panel per logged term, train and val of the same term in the same panel."""
    if "split" not in df.columns:
        df = df.assign(split="train")
    ent = _entropy_column(df)
    panels = []
    for col, label in CURVE_PANELS:
        if col == "teacher_entropy":
            col = ent or col
        if col in df.columns and df[col].notna().any():
            panels.append((col, label))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 2.8), squeeze=False)
    for ax, (col, label) in zip(axes[0], panels, strict=True):
        for split, style in [("train", "-"), ("val", "o-")]:
            part = df[(df["split"] == split) & df[col].notna()]
            if not part.empty:
                ax.plot(part["step"], part[col], style, ms=3, lw=1, label=split)
        if col == ent and k:
            ax.axhline(math.log(k), color="red", ls="--", lw=0.8, label=f"ln K = {math.log(k):.2f}")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return fig


def runs_comparison_figure(frames: dict[str, pd.DataFrame]) -> plt.Figure | None:
    """Training curves of every run on shared panels (one per term), train split only."""
    terms = [
        t
        for t, _ in CURVE_PANELS[:4]
        if any(t in df and df[t].notna().any() for df in frames.values())
    ]
    if not terms:
        return None
    fig, axes = plt.subplots(1, len(terms), figsize=(3.2 * len(terms), 2.8), squeeze=False)
    for ax, term in zip(axes[0], terms, strict=True):
        for run, df in frames.items():
            if term not in df:
                continue
            split = df["split"] if "split" in df else pd.Series("train", index=df.index)
            part = df[(split == "train") & df[term].notna()]
            if not part.empty:
                ax.plot(part["step"], part[term], lw=1, label=run)
        ax.set_title(dict(CURVE_PANELS)[term] + " (train)", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("All runs, same terms", fontsize=10)
    return fig


def training_section(
    metrics: list[str], runs: list[str], pretrain_metrics: str | None = None
) -> tuple[Section, list[Figure]]:
    from mint.report.ablation import health_summary, read_health

    sec = Section("Training curves", "training")
    sec.blocks.append(
        "<p>Each panel is one loss term, training (line) and held-out (dots) values of the same "
        "term. DINO and anchoring have their own panels (they are not computed on the held-out "
        "data). A DINO teacher entropy at ln K (dashed) means a uniform, collapsed teacher.</p>"
    )
    figs = []
    frames = {}
    if pretrain_metrics and Path(pretrain_metrics).is_file():
        df = _read_csv(pretrain_metrics, "metrics of the pretraining run")
        fig = curves_figure(
            df, "pretraining of the base model (DINO only)", _dino_k(Path(pretrain_metrics).parent)
        )
        if fig is not None:
            f = Figure("training_pretrain", "Pretraining of the demo base model", _fig_to_png(fig))
            figs.append(f)
            sec.blocks.append("<h3>base model pretraining</h3>")
            health = read_health(Path(pretrain_metrics).parent)
            if health is not None:
                sec.blocks.append(f"<p>DINO health: {html.escape(health_summary(health))}</p>")
            sec.blocks.append(_img_tag(f))
    for run, path in zip(runs, metrics, strict=True):
        df = _read_csv(path, f"metrics of run {run}")
        if "split" not in df.columns:
            df["split"] = "train"
        frames[run] = df
        run_dir = Path(path).parent
        sec.blocks.append(f"<h3>{html.escape(run)}</h3>")
        health = read_health(run_dir)
        line = health_summary(health)
        if health is None:
            sec.blocks.append("<p>DINO health: no health record for this run.</p>")
        else:
            cls = "warning" if line.startswith("WARNING") else "ok"
            sec.blocks.append(f'<p class="{cls}">DINO health: {html.escape(line)}</p>')
        fig = curves_figure(df, f"run {run}", _dino_k(run_dir))
        if fig is not None:
            f = Figure(f"training_{run}", f"Training curves of {run}", _fig_to_png(fig))
            figs.append(f)
            sec.blocks.append(_img_tag(f))
        terms = [t for t in LOSS_TERMS if t in df.columns and df[t].notna().any()]
        train = df[df["split"] == "train"]
        last = train.tail(1)[["step", *[t for t in terms if t in train]]]
        sec.blocks.append(_table(last, f"Last logged training step of {run}", 4))
        val = df[df["split"] == "val"]
        if len(val) >= 1 and ({"loss_visium", "loss_xenium"} & set(val.columns)):
            cols = ["step", *[c for c in ("loss_visium", "loss_xenium") if c in val.columns]]
            sec.blocks.append(_table(val[cols], f"Held-out regression loss of {run}", 4))
    if len(frames) > 1:
        fig = runs_comparison_figure(frames)
        if fig is not None:
            f = Figure("training_runs", "All runs on the same terms", _fig_to_png(fig))
            figs.append(f)
            sec.blocks.insert(1, _img_tag(f))
    return sec, figs


def ablation_section(
    bench_results: list[str],
    eva_csv: str | None,
    drift_files: list[str],
    metrics: list[str],
    base: str,
    runs: list[str],
) -> tuple[Section, list[Figure]]:
    from mint.report.ablation import (
        ablation_notes,
        ablation_table,
        error_bar_figure,
        leaderboard_with_ours,
        paired_gene_table,
        read_health,
        read_json_or_none,
        read_probe_results,
    )

    sec = Section("Ablations and forgetting", "ablations")
    results = read_probe_results(bench_results)
    eva = _read_csv(eva_csv, "EVA summary") if eva_csv else None
    drift = {run: read_json_or_none(p) or {} for run, p in zip(runs, drift_files, strict=False)}
    health = {run: read_health(Path(m).parent) for run, m in zip(runs, metrics, strict=False)}
    table = ablation_table(results, eva, drift, health, base, runs)
    sec.blocks.append(
        "<p>The base model and every trained run on the same benchmarks. <b>HEST-Bench</b>: mean "
        "Pearson r over the tasks (HCC excluded), of the CLS and the ST-token embedding, with the "
        "mean over tasks of the std over folds. <b>EVA</b>: eva's average. <b>CKA / cosine to "
        "base</b>: linear CKA and mean cosine between the base's and the run's CLS embeddings of "
        "the held-out HEST-Bench patches (1 = nothing forgotten). <b>Morphology probe</b>: "
        "balanced accuracy of a logistic-regression probe on CLS for the synthetic nuclear-variant "
        "task, which the expression signal does not encode (drift stage; the same task's eva "
        "score is in the EVA column when eva runs only that task).</p>"
    )
    sec.blocks.append(_table(table, "Ablation table", 3))
    n_classes = None
    for d in drift.values():
        if (d or {}).get("morphology", {}).get("n_classes"):
            n_classes = int(d["morphology"]["n_classes"])
    notes = ablation_notes(table, n_classes)
    if notes:
        items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
        sec.blocks.append(f"<p class='caption'>What the numbers say</p><ul>{items}</ul>")
    genes = paired_gene_table(results, base, runs)
    if not genes.empty:
        sec.blocks.append(
            _table(
                genes,
                "Paired per-gene comparison with the base model (per-gene Pearson r averaged "
                "over folds; Δr = run - base, genes of every task)",
                3,
            )
        )
    figs = []
    if results:
        fig = error_bar_figure(results, [base, *runs], "cls")
        f = Figure("hest_bench_error_bars", "HEST-Bench with fold std", _fig_to_png(fig))
        figs.append(f)
        sec.blocks.append(_img_tag(f))
        lb, comparable = leaderboard_with_ours(results, base, runs)
        note = (
            "Our rows use the same nine tasks and protocol."
            if comparable
            else "Our averages are over different tasks (the demo's synthetic ones), so their "
            "place in this table is not a comparison, only where the numbers fall."
        )
        sec.blocks.append(
            _table(
                lb, f"Published HEST-Bench leaderboard with our CLS rows (ours marked). {note}", 4
            )
        )
    return sec, figs


def provenance_section(config_hash: str | None, pretrain: str | None) -> Section:
    from mint.report.ablation import file_digest, provenance, provenance_html

    extra = {}
    if pretrain and Path(pretrain).is_file():
        extra["base model checkpoint (pretrain stage)"] = (
            f"{pretrain} (sha256 {file_digest(pretrain)})"
        )
    sec = Section("Provenance", "provenance")
    sec.blocks.append(provenance_html(provenance(config_hash, extra)))
    return sec


def selection_section(samples_tsv: str, leakage_tsv: str) -> tuple[Section, list[Figure]]:
    samples = _read_csv(samples_tsv, "sample list")
    leakage = _read_csv(leakage_tsv, "leakage report")
    sec = Section("Training samples", "samples")
    sec.blocks.append(f"<p>{len(samples)} samples selected for training.</p>")
    figs = []
    tech_col = "st_technology" if "st_technology" in samples else None
    if tech_col:
        by_tech = samples.groupby(tech_col).size().rename("samples").reset_index()
        sec.blocks.append(_table(by_tech, "By technology"))
    if "organ" in samples:
        by_organ = samples.groupby("organ").size().rename("samples").reset_index()
        by_organ = by_organ.sort_values("samples", ascending=False)
        sec.blocks.append(_table(by_organ, "By organ"))
        fig, ax = plt.subplots(figsize=(6, max(2.0, 0.25 * len(by_organ))))
        ax.barh(by_organ["organ"][::-1], by_organ["samples"][::-1], color="#8c6bb1")
        ax.set_xlabel("samples")
        ax.set_title("Training samples by organ")
        f = Figure("samples_by_organ", "Training samples by organ", _fig_to_png(fig))
        figs.append(f)
        sec.blocks.append(_img_tag(f))
    sec.blocks.append(
        _table(
            leakage,
            "Leakage report: training samples that share a patient, cohort or duplicate with a "
            "HEST-Bench sample (select.exclude_leakage removes them)",
        )
    )
    return sec, figs


def shards_qc_section(shards_dir: str) -> Section:
    """Per-sample QC of the shards stage (`qc.tsv`, named by index.json): vocabulary coverage,
    kept or excluded and why, Visium HD flags, and which whole slides are held out for
    validation, so that a reader sees what the training data really was."""
    index_path = Path(shards_dir) / "index.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MintError(f"report: cannot read {index_path} ({exc})") from None
    sec = Section("Training data QC", "shards-qc")
    qc_path = Path(shards_dir) / index.get("qc", "qc.tsv")
    if not qc_path.is_file():
        sec.blocks.append(f"<p>No QC table ({html.escape(str(qc_path))} missing).</p>")
        return sec
    qc = pd.read_csv(qc_path, sep="\t", keep_default_na=False)
    splits = {sid: rec.get("split", "") for sid, rec in index.get("samples", {}).items()}
    qc.insert(3, "split", [splits.get(s, "") for s in qc["sample"]])
    excluded = int((qc["status"] == "excluded").sum())
    flagged = int((qc["qc_flags"].astype(str) != "").sum())
    sec.blocks.append(
        f"<p>{len(qc) - excluded} samples in the shards, {excluded} excluded, {flagged} with QC "
        f"flags; validation holds whole slides only "
        f"({html.escape(', '.join(index.get('val_samples', [])) or 'none')}).</p>"
    )
    sec.blocks.append(_table(qc, f"Per-sample QC ({html.escape(qc_path.name)})"))
    return sec


def _read_shard_examples(shards_dir: Path, n: int) -> list[tuple[np.ndarray, dict]]:
    """The first n samples of the first validation (else training) shard, read with webdataset."""
    import webdataset as wds
    from PIL import Image

    index = json.loads((shards_dir / "index.json").read_text())
    entries = index.get("val_shards") or index.get("shards") or []
    if not entries or n == 0:
        return []
    url = str(shards_dir / entries[0]["path"])
    out = []
    for sample in wds.WebDataset(url, shardshuffle=False, empty_check=False):
        img = np.asarray(Image.open(io.BytesIO(sample["jpg"])).convert("RGB"))
        meta = json.loads(sample["json"])
        out.append((img, meta))
        if len(out) >= n:
            break
    return out


def examples_section(
    shards_dir: str, wsi_path: str, st_path: str, metadata_csv: str, n_tiles: int
) -> tuple[Section, list[Figure]]:
    import anndata as ad

    from mint.data.wsi import WSI
    from mint.hest.metadata import read_metadata, sample_row

    sec = Section("Example tiles", "examples")
    figs = []
    sample_id = Path(wsi_path).stem
    meta = sample_row(read_metadata(metadata_csv), sample_id)
    pixel_size = float(meta["pixel_size_um_estimated"])
    wsi = WSI.open(wsi_path, pixel_size_um=pixel_size, sample_id=sample_id)
    thumb = wsi.thumbnail(1024)
    scale = thumb.shape[1] / wsi.width
    adata = ad.read_h5ad(st_path, backed="r")
    xy = np.asarray(adata.obsm["spatial"], dtype=float)
    fig, ax = plt.subplots(figsize=(6, 6 * thumb.shape[0] / max(thumb.shape[1], 1)))
    ax.imshow(thumb)
    ax.scatter(
        xy[:, 0] * scale, xy[:, 1] * scale, s=4, facecolors="none", edgecolors="#00a0ff", lw=0.5
    )
    ax.set_axis_off()
    ax.set_title(f"{sample_id} ({meta['st_technology']}, {pixel_size:.3f} um/px): {len(xy)} spots")
    f = Figure("example_slide", f"Slide {sample_id} with its spots", _fig_to_png(fig))
    figs.append(f)
    sec.blocks.append(_img_tag(f))

    examples = _read_shard_examples(Path(shards_dir), n_tiles)
    if examples:
        cols = min(len(examples), 6)
        rows = int(np.ceil(len(examples) / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False)
        for ax in axes.ravel():
            ax.set_axis_off()
        for ax, (img, m) in zip(axes.ravel(), examples, strict=False):
            ax.imshow(img)
            ax.set_title(f"{m.get('sample')} {m.get('level')}\n{m.get('barcode')}", fontsize=7)
        f = Figure("example_tiles", "Training tiles (224 px at 0.5 um/px)", _fig_to_png(fig))
        figs.append(f)
        sec.blocks.append(_img_tag(f))
    return sec, figs


# --------------------------------------------------------------------------- page

CSS = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1150px; color: #222; line-height: 1.4; padding: 0 1em; }
h1 { border-bottom: 2px solid #6a3d9a; padding-bottom: .3em; }
h2 { margin-top: 2em; color: #6a3d9a; }
table.data { border-collapse: collapse; font-size: 0.85em; margin: .5em 0 1.2em; }
table.data th, table.data td { padding: 3px 8px; border-bottom: 1px solid #ddd; text-align: right; }
table.data th { background: #f3eff8; }
table.data td:first-child, table.data th:first-child { text-align: left; }
figure { margin: 1em 0; } figure img { max-width: 100%; }
p.caption { font-weight: bold; margin-bottom: .2em; }
nav a { margin-right: 1em; }
p.warning { color: #b00; font-weight: bold; }
table.provenance th { text-align: left; }
"""


def render_page(title: str, intro: str, sections: list[Section]) -> str:
    nav = " ".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in sections)
    body = "\n".join(
        f'<section id="{s.anchor}"><h2>{html.escape(s.title)}</h2>\n'
        + "\n".join(s.blocks)
        + "</section>"
        for s in sections
    )
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'/>"
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{intro}</p><nav>{nav}</nav>{body}</body></html>\n"
    )


def read_pretrain_record(checkpoint: str) -> dict | None:
    """The pretrain stage's record (`<checkpoint stem>.json`: tiles, seconds, metrics path)."""
    from mint.report.ablation import read_json_or_none

    return read_json_or_none(Path(checkpoint).with_suffix(".json"))


def build_report(args: argparse.Namespace) -> tuple[str, list[Figure]]:
    runs = list(args.runs or [])
    if len(runs) != len(args.metrics or []):
        raise MintError(
            f"--runs ({len(runs)}) and --metrics ({len(args.metrics or [])}) differ in length"
        )
    sections: list[Section] = []
    figures: list[Figure] = []
    drift = list(args.drift or [])
    if drift and len(drift) != len(runs):
        raise MintError(f"--runs ({len(runs)}) and --drift ({len(drift)}) differ in length")
    pretrain_metrics = None
    if args.pretrain:
        rec = read_pretrain_record(args.pretrain)
        pretrain_metrics = rec.get("metrics") if rec else None
    for sec, figs in [
        ablation_section(args.bench_results or [], args.eva, drift, args.metrics, args.base, runs),
        bench_section(args.bench, args.base, runs),
        *([eva_section(args.eva, args.base, runs)] if args.eva else []),
        training_section(args.metrics, runs, pretrain_metrics)
        if runs
        else (Section("Training curves", "training", ["<p>No runs.</p>"]), []),
        selection_section(args.samples, args.leakage),
        (shards_qc_section(args.shards), []),
        examples_section(
            args.shards, args.example_wsi, args.example_st, args.metadata, args.n_example_tiles
        ),
    ]:
        sections.append(sec)
        figures.extend(figs)
    sections.append(provenance_section(args.config_hash, args.pretrain))
    intro = (
        f"Base model <b>{html.escape(args.base)}</b> versus MINT run(s) "
        f"<b>{html.escape(', '.join(runs) or 'none')}</b>."
    )
    return render_page("MINT report", intro, sections), figures


@dataclass(frozen=True)
class ReportSettings:
    """`mint report` options and their defaults; config `report:` maps onto them (mint.settings)."""

    n_example_tiles: int = 6


def add_arguments(p: argparse.ArgumentParser) -> None:
    from mint.settings import add_options

    p.add_argument("--samples", required=True, help="results/samples.tsv")
    p.add_argument("--leakage", required=True, help="results/leakage.tsv")
    p.add_argument("--bench", required=True, help="results/bench/summary.csv")
    p.add_argument("--eva", help="results/eva/summary.csv (omit when eva is disabled)")
    p.add_argument(
        "--metrics", nargs="*", default=[], help="metrics.csv of each run, in --runs order"
    )
    p.add_argument("--runs", nargs="*", default=[], help="training run names")
    p.add_argument("--base", required=True, help="model key of the base backbone")
    p.add_argument("--shards", required=True, help="results/shards (example tiles)")
    p.add_argument("--example-wsi", required=True, help="a slide to draw with its spots")
    p.add_argument("--example-st", required=True, help="that slide's st/{id}.h5ad")
    p.add_argument("--metadata", required=True, help="HEST metadata CSV (pixel sizes)")
    add_options(p, "report")  # --n-example-tiles
    p.add_argument(
        "--bench-results",
        nargs="*",
        default=[],
        help="results/bench/{model}/{task}.json (fold std, per-gene r)",
    )
    p.add_argument("--drift", nargs="*", default=[], help="drift.json of each run, in --runs order")
    p.add_argument("--pretrain", help="the demo's pretrained base checkpoint (pretrain stage)")
    p.add_argument("--config-hash", help="hash of the resolved workflow config (provenance)")
    p.add_argument("--out", required=True, help="results/report/index.html")
    p.add_argument("--figures-dir", help="also write each figure as PNG here")


def run(args: argparse.Namespace) -> int:
    page, figures = build_report(args)
    if args.figures_dir:
        with atomic_dir(args.figures_dir) as tmp:
            for f in figures:
                (tmp / f"{f.name}.png").write_bytes(f.png)
    with atomic_path(args.out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    log.info("wrote %s with %d figures", args.out, len(figures))
    return 0
