"""Shard verification: every shard `index.json` lists is there, complete and unchanged.

`index.json` records each shard's sample count, byte size and SHA-256 (written by
:mod:`mint.data.shards`). `verify_shards` (called by training before the first step, and by
`mint shards --verify`) checks all three, so a damaged shard is a one-line error naming the
file, and a shard cut at a member boundary (a valid but shorter tar) can never pass as
complete. Kept apart from the writer: the readers (training, ``--verify``) need only this.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tarfile
from pathlib import Path

from mint.errors import MintError, one_line

log = logging.getLogger(__name__)


def file_digest(path: Path) -> tuple[int, str]:
    """(byte size, SHA-256 hex) of a file, read in 8 MiB blocks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(1 << 23):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


def count_samples(path: Path) -> int:
    """Number of WebDataset samples (distinct keys) in a tar, read from the headers only.

    Every sample must have the same members (jpg, expr.npy, ...): a tar cut inside a sample
    leaves one with fewer, which is an error here rather than a decoding error mid-training.
    """
    members: dict[str, int] = {}
    try:
        with tarfile.open(path, "r:") as tf:
            for member in tf:
                if member.isfile():
                    key = member.name.split(".", 1)[0]
                    members[key] = members.get(key, 0) + 1
    except (tarfile.TarError, OSError) as exc:
        raise MintError(f"shards {path}: unreadable shard ({one_line(exc)})") from None
    if len(set(members.values())) > 1:
        short = min(members, key=members.get)
        raise MintError(f"shards {path}: sample {short!r} is incomplete (truncated shard?)")
    return len(members)


def verify_shards(index_path: str | Path, checksums: bool = True) -> int:
    """Check every shard `index.json` lists; returns the number checked.

    Each shard must exist, have the recorded byte size and SHA-256 (when recorded: indexes of
    older versions lack them) and hold the recorded number of samples. The first failure is a
    MintError naming the shard file, so training stops before its first step.
    """
    index_path = Path(index_path)
    try:
        raw = json.loads(index_path.read_text())
    except FileNotFoundError:
        raise MintError(f"shards {index_path}: index.json not found") from None
    except (OSError, ValueError) as exc:
        raise MintError(f"shards {index_path}: unreadable index.json ({one_line(exc)})") from None
    entries = list(raw.get("shards", [])) + list(raw.get("val_shards", []))
    for entry in entries:
        path = index_path.parent / str(entry.get("path", ""))
        if not path.is_file():
            raise MintError(f"shards {path}: shard listed in {index_path.name} is missing")
        want_bytes, want_sha = entry.get("bytes"), entry.get("sha256")
        if want_bytes is not None and path.stat().st_size != int(want_bytes):
            raise MintError(
                f"shards {path}: {path.stat().st_size} bytes, index.json records {want_bytes} "
                "(truncated or replaced); rebuild the shards"
            )
        if checksums and want_sha:
            _, digest = file_digest(path)
            if digest != want_sha:
                raise MintError(
                    f"shards {path}: SHA-256 differs from index.json (damaged or changed); "
                    "rebuild the shards"
                )
        n = count_samples(path)
        if n != int(entry.get("n", -1)):
            raise MintError(
                f"shards {path}: {n} samples, index.json records {entry.get('n')} "
                "(truncated or replaced); rebuild the shards"
            )
    log.info("verified %d shard(s) listed in %s", len(entries), index_path)
    return len(entries)
