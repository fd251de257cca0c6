"""The report's training-curves section: one panel per logged loss term, train and held-out
values of the same term together, the DINO health line of each run, and all runs side by side."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from mint.report.blocks import Figure, Section, fig_to_png, html_table, img_tag, read_csv  # noqa: E402

LOSS_TERMS = ["loss", "loss_visium", "loss_xenium", "loss_dino", "loss_anchor"]


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
        df = read_csv(pretrain_metrics, "metrics of the pretraining run")
        fig = curves_figure(
            df, "pretraining of the base model (DINO only)", _dino_k(Path(pretrain_metrics).parent)
        )
        if fig is not None:
            f = Figure("training_pretrain", "Pretraining of the demo base model", fig_to_png(fig))
            figs.append(f)
            sec.blocks.append("<h3>base model pretraining</h3>")
            health = read_health(Path(pretrain_metrics).parent)
            if health is not None:
                sec.blocks.append(f"<p>DINO health: {html.escape(health_summary(health))}</p>")
            sec.blocks.append(img_tag(f))
    for run, path in zip(runs, metrics, strict=True):
        df = read_csv(path, f"metrics of run {run}")
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
            f = Figure(f"training_{run}", f"Training curves of {run}", fig_to_png(fig))
            figs.append(f)
            sec.blocks.append(img_tag(f))
        terms = [t for t in LOSS_TERMS if t in df.columns and df[t].notna().any()]
        train = df[df["split"] == "train"]
        last = train.tail(1)[["step", *[t for t in terms if t in train]]]
        sec.blocks.append(html_table(last, f"Last logged training step of {run}", 4))
        val = df[df["split"] == "val"]
        if len(val) >= 1 and ({"loss_visium", "loss_xenium"} & set(val.columns)):
            cols = ["step", *[c for c in ("loss_visium", "loss_xenium") if c in val.columns]]
            sec.blocks.append(html_table(val[cols], f"Held-out regression loss of {run}", 4))
    if len(frames) > 1:
        fig = runs_comparison_figure(frames)
        if fig is not None:
            f = Figure("training_runs", "All runs on the same terms", fig_to_png(fig))
            figs.append(f)
            sec.blocks.insert(1, img_tag(f))
    return sec, figs
