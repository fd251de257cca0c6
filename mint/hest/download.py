"""`mint download`: put one HEST-1k sample into `resources/hest/` in the hub's layout.

Sources:
  hub        huggingface_hub.snapshot_download of exactly this sample's files (per-folder
             `allow_patterns`, so the large extras such as cellvit_seg/ or patches/ are not
             fetched), token from the HF_TOKEN environment variable only, retries with
             exponential back-off, then a check that every expected file is there and non-empty.
  local      an existing HEST-1k folder: its files are symlinked (or copied with --copy).
  synthetic  the generator of `mint.synth.hest` (the demo).

The token never appears in arguments, logs or outputs.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import time
from pathlib import Path

from mint.errors import MintError
from mint.hest.metadata import read_metadata, sample_row

log = logging.getLogger(__name__)

HEST_REPO_ID = "MahmoodLab/hest"
_sleep = time.sleep  # replaced in tests


def is_xenium(technology: str) -> bool:
    return str(technology).strip().lower() == "xenium"


def required_files(sample_id: str, technology: str) -> list[str]:
    """Files a sample must have after download (relative to the HEST folder)."""
    files = [f"wsis/{sample_id}.tif", f"st/{sample_id}.h5ad", f"metadata/{sample_id}.json"]
    if is_xenium(technology):
        files.append(f"transcripts/{sample_id}_transcripts.parquet")
    return files


def optional_globs(sample_id: str, technology: str) -> list[str]:
    """Files used when present (tissue contours; Xenium cell segmentation)."""
    globs = [f"tissue_seg/{sample_id}_contours.geojson"]
    if is_xenium(technology):
        globs.append(f"xenium_seg/{sample_id}_xenium_cell_seg*")
    return globs


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


def check_files(out_dir: Path, sample_id: str, technology: str) -> list[Path]:
    """MintError naming the sample and the file if a required file is missing or empty."""
    found = []
    for rel in required_files(sample_id, technology):
        p = out_dir / rel
        if not p.exists():
            raise MintError(f"{sample_id} {p}: expected file missing after download")
        if p.stat().st_size == 0:
            raise MintError(f"{sample_id} {p}: downloaded file is empty")
        found.append(p)
    for pat in optional_globs(sample_id, technology):
        hits = sorted(out_dir.glob(pat))
        if not hits:
            log.warning("%s: no %s (optional; stages fall back to other inputs)", sample_id, pat)
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


def download_hub(
    sample_id: str,
    technology: str,
    out_dir: str | os.PathLike,
    repo_id: str = HEST_REPO_ID,
    retries: int = 3,
    backoff_s: float = 10.0,
) -> list[Path]:
    """Fetch one sample from the hub into `out_dir` and check it."""
    import huggingface_hub

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
            huggingface_hub.snapshot_download(
                repo_id=repo_id,
                repo_type="dataset",
                local_dir=str(out),
                allow_patterns=patterns,
                # HF_TOKEN only: False stops huggingface_hub from falling back to other
                # variables or a cached login.
                token=os.environ.get("HF_TOKEN") or False,
            )
            return check_files(out, sample_id, technology)
        except MintError as exc:
            last = exc  # incomplete download: retry
        except Exception as exc:  # noqa: BLE001 - network errors come in many types
            if _is_permanent(exc):
                raise MintError(
                    f"{sample_id} {repo_id}: no access ({type(exc).__name__}); accept the dataset terms "
                    "on huggingface.co and export HF_TOKEN with a read token"
                ) from exc
            last = exc
        if attempt < retries:
            wait = min(backoff_s * 2 ** (attempt - 1), 300.0)
            log.warning(
                "%s: download failed (%s: %s); retrying in %.0f s",
                sample_id,
                type(last).__name__,
                last,
                wait,
            )
            _sleep(wait)
    if isinstance(last, MintError):
        raise last
    raise MintError(
        f"{sample_id} {repo_id}: download failed after {retries} attempts ({type(last).__name__}: {last})"
    )


def _place(src: Path, dst: Path, copy: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    if tmp.exists() or tmp.is_symlink():
        tmp.unlink()
    if copy:
        shutil.copy2(src, tmp)
    else:
        os.symlink(src.resolve(), tmp)
    os.replace(tmp, dst)


def download_local(
    sample_id: str,
    technology: str,
    local_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    copy: bool = False,
) -> list[Path]:
    """Link (or copy) one sample's files from an existing HEST folder."""
    src_root = Path(local_dir)
    if not src_root.is_dir():
        raise MintError(f"{sample_id} {src_root}: local HEST folder not found")
    out = Path(out_dir)
    for rel in required_files(sample_id, technology):
        src = src_root / rel
        if not src.is_file():
            raise MintError(f"{sample_id} {src}: missing in the local HEST folder")
        if src.stat().st_size == 0:
            raise MintError(f"{sample_id} {src}: empty file in the local HEST folder")
    rels = list(required_files(sample_id, technology))
    for pat in optional_globs(sample_id, technology):
        rels += [str(p.relative_to(src_root)) for p in sorted(src_root.glob(pat))]
    for rel in rels:
        src, dst = src_root / rel, out / rel
        if dst.resolve() == src.resolve():
            continue  # out_dir is the local folder itself
        _place(src, dst, copy)
    return check_files(out, sample_id, technology)


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
    add_size_arguments(parser)


def run(args: argparse.Namespace) -> int:
    df = read_metadata(args.metadata)
    row = sample_row(df, args.sample)
    tech = str(row["st_technology"])
    if args.source == "hub":
        files = download_hub(
            args.sample, tech, args.out_dir, repo_id=args.repo_id, retries=args.retries
        )
    elif args.source == "local":
        if not args.local_dir:
            raise MintError(f"{args.sample} --local-dir: required for source local")
        files = download_local(args.sample, tech, args.local_dir, args.out_dir, copy=args.copy)
    else:
        from mint.synth.cli import config_from_args
        from mint.synth.hest import generate_sample

        generate_sample(args.sample, args.out_dir, **dataclasses.asdict(config_from_args(args)))
        files = check_files(Path(args.out_dir), args.sample, tech)
    log.info("%s: %d files in %s", args.sample, len(files), args.out_dir)
    return 0
