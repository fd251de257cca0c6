"""`mint download-bench`: put one real HEST-Bench task into `resources/hest-bench/<TASK>/`.

The synthetic tasks of the demo are written by `mint synth bench`. The hub repository
`MahmoodLab/hest-bench` holds each task at its top level
(`<TASK>/adata/*.h5ad`, `<TASK>/patches/*.h5`, `<TASK>/splits/{train,test}_k.csv`,
`<TASK>/var_50genes.json`, named in `mint.hest.layout`; model weights live apart in `fm_v1/`),
so downloading `allow_patterns=["<TASK>/*"]` into the bench folder gives the layout directly,
with the retry policy of `mint.hest.hub`. Zip archives, if any, are extracted in place. The result is checked: every file named by a split must exist,
and `splits/` must hold only the train/test pairs (the benchmark counts its files to get the
number of folds).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mint.errors import MintError, one_line
from mint.hest import hub, layout
from mint.safe import check_inside

log = logging.getLogger(__name__)

BENCH_REPO_ID = "MahmoodLab/hest-bench"


def _extract_zips(task_dir: Path) -> None:
    for z in sorted(task_dir.rglob("*.zip")):
        log.info("extracting %s", z)
        try:
            with zipfile.ZipFile(z) as zf:
                for name in zf.namelist():  # a member such as '../x' would escape the task
                    check_inside(z.parent / name, task_dir, f"{z} member")
                zf.extractall(z.parent)
        except (zipfile.BadZipFile, OSError) as exc:
            raise MintError(f"{task_dir.name} {z}: bad zip archive ({one_line(exc)})") from None
        z.unlink()


def check_task(task_dir: str | os.PathLike, task: str) -> int:
    """Validate a bench task folder; returns the number of folds. MintError naming the file."""
    d = Path(task_dir)
    for sub in layout.BENCH_DIRS:
        if not (d / sub).is_dir():
            raise MintError(f"{task} {d / sub}: missing bench folder")
    genes = d / layout.BENCH_GENES
    if not genes.is_file() or genes.stat().st_size == 0:
        raise MintError(f"{task} {genes}: missing gene list")
    n_folds = layout.bench_fold_count(d, task)
    for k in range(n_folds):
        for kind in layout.BENCH_SPLIT_KINDS:
            f = d / layout.bench_split(kind, k)  # bench_fold_count: the file is there
            try:
                df = pd.read_csv(f)
            except (OSError, ValueError) as exc:
                raise MintError(f"{task} {f}: unreadable split file ({one_line(exc)})") from None
            for col in layout.BENCH_SPLIT_COLUMNS:
                if col not in df.columns:
                    raise MintError(f"{task} {f}: missing column {col!r}")
            for _, r in df.iterrows():
                for col in ("patches_path", "expr_path"):
                    p = d / str(r[col])
                    if not p.is_file() or p.stat().st_size == 0:
                        raise MintError(
                            f"{r['sample_id']} {p}: missing or empty bench file (task {task})"
                        )
    return n_folds


def download_hub(
    task: str,
    out_dir: str | os.PathLike,
    repo_id: str = BENCH_REPO_ID,
    retries: int = 3,
    backoff_s: float = 10.0,
) -> Path:
    """Fetch one task from the hub into `out_dir/<task>`, extract its zips and check it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def check() -> Path:
        _extract_zips(out / task)
        check_task(out / task, task)
        return out / task

    return hub.snapshot(
        task,
        repo_id,
        out,
        layout.bench_hub_patterns(task),
        check,
        retries=retries,
        backoff_s=backoff_s,
    )


def download_local(
    task: str, local_dir: str | os.PathLike, out_dir: str | os.PathLike, copy: bool = False
) -> Path:
    """Link (or copy) `local_dir/<task>` (an existing hest-bench folder) to `out_dir/<task>`."""
    src = Path(local_dir) / task
    if not src.is_dir():
        raise MintError(f"{task} {src}: task folder not found in the local HEST-Bench folder")
    check_task(src, task)
    dst = Path(out_dir) / task
    if dst.resolve() == src.resolve():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.is_file():
        dst.unlink()
    elif dst.is_dir():
        shutil.rmtree(dst)
    if copy:
        shutil.copytree(src, dst)
    else:
        os.symlink(src.resolve(), dst, target_is_directory=True)
    return dst


@dataclass(frozen=True)
class BenchDownloadSettings:
    """`mint download-bench` options and their defaults; config `bench_data:` maps onto them."""

    repo_id: str = BENCH_REPO_ID
    local_dir: str | None = None  # existing hest-bench folder (source local)
    copy: bool = False  # copy instead of symlink (source local)
    retries: int = 3  # download attempts (source hub)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mint.settings import add_options

    parser.add_argument("--source", choices=["hub", "local"], required=True)
    parser.add_argument("--task", required=True, help="bench task, e.g. IDC or SYNTH_VISIUM")
    parser.add_argument("--out-dir", default="resources/hest-bench")
    add_options(parser, "download-bench")  # --repo-id, --local-dir, --copy, --retries


def run(args: argparse.Namespace) -> int:
    from mint.hest.bench import get_task

    get_task(args.source, args.task)  # unknown task -> one clear line
    if args.source == "hub":
        dest = download_hub(args.task, args.out_dir, repo_id=args.repo_id, retries=args.retries)
    else:
        if not args.local_dir:
            raise MintError(f"{args.task} --local-dir: required for source local")
        dest = download_local(args.task, args.local_dir, args.out_dir, copy=args.copy)
    n = check_task(dest, args.task)
    log.info("bench task %s ready in %s (%d folds)", args.task, dest, n)
    return 0
