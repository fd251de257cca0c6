"""Shared fixtures: the repository root, a Snakemake runner and one demo run per session.

The demo DAG runs once (it takes minutes on 2 cores) in a temporary working directory, the
way a user runs the workflow from any folder; every end-to-end test reads that run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def snakemake_env() -> dict[str, str]:
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    env["MINT_NO_PROGRESS"] = "1"
    env["HF_HUB_OFFLINE"] = "1"
    env.pop("HF_TOKEN", None)
    return env


def run_snakemake(
    args: list[str], workdir: Path, check: bool = True, timeout: float = 1800
) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        *args,
    ]
    proc = subprocess.run(
        cmd, cwd=workdir, env=snakemake_env(), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        logs = ""
        log_dir = workdir / "logs"
        if log_dir.exists():
            for f in sorted(log_dir.rglob("*.log")):
                text = f.read_text(errors="replace")
                if "rror" in text:
                    logs += f"\n--- {f}\n{text[-3000:]}"
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({proc.returncode})\n"
            f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}{logs}"
        )
    return proc


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """The whole demo DAG, run once, from a working directory outside the repository."""
    workdir = tmp_path_factory.mktemp("demo")
    run_snakemake(
        ["--cores", "2", "--configfile", str(REPO / "config" / "demo.yaml")], workdir, timeout=3000
    )
    return workdir


@pytest.fixture
def hest_csv() -> Path:
    """The real HEST v1.1.0 metadata pinned in the project."""
    path = REPO / "config" / "hest" / "HEST_v1_1_0.csv"
    assert path.exists()
    return path


def has_shared_csv() -> bool:
    return (SHARED / "data" / "HEST_v1_1_0.csv").exists()


__all__ = ["REPO", "SHARED", "run_snakemake", "snakemake_env", "shutil", "has_shared_csv"]
