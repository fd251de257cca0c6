"""HEST-Bench stage end to end on helper A's synthetic tasks with the real tiny-vit encoder:
generate_bench -> mint embed -> mint probe -> mint bench-summary (the demo's code path)."""

from __future__ import annotations

import json
import math

import h5py
import pandas as pd
import pytest

from mint.cli import main as mint_main

synth = pytest.importorskip("mint.synth.bench")


def test_synthetic_tasks_end_to_end(tmp_path):
    bench = tmp_path / "bench"
    tasks = ["SYNTH_VISIUM", "SYNTH_XENIUM"]
    for task in tasks:
        synth.generate_bench(bench, task, synth.SynthConfig(seed=0, slide_size_um=800))

    results = []
    for task in tasks:
        emb = tmp_path / "emb" / "tiny-vit" / task
        argv = ["embed", "--model", "tiny-vit", "--bench-dir", str(bench), "--task", task,
                "--out-dir", str(emb), "--device", "cpu", "--num-workers", "0",
                "--batch-size", "32"]  # fmt: skip
        assert mint_main(argv) == 0
        manifest = json.loads((emb / "manifest.json").read_text())
        assert manifest["has_st"] is False  # a base backbone has no ST token
        for sid, meta in manifest["samples"].items():
            with h5py.File(bench / task / "patches" / f"{sid}.h5", "r") as f:
                assert meta["n"] == f["img"].shape[0]

        out = tmp_path / "res" / "tiny-vit" / f"{task}.json"
        argv = ["probe", "--embeddings", str(emb), "--bench-dir", str(bench), "--task", task,
                "--model", "tiny-vit", "--out", str(out)]  # fmt: skip
        assert mint_main(argv) == 0
        res = json.loads(out.read_text())
        assert res["n_folds"] == 2 and len(res["genes"]) > 0
        assert set(res["variants"]) == {"cls", "cls+patch_mean"}
        for v in res["variants"].values():
            assert v["mean"] is not None and -1 <= v["mean"] <= 1
            assert len(v["folds"]) == 2
        results.append(str(out))

    csv = tmp_path / "summary.csv"
    assert mint_main(["bench-summary", "--inputs", *results, "--out", str(csv)]) == 0
    df = pd.read_csv(csv)
    assert list(df.columns) == ["model", "variant", *tasks, "average", "precision"]
    assert df["variant"].tolist() == ["cls", "cls+patch_mean"]
    assert not any(math.isnan(x) for x in df["average"])
