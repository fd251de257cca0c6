"""`mint download`: put one HEST-1k sample into `resources/hest/` in the hub's layout.

Sources:
  hub        huggingface_hub.snapshot_download of exactly this sample's files (per-folder
             `allow_patterns`, so the large extras such as cellvit_seg/ or patches/ are not
             fetched), token from the HF_TOKEN environment variable only, retries with
             exponential back-off, then a check that every expected file is there and non-empty.
  local      an existing HEST-1k folder: its files are symlinked (or copied with --copy).
  synthetic  the generator of `mint.synth.hest` (the demo).

Required files: slide, expression, metadata JSON and tissue contours; for Xenium also the
transcript table and the cell segmentation (cell targets need it; `--no-cell-seg` when the
workflow tiles with transcript targets). A missing one is an error naming the sample and file.

The sample id must be a safe name (`mint.safe.check_name`): it becomes part of every path, so
`../x` would read and write outside the HEST folder. Links and copies are placed atomically
(`mint.io.atomic_path`): a kill leaves a temporary name that the rerun removes.

The token never appears in arguments, logs or outputs.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from mint.errors import MintError, one_line
from mint.hest.metadata import read_metadata, sample_row
from mint.io import atomic_path
from mint.safe import check_name

log = logging.getLogger(__name__)

HEST_REPO_ID = "MahmoodLab/hest"
_sleep = time.sleep  # replaced in tests


def is_xenium(technology: str) -> bool:
    return str(technology).strip().lower() == "xenium"


def required_files(sample_id: str, technology: str, cell_seg: bool = True) -> list[str]:
    """Files a sample must have after download (relative to the HEST folder).

    The tile job declares the same files as inputs, so a file restored later re-tiles. The
    Xenium cell segmentation is required unless `cell_seg` is False (transcript targets).
    """
    files = [
        f"wsis/{sample_id}.tif",
        f"st/{sample_id}.h5ad",
        f"metadata/{sample_id}.json",
        f"tissue_seg/{sample_id}_contours.geojson",
    ]
    if is_xenium(technology):
        files.append(f"transcripts/{sample_id}_transcripts.parquet")
        if cell_seg:
            files.append(f"xenium_seg/{sample_id}_xenium_cell_seg.parquet")
    return files


def optional_globs(sample_id: str, technology: str, cell_seg: bool = True) -> list[str]:
    """Files used when present (the segmentation when transcript targets make it optional)."""
    if is_xenium(technology) and not cell_seg:
        return [f"xenium_seg/{sample_id}_xenium_cell_seg.parquet"]
    return []


def hub_patterns(sample_id: str, technology: str) -> list[str]:
    """`allow_patterns` for one sample: the exact files the pipeline reads, nothing else.

    Exact names, not `*{id}*` globs: 'TENX1' must not match 'TENX10', and the hub's extras
    (nucleus segmentation, zipped GeoJSON copies, CellViT) are several GB per Xenium sample.
    """
    pats = [
        f"wsis/{sample_id}.tif",
        f"st/{sample_id}.h5ad",
        f"metadata/{sample_id}.json",
        f"tissue_seg/{sample_id}_contours.geojson",
    ]
    if is_xenium(technology):
        pats += [
            f"transcripts/{sample_id}_transcripts.parquet",
            f"xenium_seg/{sample_id}_xenium_cell_seg.parquet",
        ]
    return pats


def check_files(
    out_dir: Path, sample_id: str, technology: str, cell_seg: bool = True
) -> list[Path]:
    """MintError naming the sample and the file if a required file is missing or empty."""
    found = []
    for rel in required_files(sample_id, technology, cell_seg):
        p = out_dir / rel
        if not p.exists():
            raise MintError(f"{sample_id} {p}: expected file missing after download")
        if p.stat().st_size == 0:
            raise MintError(f"{sample_id} {p}: downloaded file is empty")
        found.append(p)
    for pat in optional_globs(sample_id, technology, cell_seg):
        hits = sorted(out_dir.glob(pat))
        for h in hits:
            if h.stat().st_size == 0:
                raise MintError(f"{sample_id} {h}: downloaded file is empty")
        found += hits
    return found


def _is_permanent(exc: Exception) -> bool:
    """Errors that a retry cannot fix (no access, wrong repo)."""
    name = type(exc).__name__
    return name in {
        "GatedRepoError",
        "RepositoryNotFoundError",
        "RevisionNotFoundError",
        "EntryNotFoundError",
    }


_NETWORK_ERRORS = {
    "LocalEntryNotFoundError",  # huggingface_hub: hub unreachable and no local copy
    "IncompleteSnapshotError",
    "OfflineModeIsEnabled",
    "ConnectError",
    "ConnectTimeout",
    "ReadTimeout",
    "TimeoutException",
    "ProxyError",
    "ConnectionError",
    "Timeout",
}


def is_network_error(exc: BaseException) -> bool:
    """True when `exc` (or its cause) says the hub could not be reached."""
    while exc is not None:
        if type(exc).__name__ in _NETWORK_ERRORS or isinstance(
            exc, (ConnectionError, TimeoutError)
        ):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class HubUnreachable(Exception):
    """snapshot_download could not reach the hub and returned the local folder as it was."""


@contextlib.contextmanager
def watch_hub_log() -> Iterator[list[str]]:
    """Collect huggingface_hub's warnings during a call.

    Offline, snapshot_download does not raise when `local_dir` already holds files (other
    samples): it logs that the remote repo cannot be accessed and returns. That is a network
    failure, not a missing file, and must be reported as one.
    """
    seen: list[str] = []

    class _Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = _Grab(level=logging.WARNING)
    hub_log = logging.getLogger("huggingface_hub")
    hub_log.addHandler(handler)
    try:
        yield seen
    finally:
        hub_log.removeHandler(handler)


def download_hub(
    sample_id: str,
    technology: str,
    out_dir: str | os.PathLike,
    repo_id: str = HEST_REPO_ID,
    retries: int = 3,
    backoff_s: float = 10.0,
    cell_seg: bool = True,
) -> list[Path]:
    """Fetch one sample from the hub into `out_dir` and check it."""
    import huggingface_hub

    check_name(sample_id, "sample id", "--sample")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    patterns = hub_patterns(sample_id, technology)
    last: Exception | None = None
    for attempt in range(1, max(1, retries) + 1):
        try:
            log.info(
                "%s: snapshot_download %s (attempt %d/%d) %s",
                sample_id,
                repo_id,
                attempt,
                retries,
                patterns,
            )
            with watch_hub_log() as hub_warnings:
                huggingface_hub.snapshot_download(
                    repo_id=repo_id,
                    repo_type="dataset",
                    local_dir=str(out),
                    allow_patterns=patterns,
                    # HF_TOKEN only: False stops huggingface_hub from falling back to other
                    # variables or a cached login.
                    token=os.environ.get("HF_TOKEN") or False,
                )
            unreachable = [m for m in hub_warnings if "cannot be accessed" in m]
            if unreachable:
                raise HubUnreachable(unreachable[0])
            return check_files(out, sample_id, technology, cell_seg)
        except MintError as exc:
            last = exc  # incomplete download: retry
        except Exception as exc:  # noqa: BLE001 - network errors come in many types
            if _is_permanent(exc):
                raise MintError(
                    f"{sample_id} {repo_id}: no access ({type(exc).__name__}); accept the dataset terms "
                    "on huggingface.co and export HF_TOKEN with a read token"
                ) from None
            last = exc
        if attempt < retries:
            wait = min(backoff_s * 2 ** (attempt - 1), 300.0)
            log.warning(
                "%s: download failed (%s: %s); retrying in %.0f s",
                sample_id,
                type(last).__name__,
                one_line(last),
                wait,
            )
            _sleep(wait)
    if isinstance(last, MintError):
        raise last
    if isinstance(last, HubUnreachable) or is_network_error(last):
        raise MintError(
            f"{sample_id} {repo_id}: network error, the hub could not be reached after {retries} "
            f"attempts ({type(last).__name__}: {one_line(last, 200)}); check the connection, "
            "proxy and HF_HUB_OFFLINE"
        )
    raise MintError(
        f"{sample_id} {repo_id}: download failed after {retries} attempts "
        f"({type(last).__name__}: {one_line(last, 200)})"
    )


def _place(src: Path, dst: Path, copy: bool) -> None:
    """Link or copy `src` to `dst` atomically (a killed copy leaves a name the rerun removes)."""
    with atomic_path(dst) as tmp:
        if copy:
            shutil.copy2(src, tmp)
        else:
            os.symlink(src.resolve(), tmp)


def download_local(
    sample_id: str,
    technology: str,
    local_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    copy: bool = False,
    cell_seg: bool = True,
) -> list[Path]:
    """Link (or copy) one sample's files from an existing HEST folder."""
    check_name(sample_id, "sample id", "--sample")
    src_root = Path(local_dir)
    if not src_root.is_dir():
        raise MintError(f"{sample_id} {src_root}: local HEST folder not found")
    out = Path(out_dir)
    for rel in required_files(sample_id, technology, cell_seg):
        src = src_root / rel
        if not src.is_file():
            raise MintError(f"{sample_id} {src}: missing in the local HEST folder")
        if src.stat().st_size == 0:
            raise MintError(f"{sample_id} {src}: empty file in the local HEST folder")
    rels = list(required_files(sample_id, technology, cell_seg))
    for pat in optional_globs(sample_id, technology, cell_seg):
        rels += [str(p.relative_to(src_root)) for p in sorted(src_root.glob(pat))]
    for rel in rels:
        src, dst = src_root / rel, out / rel
        if dst.resolve() == src.resolve():
            continue  # out_dir is the local folder itself
        _place(src, dst, copy)
    return check_files(out, sample_id, technology, cell_seg)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mint.synth.cli import add_size_arguments

    parser.add_argument("--source", choices=["hub", "local", "synthetic"], required=True)
    parser.add_argument("--sample", required=True, help="HEST sample id, e.g. TENX95")
    parser.add_argument("--out-dir", default="resources/hest", help="HEST folder to fill")
    parser.add_argument(
        "--metadata", required=True, help="HEST metadata CSV (technology of the sample)"
    )
    parser.add_argument("--repo-id", default=HEST_REPO_ID, help="hub dataset repository")
    parser.add_argument("--local-dir", default=None, help="existing HEST folder (source local)")
    parser.add_argument(
        "--copy", action="store_true", help="copy instead of symlink (source local)"
    )
    parser.add_argument("--retries", type=int, default=3, help="download attempts (source hub)")
    parser.add_argument(
        "--no-cell-seg",
        dest="cell_seg",
        action="store_false",
        help="Xenium cell segmentation optional (tiling with transcript targets)",
    )
    add_size_arguments(parser)


def run(args: argparse.Namespace) -> int:
    check_name(args.sample, "sample id", "--sample")
    df = read_metadata(args.metadata)
    row = sample_row(df, args.sample)
    tech = str(row["st_technology"])
    if args.source == "hub":
        files = download_hub(
            args.sample,
            tech,
            args.out_dir,
            repo_id=args.repo_id,
            retries=args.retries,
            cell_seg=args.cell_seg,
        )
    elif args.source == "local":
        if not args.local_dir:
            raise MintError(f"{args.sample} --local-dir: required for source local")
        files = download_local(
            args.sample, tech, args.local_dir, args.out_dir, copy=args.copy, cell_seg=args.cell_seg
        )
    else:
        from mint.synth.cli import config_from_args
        from mint.synth.hest import generate_sample

        generate_sample(args.sample, args.out_dir, **dataclasses.asdict(config_from_args(args)))
        files = check_files(Path(args.out_dir), args.sample, tech, args.cell_seg)
    log.info("%s: %d files in %s", args.sample, len(files), args.out_dir)
    return 0
