"""Preemption as SLURM delivers it, through the workflow's real training command.

The train rule's own command line (the Snakemake job: bash, then `mint.train.launch`, i.e.
torchrun, then 2 CPU ranks on gloo) runs as its own process group. SIGUSR1 goes to that group,
the way SLURM's `--signal=USR1@600` reaches the processes of a job step: Snakemake and the shell
must survive it, torchrun must forward it to the ranks (which sit in their own sessions), every
rank must stop after the same step with a checkpoint, and the job must exit with EXIT_RESUME.
The rerun resumes and must give the same weights, bit for bit, as an uninterrupted run.
"""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import REPO, TINY_MODEL, snakemake_env
from safetensors.torch import load_file

from mint.train.preempt import EXIT_RESUME
from mint.train.toy import write_toy_shards

PARAMS = {
    **TINY_MODEL,
    "steps": 32,
    "global_crop_size": 64,
    "n_local_crops": 2,
    "teacher_temp_warmup_steps": 8,
    "freeze_last_layer_steps": None,
    "warmup_steps": 4,
    "lr": 1e-3,
    "head_lr": 1e-2,
    "num_workers": 1,
    "shuffle_buffer": 8,
    "checkpoint_every": 1000,  # only the signal writes a checkpoint before the end
    "log_every": 2,
    "val_every": 0,
}
MODEL = "results/models/mint/model.safetensors"


def _workdir(root: Path) -> tuple[Path, Path]:
    """A working directory holding only the shards, and a config training on 2 processes."""
    root.mkdir(parents=True)
    write_toy_shards(
        root / "results/shards", n_train=48, n_val=8, samples_per_shard=8, image_size=64
    )
    cfg = yaml.safe_load((REPO / "config/demo.yaml").read_text())
    cfg["train"].update(gpus=2, threads=2, defaults=PARAMS, runs={"mint": {}})
    cfg["pretrain"]["enabled"] = False  # the toy shards stand in for everything upstream
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return root, path


def _snakemake(workdir: Path, cfg: Path) -> list[str]:
    # Only the train rule may run: the shards above stand in for the upstream stages.
    return [
        sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
        "--directory", str(workdir), "--configfile", str(cfg), "--cores", "2",
        "--allowed-rules", "train_run", "--rerun-incomplete", MODEL,
    ]  # fmt: skip


def _train_step(workdir: Path) -> int:
    path = workdir / "results/models/mint/metrics.csv"
    if not path.is_file():
        return 0
    with open(path) as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("split") == "train"]
    return max((int(r["step"]) for r in rows), default=0)


def _env() -> dict[str, str]:
    env = snakemake_env()
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.slow
def test_sigusr1_to_the_job_group_checkpoints_every_rank_and_resumes_bit_exactly(tmp_path):
    ref, ref_cfg = _workdir(tmp_path / "uninterrupted")
    subprocess.run(_snakemake(ref, ref_cfg), env=_env(), check=True, capture_output=True)

    work, cfg = _workdir(tmp_path / "preempted")
    with open(tmp_path / "snakemake.log", "w") as out:
        proc = subprocess.Popen(
            _snakemake(work, cfg),
            env=_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, like a SLURM job step
        )
        try:
            deadline = time.monotonic() + 300
            while _train_step(work) < 8:
                assert proc.poll() is None, (tmp_path / "snakemake.log").read_text()[-4000:]
                assert time.monotonic() < deadline, "training never logged step 8"
                time.sleep(0.1)
            os.killpg(proc.pid, signal.SIGUSR1)
            rc = proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    sm_log = (tmp_path / "snakemake.log").read_text()
    train_log = (work / "logs/train/mint.log").read_text()
    # Snakemake survived the signal, saw the job's own exit code and retried it; the retry
    # resumed from the checkpoint and finished, in the same invocation.
    assert rc == 0, sm_log[-4000:]
    assert f"non-zero exit status {EXIT_RESUME}" in sm_log, sm_log[-4000:]
    assert sm_log.count("localrule train_run:") == 2, sm_log[-4000:]
    # The retry of a checkpoint-and-exit is not a memory failure: same memory both times.
    mems = re.findall(r"resources: .*\bmem_mb=(\d+)", sm_log)
    assert len(mems) == 2 and len(set(mems)) == 1, mems
    # The ranks (in their own sessions: only torchrun's forwarding reaches them) stopped after
    # the same step with a checkpoint that only the signal can have written (the periodic one
    # is at step 1000); the retry's log (Snakemake replaces the log per attempt) resumes there.
    resumed = re.findall(r"resumed from \S+ at step (\d+)", train_log)
    assert len(resumed) == 2 and len(set(resumed)) == 1, train_log[-4000:]  # one line per rank
    assert 8 <= int(resumed[0]) < PARAMS["steps"]
    assert not (work / "results/models/mint/preemptions.log").exists()  # cleared when done

    a, b = load_file(str(ref / MODEL)), load_file(str(work / MODEL))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
