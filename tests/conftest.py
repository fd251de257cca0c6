"""Shared fixtures: the repository root, one demo run per session, the pinned HEST metadata,
small synthetic HEST folders and toy training shards.

Test files use these as fixtures and never import this file; plain helpers (the Snakemake
runner, the HEST-folder writer) are in tests/helpers.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import REPO, SMALL_HEST, HestFolder, run_snakemake, write_hest

from mint.synth.hest import SynthConfig


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


@pytest.fixture(scope="session")
def _hest_cache(tmp_path_factory) -> dict:
    return {"root": tmp_path_factory.mktemp("hest_cache")}


@pytest.fixture
def hest_folder(tmp_path, _hest_cache):
    """The one factory of HEST-1k folders for tests: `hest_folder(["SYNX000"])` writes those
    synthetic samples (the demo's writer, `SMALL_HEST` sizes unless `cfg` is given) once per
    session and hands each test its own copy under tmp_path, free to damage."""

    def make(sample_ids, cfg: SynthConfig = SMALL_HEST, name: str = "HEST") -> HestFolder:
        key = (tuple(sample_ids), cfg)
        if key not in _hest_cache:
            cached = _hest_cache["root"] / str(len(_hest_cache))
            _hest_cache[key] = write_hest(cached, tuple(sample_ids), cfg)
        src = _hest_cache[key]
        dest = tmp_path / name
        shutil.copytree(src.root, dest)
        return HestFolder(dest, dest / src.metadata.name, src.sample_ids)

    return make


@pytest.fixture(scope="module")
def shards(request, tmp_path_factory) -> Path:
    """Toy training shards (`mint.train.toy.write_toy_shards`), written once per test module;
    the module's `TOY_SHARDS` dict (keyword arguments of the writer) sets their size."""
    from mint.train.toy import write_toy_shards

    kw = getattr(request.module, "TOY_SHARDS", {})
    return write_toy_shards(tmp_path_factory.mktemp("toy"), **kw)
