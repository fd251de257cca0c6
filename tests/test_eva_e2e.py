"""Real kaiko-eva on the synthetic task: `mint eva make-synthetic`, `mint eva predict` (eva's
embeddings writer with our backbone) and `mint eva fit` (eva trains and evaluates the heads),
on CPU with a tiny encoder and tiny step counts. Checks that eva itself wrote results.json and
that we copied and parsed it."""

from __future__ import annotations

import json

from mint.cli import main


def test_eva_predict_fit_collect_on_synthetic_task(tmp_path):
    data = tmp_path / "data"
    assert main(["eva", "make-synthetic", "--out", str(data / "synthetic"),
                 "--patches-per-class", "4", "--size-px", "64", "--seed", "1"]) == 0  # fmt: skip
    common = [
        "--task", "synthetic", "--model", "tiny-vit", "--model-name", "tiny-vit",
        "--data-root", str(data), "--accelerator", "cpu", "--num-workers", "0",
        "--overrides", json.dumps({"max_steps": 12, "n_runs": 2, "batch_size": 8}),
    ]  # fmt: skip
    emb = tmp_path / "results" / "eva" / "embeddings" / "tiny-vit" / "synthetic"
    assert main(["eva", "predict", *common, "--embeddings-dir", str(emb)]) == 0
    manifest = (emb / "manifest.csv").read_text().splitlines()
    from mint.synth.morphology import VARIANTS

    # header + 3 splits x 4 patches x one class per nuclear variant
    assert len(manifest) == 1 + 3 * 4 * len(VARIANTS)
    assert json.loads((emb / "status.json").read_text())["status"] == "ok"
    assert ".tmp" not in (emb / "eva_predict.yaml").read_text()  # names the final folder

    run_root = tmp_path / "results" / "eva" / "runs" / "tiny-vit" / "synthetic"
    out = tmp_path / "results" / "eva" / "tiny-vit" / "synthetic"
    assert main(["eva", "fit", *common, "--embeddings-dir", str(emb),
                 "--run-root", str(run_root), "--out-dir", str(out)]) == 0  # fmt: skip

    produced = list(run_root.glob("*/results.json"))  # eva's own timestamped session folder
    assert len(produced) == 1
    assert (out / "results.json").read_bytes() == produced[0].read_bytes()
    results = json.loads(produced[0].read_text())
    test_acc = results["metrics"]["test"][0]["test/MulticlassAccuracy"]
    assert len(test_acc["values"]) == 2  # eva ran the two requested runs
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "ok" and status["split"] == "test"
    assert status["mean"] == test_acc["mean"] and 0.0 <= status["mean"] <= 1.0
    # which embedding, token and precision produced the number
    assert status["embedding"] == "cls" and status["tokens"] == ["cls"]
    assert status["precision"].startswith("32")

    summary = tmp_path / "results" / "eva" / "summary.csv"
    assert (
        main(["eva", "summary", "--inputs", str(out / "status.json"), "--out", str(summary)]) == 0
    )
    header, row = summary.read_text().splitlines()[:2]
    assert header == "model,synthetic,average,n_tasks,embedding,precision,note"
    assert row.startswith("tiny-vit,")
