"""The report's sections other than the training curves (`mint.report.training`): HEST-Bench,
EVA, ablations and forgetting, the training samples, the shards' QC, example tiles, provenance.

Each returns a `Section` (HTML blocks) and the figures it embedded, so `mint.report.html` can
also write those figures as files for `snakemake --report`.
"""

from __future__ import annotations

import html
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from mint.errors import MintError  # noqa: E402
from mint.hest.bench import AVERAGE_EXCLUDED  # noqa: E402
from mint.report.blocks import Figure, Section, fig_to_png, html_table, img_tag, read_csv  # noqa: E402

ROLE_ORDER = {"base": 0, "MINT": 1, "backbone": 2}

# The HEST-Bench tasks reported apart from the average (HCC), as the bench module defines them.
EXCLUDED = sorted(AVERAGE_EXCLUDED)


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
    return Figure(name=name, title=title, png=fig_to_png(fig))


def bench_section(summary_csv: str, base: str, runs: list[str]) -> tuple[Section, list[Figure]]:
    from mint.bench.summary import leaderboard_tasks, load_leaderboard

    df = read_csv(summary_csv, "HEST-Bench summary")
    sec = Section("HEST-Bench", "hest-bench")
    if df.empty:
        sec.blocks.append("<p>No HEST-Bench results.</p>")
        return sec, []
    meta_cols = {"model", "variant", "average", "precision", *EXCLUDED}
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
        f"<b>average</b> excludes {', '.join(EXCLUDED)}. Rows: our models and embedding variants.</p>"
    )
    show_cols = ["model", "role", "variant", *tasks, "average"] + [t for t in EXCLUDED if t in df]
    show_cols += ["precision"] if "precision" in df else []  # variant = tokens; precision: forward
    sec.blocks.append(html_table(df[show_cols], "Our models"))

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
            html_table(pd.DataFrame(deltas), "Gain of MINT over the base model (r difference)")
        )

    lb = load_leaderboard()
    lb_tasks = [t for t in tasks if t in lb.columns]
    if lb_tasks:
        lb = lb.copy()
        cols = ["model", *lb_tasks]
        if set(lb_tasks) != set(leaderboard_tasks(lb)):  # lb_tasks: none in AVERAGE_EXCLUDED
            # A partial run: the published 9-task average is not comparable with ours, so
            # average the leaderboard over the tasks this run has.
            lb["average (these tasks)"] = lb[lb_tasks].mean(axis=1)
            cols += ["average (these tasks)", "average"]
        elif "average" in lb.columns:
            cols.append("average")
        sec.blocks.append(html_table(lb[cols], "Published HEST-Bench leaderboard (same tasks)", 4))
    else:
        sec.blocks.append(
            "<p>The published HEST-Bench leaderboard (IDC, PRAD, PAAD, SKCM, COAD, READ, CCRCC, "
            "LUNG, LYMPH_IDC) shares no task with this run (synthetic tasks in the demo); see "
            "below for its reference numbers.</p>"
        )
        sec.blocks.append(html_table(lb.head(8), "Published HEST-Bench leaderboard (top 8)", 4))

    figs = [
        _score_comparison_figure(
            df, [*tasks, "average"], "label", "HEST-Bench: Pearson r per task", "hest_bench"
        )
    ]
    sec.blocks.extend(img_tag(f) for f in figs)
    return sec, figs


