"""`mint download`: put one HEST-1k sample into `resources/hest/` in the hub's layout.

Sources (real data only; the synthetic demo data is written by `mint synth`):
  hub        huggingface_hub.snapshot_download of exactly this sample's files (the exact names of
             `mint.hest.layout`, so the large extras such as cellvit_seg/ or patches/ are not
             fetched), with the retry policy of `mint.hest.hub`, then a check that every
             expected file is there and non-empty.
  local      an existing HEST-1k folder: its files are symlinked (or copied with --copy).

Required files (`mint.hest.layout.required_keys`): slide, expression, metadata JSON and tissue
contours; for Xenium also the transcript table and the cell segmentation (cell targets need it;
`--no-cell-seg` when the workflow tiles with transcript targets). A missing one is an error
naming the sample and file.

The sample id must be a safe name (`mint.safe.check_name`): it becomes part of every path, so
`../x` would read and write outside the HEST folder. Links and copies are placed atomically
(`mint.io.atomic_path`): a kill leaves a temporary name that the rerun removes.

The token never appears in arguments, logs or outputs.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from mint.errors import MintError
from mint.hest import hub, layout
from mint.hest.metadata import read_metadata, sample_row
from mint.io import atomic_path
from mint.safe import check_name

log = logging.getLogger(__name__)

HEST_REPO_ID = "MahmoodLab/hest"


def required_files(sample_id: str, technology: str, cell_seg: bool = True) -> list[str]:
    """Files a sample must have after download (relative to the HEST folder).

    The tile job declares the same files as inputs, so a file restored later re-tiles.
    """
    return list(layout.sample_files(sample_id, technology, cell_seg=cell_seg).values())


def optional_files(sample_id: str, technology: str, cell_seg: bool = True) -> list[str]:
    """Files used when present (the segmentation when transcript targets make it optional)."""
    return [layout.sample_file(k, sample_id) for k in layout.optional_keys(technology, cell_seg)]


def hub_patterns(sample_id: str, technology: str) -> list[str]:
    """`allow_patterns` for one sample: the exact files the pipeline reads, nothing else.

    Exact names, not `*{id}*` globs: 'TENX1' must not match 'TENX10', and the hub's extras
    (nucleus segmentation, zipped GeoJSON copies, CellViT) are several GB per Xenium sample.
    """
    return required_files(sample_id, technology, cell_seg=True)


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
    for rel in optional_files(sample_id, technology, cell_seg):
        p = out_dir / rel
        if p.exists():
            if p.stat().st_size == 0:
                raise MintError(f"{sample_id} {p}: downloaded file is empty")
            found.append(p)
    return found


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
    check_name(sample_id, "sample id", "--sample")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return hub.snapshot(
        sample_id,
        repo_id,
        out,
        hub_patterns(sample_id, technology),
        lambda: check_files(out, sample_id, technology, cell_seg),
        retries=retries,
        backoff_s=backoff_s,
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
    rels = required_files(sample_id, technology, cell_seg)
    rels += [r for r in optional_files(sample_id, technology, cell_seg) if (src_root / r).exists()]
    for rel in rels:
        src, dst = src_root / rel, out / rel
        if dst.resolve() == src.resolve():
            continue  # out_dir is the local folder itself
        _place(src, dst, copy)
    return check_files(out, sample_id, technology, cell_seg)


@dataclass(frozen=True)
class DownloadSettings:
    """`mint download` options and their defaults; config `hest:` maps onto them (mint.settings)."""

    repo_id: str = HEST_REPO_ID
    retries: int = 3  # download attempts (source hub)
    local_dir: str | None = None  # existing HEST folder (source local)
    copy: bool = False  # copy instead of symlink (source local)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mint.settings import add_options

    parser.add_argument("--source", choices=["hub", "local"], required=True)
    parser.add_argument("--sample", required=True, help="HEST sample id, e.g. TENX95")
    parser.add_argument("--out-dir", default="resources/hest", help="HEST folder to fill")
    parser.add_argument(
        "--metadata", required=True, help="HEST metadata CSV (technology of the sample)"
    )
    add_options(parser, "download")  # --repo-id, --retries, --local-dir, --copy
    parser.add_argument(
        "--no-cell-seg",
        dest="cell_seg",
        action="store_false",
        help="Xenium cell segmentation optional (tiling with transcript targets)",
    )


def run(args: argparse.Namespace) -> int:
    check_name(args.sample, "sample id", "--sample")
    df = read_metadata(args.metadata)
    row = sample_row(df, args.sample)
    tech = str(row["st_technology"])
    try:
        layout.required_keys(tech)  # which files a sample has depends on its technology
    except MintError as exc:
        raise MintError(f"{args.sample} {args.metadata}: {exc}") from None
    if args.source == "hub":
        files = download_hub(
            args.sample,
            tech,
            args.out_dir,
            repo_id=args.repo_id,
            retries=args.retries,
            cell_seg=args.cell_seg,
        )
    else:
        if not args.local_dir:
            raise MintError(f"{args.sample} --local-dir: required for source local")
        files = download_local(
            args.sample, tech, args.local_dir, args.out_dir, copy=args.copy, cell_seg=args.cell_seg
        )
    log.info("%s: %d files in %s", args.sample, len(files), args.out_dir)
    return 0
