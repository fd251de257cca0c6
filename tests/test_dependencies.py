"""The declared dependencies are the code's: every third-party module the package and the
workflow import is declared in pyproject.toml (not left to arrive through another package's
extra), every declared one is imported or has a stated reason, and the conda environment for
cluster users lists the same packages."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import yaml

tomllib = pytest.importorskip("tomllib")

REPO = Path(__file__).resolve().parents[1]

# Declared but never imported by name, and why each is still needed.
NOT_IMPORTED = {
    "lightning": "eva's trainer, held to the range eva runs with",
    "snakemake-executor-plugin-slurm": "loaded by snakemake for --executor slurm",
    "openslide-bin": "the OpenSlide C library that openslide-python loads",
    "tensorboard": "torch.utils.tensorboard's writer",
}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _dist_name(requirement: str) -> str:
    return _norm(re.match(r"[A-Za-z0-9_.-]+", requirement).group(0))


def _declared() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {_dist_name(r) for r in project["dependencies"]}


def _imported_modules() -> set[str]:
    """Top-level names of the absolute imports in mint/ and the workflow's rules."""
    names: set[str] = set()
    for path in sorted((REPO / "mint").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    for path in [REPO / "Snakefile", *sorted((REPO / "workflow").rglob("*.smk"))]:
        names |= set(re.findall(r"^\s*(?:from|import) ([A-Za-z_]\w*)", path.read_text(), re.M))
    return {n for n in names if n not in sys.stdlib_module_names and n != "mint"}


def test_every_third_party_import_is_declared():
    dists = packages_distributions()
    declared = _declared()
    undeclared = {}
    for module in sorted(_imported_modules()):
        owners = {_norm(d) for d in dists.get(module, [])}
        if not owners & declared:
            undeclared[module] = sorted(owners) or ["(not installed)"]
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_every_declared_dependency_is_used():
    dists = packages_distributions()
    used = {_norm(d) for m in _imported_modules() for d in dists.get(m, [])}
    unused = _declared() - used - set(NOT_IMPORTED)
    assert not unused, f"declared in pyproject.toml but never imported: {sorted(unused)}"


def test_conda_env_lists_the_same_packages():
    env = yaml.safe_load((REPO / "envs" / "mint.yaml").read_text())["dependencies"]
    listed = set()
    for dep in env:
        for item in dep["pip"] if isinstance(dep, dict) else [dep]:
            name = _dist_name(item)
            # c-compiler: builds mint.data._lzw and _resample
            if name not in {"python", "pip", "c-compiler"}:
                listed.add(name)
    assert listed == _declared()
