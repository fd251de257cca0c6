"""The report's ablation pieces (mint.report.ablation) on small hand-made inputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from mint.report.ablation import (
    ablation_table,
    health_summary,
    leaderboard_with_ours,
    paired_gene_table,
    provenance,
    read_health,
    read_probe_results,
)


def _probe(path, model, task, variant_genes: dict[str, dict[str, list[float]]]):
    """A probe JSON: per variant, per gene the Pearson r of each fold."""
    variants = {}
    for variant, genes in variant_genes.items():
        n_folds = len(next(iter(genes.values())))
        folds = []
        for k in range(n_folds):
            rs = {g: v[k] for g, v in genes.items()}
            folds.append({"mean": sum(rs.values()) / len(rs), "pearson": rs})
        means = [f["mean"] for f in folds]
        mu = sum(means) / len(means)
        variants[variant] = {
            "mean": mu,
            "std": math.sqrt(sum((m - mu) ** 2 for m in means) / len(means)),
            "folds": folds,
            "gene_means": {g: sum(v) / len(v) for g, v in genes.items()},
        }
    path.write_text(json.dumps({"model": model, "task": task, "variants": variants}))
    return str(path)


@pytest.fixture
def results(tmp_path):
    paths = [
        _probe(tmp_path / "b.json", "base", "T1", {"cls": {"g1": [0.1, 0.3], "g2": [0.2, 0.2]}}),
        _probe(
            tmp_path / "r.json",
            "run",
            "T1",
            {
                "cls": {"g1": [0.3, 0.5], "g2": [0.1, 0.1]},
                "st": {"g1": [0.4, 0.4], "g2": [0.3, 0.3]},
            },
        ),
    ]
    return read_probe_results(paths)


def test_ablation_table_has_fold_std_eva_drift_and_health(results):
    eva = pd.DataFrame({"model": ["base", "run"], "average": [0.5, 0.6]})
    drift = {
        "run": {"linear_cka": 0.8, "mean_cosine": 0.7, "morphology": {"run": 0.4, "base": 0.6}}
    }
    health = {"run": {"warnings": ["teacher entropy 6.2 at ln K: uniform collapse"]}}
    t = ablation_table(results, eva, drift, health, "base", ["run"]).set_index("model")
    assert t.at["base", "HEST-Bench cls"] == pytest.approx(0.2)
    assert t.at["base", "± fold std (cls)"] == pytest.approx(0.05)
    assert t.at["run", "HEST-Bench st"] == pytest.approx(0.35)
    assert t.at["run", "EVA"] == 0.6 and t.at["base", "EVA"] == 0.5
    assert t.at["run", "CKA to base"] == 0.8 and t.at["base", "CKA to base"] == 1.0
    assert t.at["base", "morphology probe"] == 0.6 and t.at["run", "morphology probe"] == 0.4
    assert t.at["run", "DINO health"].startswith("WARNING")
    # nothing known about a run: dashes, no failure
    t2 = ablation_table(results, None, {}, {}, "base", ["run"]).set_index("model")
    assert math.isnan(t2.at["run", "CKA to base"]) and t2.at["run", "DINO health"] == "–"


def test_paired_gene_comparison(results):
    g = paired_gene_table(results, "base", ["run"]).set_index("variant")
    # cls: g1 0.4 vs 0.2 (+0.2), g2 0.1 vs 0.2 (-0.1)
    assert g.at["cls", "genes"] == 2
    assert g.at["cls", "median Δr"] == pytest.approx(0.05)
    assert g.at["cls", "fraction improved"] == 0.5
    assert g.at["st", "fraction improved"] == 1.0


def test_our_rows_are_placed_in_the_published_leaderboard(results):
    table, comparable = leaderboard_with_ours(results, "base", ["run"])
    assert not comparable  # T1 is not a published task
    ours = table[table["source"] == "ours"]
    assert list(ours["model"]) == ["run (ours)", "base (ours)"]
    assert table["average"].is_monotonic_decreasing
    assert (table["source"] == "published").sum() >= 20


def test_health_is_read_from_either_place(tmp_path):
    assert read_health(tmp_path) is None
    (tmp_path / "config.json").write_text(json.dumps({"health": {"teacher_entropy": 3.5}}))
    assert read_health(tmp_path) == {"teacher_entropy": 3.5}
    assert (
        health_summary({"dino": {"teacher_entropy": 3.5}, "warnings": []})
        == "teacher_entropy 3.500"
    )
    (tmp_path / "health.json").write_text(json.dumps({"warnings": "collapsed"}))
    assert health_summary(read_health(tmp_path)) == "WARNING: collapsed"
    assert health_summary(None) == "–"


def test_provenance_names_commit_versions_config_and_device():
    rec = provenance("abc123")
    assert rec["config hash (sha256 of the resolved config)"] == "abc123"
    for key in ("git commit", "torch", "timm", "device", "date (UTC)", "mint"):
        assert rec[key], key


def test_ablation_notes_say_what_the_numbers_say():
    from mint.report.ablation import ablation_notes

    table = pd.DataFrame(
        [
            {"model": "base", "role": "base", "HEST-Bench cls": 0.4, "± fold std (cls)": 0.02,
             "CKA to base": 1.0, "morphology probe": 0.26, "DINO health": "–"},
            {"model": "mint", "role": "run", "HEST-Bench cls": 0.5, "± fold std (cls)": 0.02,
             "CKA to base": 0.8, "morphology probe": 0.3, "DINO health": "WARNING: collapse"},
            {"model": "finetune", "role": "run", "HEST-Bench cls": 0.45, "± fold std (cls)": 0.02,
             "CKA to base": 0.9, "morphology probe": 0.3, "DINO health": "–"},
        ]
    )  # fmt: skip
    text = " ".join(ablation_notes(table, n_classes=4))
    assert "MINT does not keep more of the base than the plain fine-tune" in text
    assert "finetune 0.900, mint 0.800" in text
    assert "near chance" in text and "DINO health warnings for: mint" in text


def test_report_shows_shard_qc_with_exclusions_flags_and_val_slides(tmp_path):
    """The QC table of the shards stage reaches the report: an excluded sample with its reason,
    a Visium HD flag and the held-out validation slides."""
    from mint.data.shards import QC_FILE, qc_table
    from mint.report.sections import shards_qc_section

    rows = [
        {"sample": "A1", "technology": "Visium", "modality": "visium", "n_tiles": 10,
         "n_genes_measured": 5, "vocab_size": 5, "vocab_coverage": 1.0, "status": "kept",
         "reason": "", "qc_flags": ""},
        {"sample": "B2", "technology": "Visium", "modality": "visium", "n_tiles": 8,
         "n_genes_measured": 0, "vocab_size": 5, "vocab_coverage": 0.0, "status": "excluded",
         "reason": "no vocabulary gene measured", "qc_flags": ""},
        {"sample": "HD3", "technology": "Visium HD", "modality": "visium", "n_tiles": 4,
         "n_genes_measured": 5, "vocab_size": 5, "vocab_coverage": 1.0, "status": "kept",
         "reason": "", "qc_flags": "unpooled_bins"},
    ]  # fmt: skip
    (tmp_path / QC_FILE).write_text(qc_table(rows))
    index = {
        "qc": QC_FILE,
        "samples": {"A1": {"split": "train"}, "HD3": {"split": "val"}},
        "val_samples": ["HD3"],
    }
    (tmp_path / "index.json").write_text(json.dumps(index))
    page = "".join(shards_qc_section(str(tmp_path)).blocks)
    assert "2 samples in the shards, 1 excluded, 1 with QC flags" in page
    assert "no vocabulary gene measured" in page and "unpooled_bins" in page
    assert "(HD3)" in page


def test_report_takes_the_average_exclusion_from_the_bench_module():
    """HCC is left out of the HEST-Bench average by `mint.hest.bench.AVERAGE_EXCLUDED` alone:
    no report module names the task itself."""
    from mint.hest.bench import AVERAGE_EXCLUDED
    from mint.report import sections

    report = Path(sections.__file__).parent
    for path in sorted(report.glob("*.py")):
        assert not any(f'"{t}"' in path.read_text() for t in AVERAGE_EXCLUDED), path.name
    assert sections.EXCLUDED == sorted(AVERAGE_EXCLUDED)
