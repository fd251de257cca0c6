"""Check a workflow config against the JSON schema, with one readable line per problem.

Snakemake's own `validate()` (which also fills in the schema's defaults) prints the whole
schema when a key is wrong; this check runs first so a typo reads as one line that names the
key, e.g. ``config 'tile.min_tisue_fraction': unknown key (known: min_tissue_fraction, ...)``.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from mint.errors import MintError


def _where(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


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
                key_path = f"{where}.{key}" if err.absolute_path else key
                problems.append(
                    f"config '{key_path}': unknown key (known here: {', '.join(known)})"
                )
        else:
            problems.append(f"config '{where}': {err.message}")
    return problems


def check_config(config: dict, schema_path: str | Path) -> None:
    """Raise MintError with the first problem (and how many more) if the config is invalid."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    problems = config_problems(config, schema)
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise MintError(problems[0] + more)


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
    """`eva.overrides`, checked per configured task by the renderer's own check."""
    from mint.eva.render import _check_overrides
    from mint.eva.tasks import TASKS

    overrides = config["eva"].get("overrides") or {}
    for task in config["eva"].get("tasks") or []:
        if task in TASKS:
            try:
                _check_overrides(TASKS[task], overrides)
            except MintError as exc:
                raise MintError(f"config 'eva.overrides': {exc}") from None
    return overrides
