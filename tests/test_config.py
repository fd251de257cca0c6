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


# ------------------------------------------------------------------ one source of defaults
# mint.settings maps each stage's config keys to its CLI flags. A default lives in the stage's
# dataclass (or its add_arguments); the schema repeats it for the reader, and these tests fail
# as soon as the two differ without the table declaring why (`Option.workflow`).
import argparse  # noqa: E402
import importlib  # noqa: E402
import shlex  # noqa: E402

from mint.settings import STAGES, stage_opts  # noqa: E402

# verb of each table -> (`mint` verb, sub-command)
VERB = {"eva": ("eva", "fit")}
# a value other than the default, for the options whose type alone does not give one
OTHER = {
    "xenium_target": "transcripts",
    "precision": "fp16",
    "embedding": "cls",
    "accelerator": "cpu",
    "variants": ["cls"],
    "overrides": {"n_runs": 2},
    "species": [],
    "local_dir": "/data/hest",
    "max_samples": 5,
}


def _schema_defaults(section: str) -> dict:
    props = SCHEMA["properties"][section]["properties"]
    return {k: v["default"] for k, v in props.items() if "default" in v}


def _parse(stage: str, words: list[str]) -> dict:
    """Parse `words` with the verb's own parser (required arguments filled with dummies)."""
    from mint.cli import VERBS

    verb, sub = VERB.get(stage, (stage, None))
    parser = argparse.ArgumentParser()
    importlib.import_module(VERBS[verb][0]).add_arguments(parser)
    target, argv = parser, []
    if sub:
        subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        target, argv = subs.choices[sub], [sub]
    for action in target._actions:
        if action.required and action.option_strings:
            argv += [action.option_strings[0], action.choices[0] if action.choices else "x"]
    return vars(parser.parse_args(argv + words))


def _dest(stage: str, flag: str) -> str:
    from mint.cli import VERBS

    verb, sub = VERB.get(stage, (stage, None))
    parser = argparse.ArgumentParser()
    importlib.import_module(VERBS[verb][0]).add_arguments(parser)
    if sub:
        subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = subs.choices[sub]
    return parser._option_string_actions[flag].dest


def _workflow_words(stage: str, section: dict) -> list[str]:
    """What a rule passes: stage_opts, plus the options it passes as {threads}/{resources}."""
    words = shlex.split(stage_opts(stage, section))
    for o in STAGES[stage].options:
        if o.resource and o.key in section:
            words += [o.flag, str(section[o.key])]
    return words


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_schema_defaults_are_the_cli_defaults(stage):
    """The flags a rule writes for the schema's defaults change nothing the CLI would not
    have chosen alone: one default per setting, or a difference the table declares."""
    section = _schema_defaults(STAGES[stage].section)
    declared = [o for o in STAGES[stage].options if o.workflow_differs]
    for o in declared:
        assert section[o.key] == o.workflow, f"{stage}.{o.key}: schema vs table"
        assert o.why, f"{stage}.{o.key}: say why the workflow default differs"
    skip = {_dest(stage, o.flag) for o in declared}
    alone = _parse(stage, [])
    workflow = _parse(stage, _workflow_words(stage, section))
    drift = {k: (alone[k], workflow[k]) for k in alone if k not in skip and alone[k] != workflow[k]}
    assert not drift, f"{stage}: CLI default vs schema default {drift}"
    for o in declared:
        assert alone[_dest(stage, o.flag)] != workflow[_dest(stage, o.flag)]


@pytest.mark.parametrize(
    "stage,key",
    [(s, o.key) for s in sorted(STAGES) for o in STAGES[s].options if o.key],
)
def test_each_setting_reaches_its_cli_option(stage, key):
    """A value other than the default changes what the verb parses: the flag exists, is wired
    to the right option and, for a boolean, points the right way."""
    section = _schema_defaults(STAGES[stage].section)
    value = section[key]
    if key in OTHER:
        other = OTHER[key]
    elif isinstance(value, bool):
        other = not value
    elif value is None or isinstance(value, int):
        other = (value or 0) + 3
    else:
        other = value * 2 if isinstance(value, float) and value else 0.25
    assert other != value
    before = _parse(stage, _workflow_words(stage, section))
    after = _parse(stage, _workflow_words(stage, {**section, key: other}))
    assert before != after, f"{stage}.{key}: {value!r} -> {other!r} changes nothing"
