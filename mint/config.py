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
