"""The config check: the shipped configs are valid, and each kind of mistake is one line that
names the key."""

from __future__ import annotations

import copy

import pytest
import yaml
from helpers import REPO

from mint.config import check_config, config_problems
from mint.errors import MintError

SCHEMA_PATH = REPO / "workflow/schemas/config.schema.yaml"
SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text())


@pytest.mark.parametrize("name", ["demo.yaml", "config.yaml"])
def test_shipped_configs_are_valid(name):
    assert config_problems(yaml.safe_load((REPO / "config" / name).read_text()), SCHEMA) == []


def _demo():
    return copy.deepcopy(yaml.safe_load((REPO / "config/demo.yaml").read_text()))


def test_unknown_key_is_named_with_the_known_ones():
    cfg = _demo()
    cfg["tile"]["min_tisue_fraction"] = 0.2
    (problem,) = config_problems(cfg, SCHEMA)
    assert problem.startswith("config 'tile.min_tisue_fraction': unknown key")
    assert "min_tissue_fraction" in problem and "\n" not in problem


def test_unknown_top_level_section():
    cfg = _demo()
    cfg["trian"] = {}
    (problem,) = config_problems(cfg, SCHEMA)
    assert problem.startswith("config 'trian': unknown key")


@pytest.mark.parametrize(
    "section,key,value,expected",
    [
        ("vocab", "n_top_genes", "many", "is not of type 'integer'"),
        ("hest", "source", "s3", "is not one of"),
        ("tile", "min_tissue_fraction", 1.5, "maximum"),
    ],
)
def test_wrong_value_is_one_line_naming_the_key(section, key, value, expected):
    cfg = _demo()
    cfg[section][key] = value
    with pytest.raises(MintError) as exc:
        check_config(cfg, SCHEMA_PATH)
    msg = str(exc.value)
    assert msg.startswith(f"config '{section}.{key}':") and "\n" not in msg
    assert expected in msg or "greater" in msg


def test_results_hash_ignores_speed_settings_and_key_order_but_not_results():
    """The report's provenance hash is a rerun trigger: workers, threads, inference batch size
    and cluster limits must not change it; a hyperparameter must."""
    from mint.config import results_config_hash

    cfg = {
        "bench": {"batch_size": 32, "num_workers": 0, "seed": 1},
        "eva": {"num_workers": 0, "overrides": {"lr": 0.001, "max_steps": 10}},
        "train": {"threads": 1, "defaults": {"steps": 100}},
        "cluster": {"max_mem_mb": 1000},
    }
    h = results_config_hash(cfg)
    fast = {
        "cluster": {"max_mem_mb": 9},
        "train": {"defaults": {"steps": 100}, "threads": 8},
        "eva": {"overrides": {"max_steps": 10, "lr": 0.001}, "num_workers": 4},
        "bench": {"seed": 1, "num_workers": 8, "batch_size": 256},
    }
    assert results_config_hash(fast) == h
    changed = {**cfg, "bench": {**cfg["bench"], "seed": 2}}
    assert results_config_hash(changed) != h
    steps = {**cfg, "train": {"threads": 1, "defaults": {"steps": 101}}}
    assert results_config_hash(steps) != h
