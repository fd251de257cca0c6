"""End-to-end training on tiny shards: CLI, preemption + resume, export, offline load_model."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_MODEL
from safetensors.torch import load_file

from mint.cli import main
from mint.train.checkpoint import latest_checkpoint
from mint.train.config import TrainConfig
from mint.train.preempt import EXIT_RESUME, StopSignals
from mint.train.trainer import train

torch.set_num_threads(1)

PARAMS = {
    **TINY_MODEL,
    "steps": 6,
    "global_crop_size": 64,
    "n_local_crops": 2,
    "teacher_temp_warmup_steps": 4,
    "freeze_last_layer_steps": 2,
    "warmup_steps": 2,
    "lr": 1e-3,
    "head_lr": 1e-2,
    "num_workers": 2,
    "shuffle_buffer": 8,
    "checkpoint_every": 3,
    "log_every": 2,  # not a divisor of checkpoint_every: a log window spans the preemption
    "val_every": 3,
}


# the size of this module's `shards` fixture (tests/conftest.py)
TOY_SHARDS = dict(n_train=40, n_val=8, samples_per_shard=8, image_size=64)


@pytest.fixture(scope="module")
def full_run(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "full"
    rc = main(
        ["train", "--index", str(shards), "--out-dir", str(out), "--params", json.dumps(PARAMS)]
    )
    assert rc == 0
    return out


def _rows(path: Path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def _assert_same_metrics(a: list[dict], b: list[dict]) -> None:
    assert [(r["step"], r["split"]) for r in a] == [(r["step"], r["split"]) for r in b]
    for ra, rb in zip(a, b, strict=True):
        for col in ("loss", "loss_visium", "loss_xenium", "loss_dino", "loss_anchor", "lr"):
            if ra[col] == "":
                assert rb[col] == ""
            else:
                assert float(ra[col]) == pytest.approx(float(rb[col]), rel=1e-5, abs=1e-7), col


def test_full_run_writes_outputs(full_run):
    for name in ("model.safetensors", "config.json", "metrics.csv"):
        assert (full_run / name).is_file()
    assert list((full_run / "tensorboard").iterdir())
    rows = _rows(full_run / "metrics.csv")
    train_rows = [r for r in rows if r["split"] == "train"]
    val_rows = [r for r in rows if r["split"] == "val"]
    assert [int(r["step"]) for r in train_rows] == [2, 4, 6]
    assert [int(r["step"]) for r in val_rows] == [0, 3, 6]
    for col in (
        "loss",
        "loss_visium",
        "loss_xenium",
        "loss_dino",
        "loss_anchor",
        "lr",
        "images_per_s",
    ):
        assert all(r[col] != "" for r in train_rows), col
    cfg = json.loads((full_run / "config.json").read_text())
    assert cfg["backbone"] == "tiny-vit" and cfg["token_layout"]["st_index"] == 3
    assert set(cfg["vocab"]) == {"visium", "xenium"} and cfg["steps"] == 6


def test_preempted_run_resumes_to_identical_result(shards, full_run, tmp_path):
    out = tmp_path / "resumed"
    cfg = TrainConfig.from_dict(PARAMS)
    # "killed" after step 5: the last checkpoint is step 3, metrics.csv already has step 4
    assert train(cfg, shards, out, device="cpu", stop_after=5) is None
    assert latest_checkpoint(out / "checkpoints").name == "step-000000003.pt"
    assert not (out / "model.safetensors").exists()
    assert max(int(r["step"]) for r in _rows(out / "metrics.csv")) == 4
    rc = main(
        ["train", "--index", str(shards), "--out-dir", str(out), "--params", json.dumps(PARAMS)]
    )
    assert rc == 0
    _assert_same_metrics(_rows(full_run / "metrics.csv"), _rows(out / "metrics.csv"))
    a = load_file(str(full_run / "model.safetensors"))
    b = load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def _run_main(shards: Path, out: Path, params: dict) -> int:
    return main(
        ["train", "--index", str(shards), "--out-dir", str(out), "--params", json.dumps(params)]
    )


def _assert_same_weights(a_dir: Path, b_dir: Path) -> None:
    a = load_file(str(a_dir / "model.safetensors"))
    b = load_file(str(b_dir / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_forced_rerun_retrains_unless_checkpoints_are_kept(shards, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="mint.train")
    params = {**PARAMS, "steps": 3, "num_workers": 0}
    out = tmp_path / "rerun"
    cfg = TrainConfig.from_dict(params)
    train(cfg, shards, out, device="cpu")
    first = _rows(out / "metrics.csv")
    assert not (out / "checkpoints").exists()  # a finished run leaves no checkpoint behind
    shutil.copytree(out, tmp_path / "first")
    # what `snakemake --forcerun` does before rerunning the job
    for name in ("model.safetensors", "config.json", "metrics.csv"):
        (out / name).unlink()
    caplog.clear()
    train(cfg, shards, out, device="cpu")
    assert "starting fresh at step 0" in caplog.text and "resumed from" not in caplog.text
    assert "frozen for the first 2 step(s)" in caplog.text
    _assert_same_metrics(first, _rows(out / "metrics.csv"))  # trained again, same result
    _assert_same_weights(tmp_path / "first", out)

    keep = TrainConfig.from_dict({**params, "keep_checkpoints": True})  # not in the fingerprint
    train(keep, shards, out, device="cpu")
    assert latest_checkpoint(out / "checkpoints").name == "step-000000003.pt"
    caplog.clear()
    train(keep, shards, out, device="cpu")
    assert "resumed from" in caplog.text and "re-exporting, not retraining" in caplog.text
    _assert_same_weights(tmp_path / "first", out)


def test_stop_signals_are_restored_and_main_thread_only(shards, tmp_path):
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    train(TrainConfig.from_dict({**PARAMS, "steps": 1, "num_workers": 0}), shards, tmp_path)
    assert {s: signal.getsignal(s) for s in before} == before
    seen = {}

    def in_thread() -> None:
        with StopSignals() as stop:  # signal.signal would raise ValueError here
            seen["installed"] = stop.installed
            seen["handler"] = signal.getsignal(signal.SIGTERM)

    t = threading.Thread(target=in_thread)
    t.start()
    t.join()
    assert seen == {"installed": False, "handler": before[signal.SIGTERM]}
    with StopSignals() as stop:
        assert stop.installed and signal.getsignal(signal.SIGTERM) == stop._handle
        os.kill(os.getpid(), signal.SIGUSR1)  # recorded, not fatal
        assert stop.requested() == signal.SIGUSR1
    assert signal.getsignal(signal.SIGTERM) == before[signal.SIGTERM]


# 32 steps, a checkpoint only at the end: whatever survives the SIGTERM was written by the handler.
# The signal goes out after step 8, leaving ~24 steps of margin for a slow, shared machine.
# freeze_last_layer_steps None: one epoch (10 steps), recomputed identically on resume.
SIGNAL_PARAMS = {
    **PARAMS,
    "steps": 32,
    "checkpoint_every": 1000,
    "val_every": 0,
    "freeze_last_layer_steps": None,
    "teacher_temp_warmup_steps": 8,
    "warmup_steps": 4,
}


def test_sigterm_checkpoints_exits_nonzero_and_resumes_identically(shards, tmp_path):
    steps = SIGNAL_PARAMS["steps"]
    ref = tmp_path / "uninterrupted"
    assert _run_main(shards, ref, SIGNAL_PARAMS) == 0
    out = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1", MINT_NO_PROGRESS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "mint.cli", "train", "--index", str(shards)]
    cmd += ["--out-dir", str(out), "--params", json.dumps(SIGNAL_PARAMS), "--device", "cpu"]
    with open(tmp_path / "child.log", "w") as log_fh:
        proc = subprocess.Popen(
            cmd, env=env, stdout=log_fh, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 60
            logged = 0
            while logged < steps // 4:  # a train row at step >= 8 of 32
                assert proc.poll() is None, (tmp_path / "child.log").read_text()
                assert time.monotonic() < deadline, "child never logged a step"
                time.sleep(0.05)
                if (out / "metrics.csv").is_file():
                    rows = [r for r in _rows(out / "metrics.csv") if r["split"] == "train"]
                    logged = max([int(r["step"]) for r in rows], default=0)
            # like SLURM: every process of the job, the 2 DataLoader workers included
            os.killpg(proc.pid, signal.SIGTERM)
            rc = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    child_log = (tmp_path / "child.log").read_text()
    assert rc == EXIT_RESUME, child_log  # "checkpointed, resume me", not a kill
    assert (out / "preemptions.log").read_text().startswith("SIGTERM step=")
    assert child_log.count("SIGTERM received") == 1  # the workers ignored it
    ckpt = latest_checkpoint(out / "checkpoints")
    assert ckpt is not None, child_log
    stopped = int(ckpt.stem.split("-")[1])
    assert steps // 4 <= stopped < steps  # written by the handler, not the periodic schedule
    assert not (out / "model.safetensors").exists()
    assert _run_main(shards, out, SIGNAL_PARAMS) == 0  # the requeued job
    assert not (out / "preemptions.log").exists()  # a finished run starts the count afresh
    _assert_same_metrics(_rows(ref / "metrics.csv"), _rows(out / "metrics.csv"))
    _assert_same_weights(ref, out)


def test_changed_configuration_starts_afresh(shards, tmp_path, caplog):
    """A checkpoint left by another configuration is deleted, not resumed (run fingerprint)."""
    caplog.set_level(logging.INFO, logger="mint.train")
    out = tmp_path / "changed"
    cfg = TrainConfig.from_dict({**PARAMS, "steps": 6, "num_workers": 0})
    assert train(cfg, shards, out, device="cpu", stop_after=3) is None
    assert latest_checkpoint(out / "checkpoints").name == "step-000000003.pt"
    other = TrainConfig.from_dict({**PARAMS, "steps": 2, "lr": 5e-4, "num_workers": 0})
    caplog.clear()
    train(other, shards, out, device="cpu")
    assert "from a different configuration or index; starting afresh" in caplog.text
    assert "resumed from" not in caplog.text
    rows = _rows(out / "metrics.csv")
    assert max(int(r["step"]) for r in rows) == 2
    assert json.loads((out / "config.json").read_text())["train"]["lr"] == 5e-4
    train(other, shards, tmp_path / "fresh", device="cpu")
    _assert_same_metrics(_rows(tmp_path / "fresh" / "metrics.csv"), rows)


def test_resume_with_another_worker_layout_warns_and_continues(shards, tmp_path, caplog):
    """num_workers is not in the fingerprint: the run resumes from its step, with a warning that
    the data order differs (the RNG states of another layout are not restored)."""
    caplog.set_level(logging.INFO, logger="mint.train")
    out = tmp_path / "layout"
    params = {**PARAMS, "steps": 6, "num_workers": 0, "val_every": 0}
    assert train(TrainConfig.from_dict(params), shards, out, device="cpu", stop_after=3) is None
    caplog.clear()
    train(TrainConfig.from_dict({**params, "num_workers": 1}), shards, out, device="cpu")
    assert "resuming with 1 processes x 1 workers (was 1 x 0): data order differs" in caplog.text
    assert "resumed from" in caplog.text and "at step 3" in caplog.text
    assert [r["step"] for r in _rows(out / "metrics.csv") if r["split"] == "train"] == [
        "2",
        "4",
        "6",
    ]


def test_unknown_param_is_a_one_line_error(shards, tmp_path, capsys):
    rc = main(
        [
            "train",
            "--index",
            str(shards),
            "--out-dir",
            str(tmp_path / "x"),
            "--params",
            '{"steps": 2, "learning_rate": 1}',
        ]
    )
    assert rc == 2
    assert "learning_rate" in capsys.readouterr().err


def test_export_loads_offline_in_a_fresh_process(full_run, tmp_path):
    from mint import load_model

    enc = load_model(full_run)
    assert enc.has_st and enc.embed_dim == 64 and enc.img_size == 224
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = {k: v.numpy() for k, v in enc(x).items()}
    np.save(tmp_path / "x.npy", x.numpy())
    code = (
        "import sys, numpy as np, torch, mint\n"
        "m = mint.load_model(sys.argv[1])\n"
        "x = torch.from_numpy(np.load(sys.argv[2]))\n"
        "with torch.no_grad():\n"
        "    out = m(x)\n"
        "np.savez(sys.argv[3], **{k: v.numpy() for k, v in out.items()})\n"
    )
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_TOKEN="",
        OMP_NUM_THREADS="1",
        HF_HOME=str(tmp_path / "empty_hf_home"),
    )
    subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            str(full_run),
            str(tmp_path / "x.npy"),
            str(tmp_path / "o.npz"),
        ],
        check=True,
        env=env,
        timeout=120,
    )
    got = np.load(tmp_path / "o.npz")
    assert set(got.files) == {"cls", "st", "patch_mean"}
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)
