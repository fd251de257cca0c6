"""Names that become file paths or shell words: one pattern, checked where the value enters.

Sample ids, run names, task names and model keys end up as folder and file names
(`results/models/{run}/`, `resources/hest/st/{id}.h5ad`) and as words on Snakemake's shell lines.
A value such as `../../X` or `a b` would write outside the working directory or split a command,
so every such value is checked against one conservative pattern where it enters the program (the
config, the metadata CSV, the command line), with an error that names the value and its source.
"""

from __future__ import annotations

import re
from pathlib import Path

from mint.errors import MintError

# Letters, digits, '.', '_' and '-'; starts with a letter or digit (so never '.', '..' or '-x'),
# at most 128 characters. Every HEST-1k id, eva task and registry name fits.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_name(value: object, what: str, source: str) -> str:
    """Return `value` if it is a safe single path component, else raise a one-line MintError.

    `what` says what the value is ("sample id", "run name"), `source` where it came from
    (a file and row, a config key), so the user can find and fix it.
    """
    if not isinstance(value, str) or not SAFE_NAME.fullmatch(value):
        raise MintError(
            f"{source}: {what} {value!r} is not a safe name (use letters, digits, '.', '_', '-'; "
            "start with a letter or digit; at most 128 characters)"
        )
    return value


def model_key(spec: str) -> str:
    """The results key of a backbone spec (`timm:vit_base@/ckpt/w.safetensors` ->
    `timm_vit_base_ckpt_w.safetensors`): runs of characters outside the safe set become one '_'.

    The workflow names `results/bench/{model}/` and `results/eva/{model}/` with it and
    `mint eva` falls back to it without `--model-name`, so both must compute the same key.
    """
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", spec).strip("_.-")


def check_inside(path: str | Path, root: str | Path, what: str) -> Path:
    """Resolve `path` and refuse it unless it lies inside `root` (symlinks resolved)."""
    resolved = Path(path).resolve()
    base = Path(root).resolve()
    if resolved != base and base not in resolved.parents:
        raise MintError(f"{what}: {str(path)!r} lies outside {str(base)!r}")
    return resolved
