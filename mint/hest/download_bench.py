"""`mint download-bench`: put one HEST-Bench task into `resources/hest-bench/<TASK>/`.

The hub repository `MahmoodLab/hest-bench` holds each task at its top level
(`<TASK>/adata/*.h5ad`, `<TASK>/patches/*.h5`, `<TASK>/splits/{train,test}_k.csv`,
`<TASK>/var_50genes.json`; model weights live apart in `fm_v1/`), so downloading
`allow_patterns=["<TASK>/*"]` into the bench folder gives the layout directly. Zip archives, if
any, are extracted in place. The result is checked: every file named by a split must exist,
and `splits/` must hold only the train/test pairs (the benchmark counts its files to get the
number of folds).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import shutil
import time
import zipfile
from pathlib import Path

import pandas as pd

from mint.errors import MintError, one_line
from mint.hest.download import HubUnreachable, is_network_error, watch_hub_log
from mint.safe import check_inside

log = logging.getLogger(__name__)

BENCH_REPO_ID = "MahmoodLab/hest-bench"
_sleep = time.sleep  # replaced in tests


def hub_patterns(task: str) -> list[str]:
    return [f"{task}/*"]


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
    for sub in ("adata", "patches", "splits"):
        if not (d / sub).is_dir():
            raise MintError(f"{task} {d / sub}: missing bench folder")
    genes = d / "var_50genes.json"
    if not genes.is_file() or genes.stat().st_size == 0:
        raise MintError(f"{task} {genes}: missing gene list")
    names = sorted(p.name for p in (d / "splits").iterdir())
    pat = re.compile(r"^(train|test)_(\d+)\.csv$")
    bad = [n for n in names if not pat.match(n)]
    if bad:
        raise MintError(
            f"{task} {d / 'splits' / bad[0]}: unexpected file in splits/ (the fold count is the file count / 2)"
        )
    n_folds = len(names) // 2
    for k in range(n_folds):
        for kind in ("train", "test"):
            f = d / "splits" / f"{kind}_{k}.csv"
            if not f.is_file():
                raise MintError(f"{task} {f}: missing split file")
            try:
                df = pd.read_csv(f)
            except (OSError, ValueError) as exc:
                raise MintError(f"{task} {f}: unreadable split file ({one_line(exc)})") from None
            for col in ("sample_id", "patches_path", "expr_path"):
                if col not in df.columns:
                    raise MintError(f"{task} {f}: missing column {col!r}")
            for _, r in df.iterrows():
                for col in ("patches_path", "expr_path"):
                    p = d / str(r[col])
                    if not p.is_file() or p.stat().st_size == 0:
                        raise MintError(
                            f"{r['sample_id']} {p}: missing or empty bench file (task {task})"
                        )
    if n_folds == 0:
        raise MintError(f"{task} {d / 'splits'}: no splits")
    return n_folds


def download_hub(
    task: str,
    out_dir: str | os.PathLike,
    repo_id: str = BENCH_REPO_ID,
    retries: int = 3,
    backoff_s: float = 10.0,
) -> Path:
    import huggingface_hub

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    last: Exception | None = None
    for attempt in range(1, max(1, retries) + 1):
        try:
            with watch_hub_log() as hub_warnings:
                huggingface_hub.snapshot_download(
                    repo_id=repo_id,
                    repo_type="dataset",
                    local_dir=str(out),
                    allow_patterns=hub_patterns(task),
                    token=os.environ.get("HF_TOKEN") or False,  # HF_TOKEN only, no fallback
                )
            unreachable = [m for m in hub_warnings if "cannot be accessed" in m]
            if unreachable:
                raise HubUnreachable(unreachable[0])
            _extract_zips(out / task)
            check_task(out / task, task)
            return out / task
        except MintError as exc:
            last = exc
        except Exception as exc:  # noqa: BLE001
            if type(exc).__name__ in {"GatedRepoError", "RepositoryNotFoundError"}:
                raise MintError(
                    f"{task} {repo_id}: no access ({type(exc).__name__}); export HF_TOKEN with a read token"
                ) from None
            last = exc
        if attempt < retries:
            wait = min(backoff_s * 2 ** (attempt - 1), 300.0)
            log.warning(
                "%s: download failed (%s: %s); retrying in %.0f s",
                task,
                type(last).__name__,
                one_line(last),
                wait,
            )
            _sleep(wait)
    if isinstance(last, MintError):
        raise last
    kind = (
        "network error, the hub could not be reached"
        if (isinstance(last, HubUnreachable) or is_network_error(last))
        else "download failed"
    )
    raise MintError(
        f"{task} {repo_id}: {kind} after {retries} attempts "
        f"({type(last).__name__}: {one_line(last, 200)})"
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mint.synth.cli import add_size_arguments

    parser.add_argument("--source", choices=["hub", "local", "synthetic"], required=True)
    parser.add_argument("--task", required=True, help="bench task, e.g. IDC or SYNTH_VISIUM")
    parser.add_argument("--out-dir", default="resources/hest-bench")
    parser.add_argument("--repo-id", default=BENCH_REPO_ID)
    parser.add_argument(
        "--local-dir", default=None, help="existing hest-bench folder (source local)"
    )
    parser.add_argument(
        "--copy", action="store_true", help="copy instead of symlink (source local)"
    )
    parser.add_argument("--retries", type=int, default=3)
    add_size_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from mint.hest.bench import get_task

    get_task(args.source, args.task)  # unknown task -> one clear line
    if args.source == "hub":
        dest = download_hub(args.task, args.out_dir, repo_id=args.repo_id, retries=args.retries)
    elif args.source == "local":
        if not args.local_dir:
            raise MintError(f"{args.task} --local-dir: required for source local")
        dest = download_local(args.task, args.local_dir, args.out_dir, copy=args.copy)
    else:
        from mint.synth.cli import config_from_args
        from mint.synth.hest import generate_bench

        dest = generate_bench(args.out_dir, args.task, **dataclasses.asdict(config_from_args(args)))
    n = check_task(dest, args.task)
    log.info("bench task %s ready in %s (%d folds)", args.task, dest, n)
    return 0
