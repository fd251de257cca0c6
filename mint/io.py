"""Atomic file writing: a stage never leaves a half-written output behind.

Every output is written to a temporary name in the same folder and renamed into place only
when complete, so an interrupted job (preemption, out-of-memory, Ctrl-C) leaves either the old
file or nothing, and Snakemake never mistakes a truncated file for a finished one.

A job killed with SIGKILL cannot clean up, so its temporary file stays behind. Temporary names
follow one pattern (`.{stem}.{8 random chars}.tmp{suffix}` for files, `.{name}.{8}.tmp` and
`.{name}.{8}.old` for folders) that the next write of the same output recognises and removes
(`sweep_temps`): a rerun leaves no orphan. Only one job writes a given output at a time (the
workflow guarantees it), so the sweep never touches a temporary file still in use.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

# tempfile's random part: 8 characters of [a-z0-9_].
_RAND = r"[a-z0-9_]{8}"


def temp_pattern(path: str | os.PathLike, suffix: str | None = None) -> re.Pattern:
    """The names `atomic_path(path)` (or `atomic_dir(path)` when suffix is '') may leave."""
    path = Path(path)
    if suffix == "":
        return re.compile(rf"^\.{re.escape(path.name)}\.{_RAND}\.(tmp|old)$")
    suffix = path.suffix if suffix is None else suffix
    return re.compile(rf"^\.{re.escape(path.stem)}\.{_RAND}\.tmp{re.escape(suffix)}$")


def sweep_temps(folder: str | os.PathLike, pattern: re.Pattern) -> list[Path]:
    """Remove leftovers of killed writers in `folder` whose names match `pattern`."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if pattern.match(p.name):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    if removed:
        log.info("removed %d leftover temporary file(s) in %s", len(removed), folder)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it to `path` only if the block succeeds.

    The temporary name keeps the file's extension (libraries such as h5py, tifffile and
    anndata look at it) unless `suffix` is given. Leftovers of an earlier killed write of the
    same output are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix if suffix is None else suffix
    sweep_temps(path.parent, temp_pattern(path, suffix))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    tmp_path.unlink()  # let the writer create it; some libraries refuse to open an existing file
    try:
        yield tmp_path
        if not tmp_path.exists() and not tmp_path.is_symlink():
            raise FileNotFoundError(f"{path}: the writer produced no file")
        os.replace(tmp_path, path)
    except BaseException:
        if tmp_path.is_dir() and not tmp_path.is_symlink():
            shutil.rmtree(tmp_path, ignore_errors=True)
        elif tmp_path.exists() or tmp_path.is_symlink():
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Like `atomic_path` for a folder: build it under a temporary name, then swap it in.

    The swap renames the old folder aside first (`.{name}.XXXXXXXX.old`), renames the new one
    into place, then deletes the old one: at every moment `path` is either the complete old
    folder, the complete new one, or (between two renames) absent, never a half-deleted mix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_temps(path.parent, temp_pattern(path, ""))
    tmp_path = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp_path.chmod(0o755)  # mkdtemp makes it private; outputs should be as readable as files
    old = tmp_path.with_name(tmp_path.name[: -len(".tmp")] + ".old")
    moved = False
    try:
        yield tmp_path
        if path.exists() or path.is_symlink():
            os.replace(path, old)
            moved = True
        os.replace(tmp_path, path)
    except BaseException:
        shutil.rmtree(tmp_path, ignore_errors=True)
        if moved and not path.exists():
            os.replace(old, path)  # the new folder never arrived: put the old one back
        raise
    if moved:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, obj, indent: int = 2) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