def eva_section(summary_csv: str, base: str, runs: list[str]) -> tuple[Section, list[Figure]]:
    from mint.eva.summary import load_leaderboard

    df = read_csv(summary_csv, "EVA summary")
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
    sec.blocks.append(html_table(df, "Our models"))
    lb = load_leaderboard()
    shared = [t for t in tasks if t in lb.columns]
    lb_cols = ["model", *shared] + (["average"] if "average" in lb.columns else [])
    sec.blocks.append(
        html_table(lb[lb_cols] if shared else lb.head(8), "Published EVA leaderboard")
    )
    numeric = [
        t for t in [*tasks, "average"] if t in df.columns and pd.api.types.is_numeric_dtype(df[t])
    ]
    figs = []
    if numeric:
        figs.append(_score_comparison_figure(df, numeric, "model", "EVA: score per task", "eva"))
    sec.blocks.extend(img_tag(f) for f in figs)
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
    eva = read_csv(eva_csv, "EVA summary") if eva_csv else None
    drift = {run: read_json_or_none(p) or {} for run, p in zip(runs, drift_files, strict=False)}
    health = {run: read_health(Path(m).parent) for run, m in zip(runs, metrics, strict=False)}
    table = ablation_table(results, eva, drift, health, base, runs)
    sec.blocks.append(
        "<p>The base model and every trained run on the same benchmarks. <b>HEST-Bench</b>: mean "
        f"Pearson r over the tasks ({', '.join(EXCLUDED)} excluded), of the CLS and the ST-token "
        "embedding, with the mean over tasks of the std over folds. <b>EVA</b>: eva's average. <b>CKA / cosine to "
        "base</b>: linear CKA and mean cosine between the base's and the run's CLS embeddings of "
        "the held-out HEST-Bench patches (1 = nothing forgotten). <b>Morphology probe</b>: "
        "balanced accuracy of a logistic-regression probe on CLS for the synthetic nuclear-variant "
        "task, which the expression signal does not encode (drift stage; the same task's eva "
        "score is in the EVA column when eva runs only that task).</p>"
    )
    sec.blocks.append(html_table(table, "Ablation table", 3))
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
            html_table(
                genes,
                "Paired per-gene comparison with the base model (per-gene Pearson r averaged "
                "over folds; Δr = run - base, genes of every task)",
                3,
            )
        )
    figs = []
    if results:
        fig = error_bar_figure(results, [base, *runs], "cls")
        f = Figure("hest_bench_error_bars", "HEST-Bench with fold std", fig_to_png(fig))
        figs.append(f)
        sec.blocks.append(img_tag(f))
        lb, comparable = leaderboard_with_ours(results, base, runs)
        note = (
            "Our rows use the same nine tasks and protocol."
            if comparable
            else "Our averages are over different tasks (the demo's synthetic ones), so their "
            "place in this table is not a comparison, only where the numbers fall."
        )
        sec.blocks.append(
            html_table(
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
    samples = read_csv(samples_tsv, "sample list")
    leakage = read_csv(leakage_tsv, "leakage report")
    sec = Section("Training samples", "samples")
    sec.blocks.append(f"<p>{len(samples)} samples selected for training.</p>")
    figs = []
    tech_col = "st_technology" if "st_technology" in samples else None
    if tech_col:
        by_tech = samples.groupby(tech_col).size().rename("samples").reset_index()
        sec.blocks.append(html_table(by_tech, "By technology"))
    if "organ" in samples:
        by_organ = samples.groupby("organ").size().rename("samples").reset_index()
        by_organ = by_organ.sort_values("samples", ascending=False)
        sec.blocks.append(html_table(by_organ, "By organ"))
        fig, ax = plt.subplots(figsize=(6, max(2.0, 0.25 * len(by_organ))))
        ax.barh(by_organ["organ"][::-1], by_organ["samples"][::-1], color="#8c6bb1")
        ax.set_xlabel("samples")
        ax.set_title("Training samples by organ")
        f = Figure("samples_by_organ", "Training samples by organ", fig_to_png(fig))
        figs.append(f)
        sec.blocks.append(img_tag(f))
    sec.blocks.append(
        html_table(
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
    sec.blocks.append(html_table(qc, f"Per-sample QC ({html.escape(qc_path.name)})"))
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
    f = Figure("example_slide", f"Slide {sample_id} with its spots", fig_to_png(fig))
    figs.append(f)
    sec.blocks.append(img_tag(f))

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
        f = Figure("example_tiles", "Training tiles (224 px at 0.5 um/px)", fig_to_png(fig))
        figs.append(f)
        sec.blocks.append(img_tag(f))
    return sec, figs
