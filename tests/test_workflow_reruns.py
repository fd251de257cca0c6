"""Reruns redo only what changed: each kind of setting is edited on a finished demo run and the
dry-run plan is checked; the EVA path for a dataset that is missing, then appears."""

from __future__ import annotations

import json
import shutil
import time

import pytest
import yaml
from helpers import REPO, job_counts, run_snakemake


@pytest.fixture
def demo_copy(demo_run, tmp_path):
    """A private copy of the finished demo (its files' times kept), free to change."""
    work = tmp_path / "run"
    shutil.copytree(demo_run, work, symlinks=True)
    return work


def _plan(work, cfg: dict, tmp_path, *extra) -> dict[str, int]:
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = run_snakemake(["-n", "--cores", "2", "--configfile", str(path), *extra], work)
    return job_counts(proc.stdout)


def _demo() -> dict:
    return yaml.safe_load((REPO / "config/demo.yaml").read_text())


@pytest.mark.slow
def test_settings_that_change_no_result_rerun_nothing(demo_copy, tmp_path):
    cfg = _demo()
    # the same eva overrides, keys in the opposite order
    cfg["eva"]["overrides"] = dict(reversed(list(cfg["eva"]["overrides"].items())))
    cfg["train"]["defaults"] = dict(reversed(list(cfg["train"]["defaults"].items())))
    # performance knobs
    cfg["bench"]["num_workers"] = 1
    cfg["bench"]["batch_size"] = 7
    cfg["eva"]["num_workers"] = 1
    assert _plan(demo_copy, cfg, tmp_path) == {}
    # a fresh copy of the pinned metadata (new mtime, same rows)
    meta = demo_copy / "resources/hest/HEST_metadata.csv"
    time.sleep(1)
    meta.write_bytes(meta.read_bytes())
    assert _plan(demo_copy, _demo(), tmp_path) == {}


@pytest.mark.slow
def test_each_result_setting_reruns_only_its_consumers(demo_copy, tmp_path):
    cfg = _demo()
    cfg["eva"]["overrides"]["max_steps"] += 1
    counts = _plan(demo_copy, cfg, tmp_path)
    # eva's protocol reaches predict (batch sizes, precision) and fit
    # (`all` is the default target, planned whenever the report is)
    assert set(counts) == {"eva_predict", "eva_fit", "eva", "report", "all"}, counts
    cfg = _demo()
    cfg["bench"]["seed"] = 2  # the schema's default is 1
    counts = _plan(demo_copy, cfg, tmp_path)
    assert set(counts) == {"probe", "bench", "report", "all"}, counts


@pytest.mark.slow
def test_embedding_cache_survives_a_rerun(demo_copy):
    """The embed job's output is the cache manifest: a forced rerun keeps the per-sample files
    and embeds nothing again."""
    target = "results/bench/embeddings/tiny-vit-pretrained/SYNTH_VISIUM/manifest.json"
    cache = demo_copy / target.rsplit("/", 1)[0]
    samples = sorted(p.name for p in cache.glob("*.h5"))
    assert samples
    run_snakemake(
        [target, "--cores", "1", "--forcerun", "embed"]
        + ["--configfile", str(REPO / "config/demo.yaml")],
        demo_copy,
    )
    assert sorted(p.name for p in cache.glob("*.h5")) == samples
    log = (demo_copy / "logs/bench/embed_tiny-vit-pretrained_SYNTH_VISIUM.log").read_text()
    assert log.count(": cached (") == len(samples), log


@pytest.mark.slow
def test_eva_task_without_data_is_recorded_and_reruns_when_the_data_appears(demo_copy, tmp_path):
    cfg = _demo()
    cfg["eva"]["tasks"] = ["synthetic", "mhist"]
    path = tmp_path / "mhist.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run_snakemake(["--cores", "2", "--configfile", str(path)], demo_copy)
    for model in ("tiny-vit-pretrained", "mint"):
        status = json.loads((demo_copy / f"results/eva/{model}/mhist/status.json").read_text())
        assert status["status"] == "missing_data", status
    summary = (demo_copy / "results/eva/summary.csv").read_text()
    assert "mhist" in summary
    page = (demo_copy / "results/report/index.html").read_text()
    assert "mhist" in page and "missing" in page.lower()
    # The data appear: the task (and only what depends on it) is planned again, no --forcerun.
    data = demo_copy / "resources/eva/mhist"
    (data / "images").mkdir(parents=True)
    (data / "annotations.csv").write_text("Image Name,Majority Vote Label,Partition\n")
    counts = _plan(demo_copy, cfg, tmp_path)
    n_models = 1 + len(cfg["train"]["runs"])  # the base and every run
    assert counts.get("eva_predict") == n_models and counts.get("eva_fit") == n_models, counts
    assert not {"train_run", "embed", "probe", "tile_sample"} & set(counts), counts
