"""Check a workflow config at parse time, with one readable line per problem naming the key.

Two kinds of section, one message format (`unknown_key`):
- the fixed keys, typed by the JSON schema: `check_config` runs before Snakemake's own
  `validate()` (which fills in the defaults but prints the whole schema when a key is wrong);
- the open sections (`train.defaults`, `train.runs.<run>`, `pretrain.params`,
  `eva.overrides`), whose keys belong to the jobs: `check_open_sections` runs the jobs' own
  parsers (TrainConfig.from_dict, pretrain_config, mint.eva.render.check_overrides), so a
  value refused hours later by `mint train` or `mint eva` is refused before any job runs.

A typo anywhere reads e.g. ``config 'train.runs.mint.lrr': unknown key (known here: ...)``;
the Snakefile prints that line alone (no traceback) and exits.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from mint.errors import MintError


def _where(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def unknown_key(where: str, key: str, known) -> str:
    """The one line for a key that is not known at `where` (a dotted config path, or empty)."""
    path = f"{where}.{key}" if where else key
    return f"config '{path}': unknown key (known here: {', '.join(sorted(known))})"


def config_problems(config: dict, schema: dict) -> list[str]:
    """Every schema violation as one line naming the key; empty when the config is valid."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    problems = []
    for err in sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path)):
        where = _where(err.absolute_path)
        if err.validator == "additionalProperties":
            known = sorted(err.schema.get("properties", {}))
            extra = sorted(set(err.instance) - set(known))
            for key in extra:
                problems.append(unknown_key(where if err.absolute_path else "", key, known))
        else:
            problems.append(f"config '{where}': {err.message}")
    return problems


def _raise_first(problems: list[str]) -> None:
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise MintError(problems[0] + more)


def check_config(config: dict, schema_path: str | Path) -> None:
    """Raise MintError with the first problem (and how many more) if the config is invalid."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    _raise_first(config_problems(config, schema))


def open_section_problems(config: dict) -> list[str]:
    """Every problem of the open sections, checked by the jobs' own code: unknown keys first
    (all of them, each naming its full key), else the first value a job would refuse.
    `config` has the schema's defaults filled in."""
    from mint.train.config import RENAMED, TrainConfig

    # former names count as known: TrainConfig.from_dict answers them with the new name
    train_keys = set(TrainConfig.field_names()) | set(RENAMED)
    train = config["train"]
    sections = [("train.defaults", train.get("defaults"))]
    sections += [(f"train.runs.{run}", o) for run, o in (train.get("runs") or {}).items()]
    sections.append(("pretrain.params", config["pretrain"].get("params")))
    problems = []
    for where, params in sections:
        if isinstance(params, dict):
            problems += [unknown_key(where, k, train_keys) for k in params if k not in train_keys]
    if problems:
        return problems
    checks = [lambda: check_backbone(config["base_model"], "base_model")]
    checks += [lambda s=s: check_backbone(s, "extra_models") for s in config["extra_models"]]
    checks += [lambda: train_run_params(config), lambda: eva_overrides(config)]
    if config["pretrain"]["enabled"]:
        checks.append(lambda: _pretrain_params(config))
    for check in checks:
        try:
            check()
        except MintError as exc:
            problems.append(str(exc))
    return problems


def check_open_sections(config: dict) -> None:
    """Raise MintError with the first problem of the open sections (see the module docstring)."""
    _raise_first(open_section_problems(config))


def _pretrain_params(config: dict):
    from mint.synth.pretrain import pretrain_config

    return pretrain_config(
        config["pretrain"]["params"], config["base_model"], "config 'pretrain.params'"
    )


# ------------------------------------------------------------------ values the schema cannot type
# The schema types every fixed key; the open-ended sections (training hyperparameters, eva
# protocol overrides, backbone names) are checked here with the very functions the jobs run, so a
# value refused hours later by `mint train` or `mint eva` is refused at parse time instead.


def check_backbone(spec: str, key: str) -> str:
    """A registry name or `timm:<arch>[@file]`, checked as `mint.models.backbones` parses it."""
    from mint.models.backbones import parse_spec

    try:
        parse_spec(spec)
    except MintError as exc:
        raise MintError(f"config '{key}': {exc}") from None
    return spec


def _typed(params: dict) -> dict:
    """Values given with `snakemake --config` arrive as strings ("0.0003"): read a string as YAML
    where the TrainConfig field is not a string, so a number typed on the command line is a
    number. Anything that is still the wrong type is refused by TrainConfig, naming the key."""
    import dataclasses

    from mint.train.config import TrainConfig

    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    out = {}
    for key, value in params.items():
        if isinstance(value, str) and key in defaults and not isinstance(defaults[key], str):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                pass
        out[key] = value
    return out


def train_run_params(config: dict, base_spec: str | None = None) -> dict[str, dict]:
    """Each run's full `mint train` parameters (defaults + its overrides), checked by
    `TrainConfig.from_dict` (the job's own parser) and returned as plain JSON values.

    Only the keys the user set are kept (plus the backbone), so adding a field to TrainConfig
    with its old behaviour as the default does not rerun finished trainings. A run without its
    own `backbone` starts from `base_spec` (default: config 'base_model'; the demo passes its
    pretrained checkpoint, `<arch>@<file>`).
    """
    from mint.safe import check_name
    from mint.train.config import TrainConfig

    train = config["train"]
    defaults = _typed(dict(train.get("defaults") or {}))
    TrainConfig.from_dict(defaults, source="config 'train.defaults'")
    runs = {}
    for run, overrides in (train.get("runs") or {}).items():
        key = f"train.runs.{run}"
        check_name(run, "run name", "config 'train.runs'")
        if overrides is not None and not isinstance(overrides, dict):
            raise MintError(f"config '{key}': expected a mapping of hyperparameters")
        params = dict(defaults)
        params.update(_typed(overrides or {}))
        params.setdefault("backbone", base_spec or config["base_model"])
        checked = TrainConfig.from_dict(params, source=f"config '{key}'").to_dict()
        check_backbone(params["backbone"], f"{key}.backbone")
        runs[run] = {k: checked[k] for k in params}
    return runs


#: Settings that change how fast or where a job runs, never its result: left out of the
#: report's provenance hash (they are resources, not params, for the same reason).
SPEED_ONLY_KEYS = ("threads", "mem_mb", "runtime", "num_workers")
SPEED_ONLY_SECTION_KEYS = {"bench": ("batch_size",)}


def results_config_hash(config: dict) -> str:
    """A short hash of the resolved config without the speed-only settings and the cluster
    limits: the report's provenance line, stable when keys are reordered or workers change."""
    import hashlib
    import json

    kept = {}
    for section, value in config.items():
        if section == "cluster":
            continue
        if isinstance(value, dict):
            drop = set(SPEED_ONLY_KEYS) | set(SPEED_ONLY_SECTION_KEYS.get(section, ()))
            value = {k: v for k, v in value.items() if k not in drop}
        kept[section] = value
    text = json.dumps(kept, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def eva_overrides(config: dict) -> dict:
    """`eva.overrides`, checked by the renderer's own check (the same for every task)."""
    from mint.eva.render import check_overrides

    overrides = config["eva"].get("overrides") or {}
    check_overrides(overrides, config_key="eva.overrides")
    return overrides
