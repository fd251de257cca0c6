"""The config check: the shipped configs are valid, and each kind of mistake is one line that
names the key."""

from __future__ import annotations

import copy

import pytest
import yaml
from conftest import REPO

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
