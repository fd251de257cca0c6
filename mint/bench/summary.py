"""`mint bench-summary`: one table of HEST-Bench scores, and the published leaderboard.

summary.csv has one row per (model, variant): the task means in HEST's task order (other
tasks, such as the synthetic ones, after them alphabetically), `average` over the task columns
other than HCC (HEST's headline leaves HCC out), then `HCC` when present, then `precision` (the
precision the embeddings were computed in; the variant names the tokens). A row that lacks one
of the averaged tasks gets an empty average rather than a mean over fewer tasks, which would
not be comparable with the other rows.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from mint.errors import MintError
from mint.hest.bench import AVERAGE_EXCLUDED, HEST_BENCH_TASKS
from mint.io import atomic_path

log = logging.getLogger(__name__)

# HEST's README order (HCC, reported apart, is last there and excluded here).
HEST_TASK_ORDER = tuple(t for t in HEST_BENCH_TASKS if t not in AVERAGE_EXCLUDED)
LEADERBOARD = "hest_bench_leaderboard_2026-04-03.csv"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--inputs", nargs="+", required=True, help="results/bench/*/*.json")
    parser.add_argument("--out", required=True, help="summary CSV")


def collect(paths: list[str | Path]) -> pd.DataFrame:
    """Long table: model, task, variant, mean, std, n_folds (one row per JSON and variant)."""
    rows = []
    for p in paths:
        p = Path(p)
        try:
            res = json.loads(p.read_text())
            model, task = res["model"], res["task"]
            variants = res["variants"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise MintError(f"{p}: not a mint probe result ({exc})") from exc
        for variant, v in variants.items():
            rows.append(
                {
                    "model": model,
                    "task": task,
                    "variant": variant,
                    "mean": math.nan if v.get("mean") is None else float(v["mean"]),
                    "std": math.nan if v.get("std") is None else float(v["std"]),
                    "n_folds": len(v.get("folds", [])),
                    "precision": (v.get("embedding") or {}).get("precision")
                    or ((res.get("settings") or {}).get("embeddings") or {}).get("precision"),
                    "path": str(p),
                }
            )
    df = pd.DataFrame(
        rows, columns=["model", "task", "variant", "mean", "std", "n_folds", "precision", "path"]
    )
    dup = df.duplicated(["model", "task", "variant"], keep=False)
    if dup.any():
        first = df[dup].iloc[0]
        raise MintError(
            f"{first['path']}: model {first['model']} task {first['task']} given twice in --inputs"
        )
    return df


def task_columns(tasks) -> list[str]:
    tasks = set(tasks)
    ordered = [t for t in HEST_TASK_ORDER if t in tasks]
    ordered += sorted(t for t in tasks if t not in HEST_TASK_ORDER and t not in AVERAGE_EXCLUDED)
    return ordered


def summarize(long: pd.DataFrame) -> pd.DataFrame:
    """Wide table: model, variant, <tasks...>, average (tasks except HCC), HCC (if present)."""
    if long.empty:
        raise MintError("bench-summary: no results in --inputs")
    wide = long.pivot_table(
        index=["model", "variant"], columns="task", values="mean", aggfunc="first", dropna=False
    )
    cols = task_columns(wide.columns)
    out = wide.reindex(columns=cols)
    out["average"] = out[cols].mean(axis=1, skipna=False) if cols else np.nan
    for t in sorted(AVERAGE_EXCLUDED):
        if t in wide.columns:
            out[t] = wide[t]
    incomplete = out[cols].isna().any(axis=1)
    for model, variant in out.index[incomplete]:
        log.warning("%s %s: missing tasks, no average", model, variant)
    # The precision the embeddings were computed in (one value per row unless tasks differ).
    if "precision" in long.columns:
        prec = long.groupby(["model", "variant"])["precision"].agg(
            lambda x: "/".join(sorted({str(v) for v in x if v is not None and v == v})) or None
        )
        out["precision"] = prec.reindex(out.index)
    out = out.reset_index()
    out.columns.name = None
    variant_rank = {"cls": 0, "st": 1, "cls+st": 2, "cls+patch_mean": 3}
    out["_r"] = out["variant"].map(lambda v: variant_rank.get(v, 99))
    return out.sort_values(["model", "_r", "variant"]).drop(columns="_r").reset_index(drop=True)


def load_leaderboard() -> pd.DataFrame:
    """Published HEST-Bench numbers shipped with the package (PCA-256 + ridge, mean Pearson r).

    Columns: model, average (the CSV's `Avg`, over the nine tasks without HCC), then the task
    columns. `df.attrs["source"]` holds the file's first-line comment, which cites its source.
    """
    ref = resources.files("mint").joinpath("resources", LEADERBOARD)
    text = ref.read_text(encoding="utf-8")
    first = text.splitlines()[0] if text else ""
    from io import StringIO

    df = pd.read_csv(StringIO(text), comment="#")
    df = df.rename(columns={"Avg": "average"})
    df.attrs["source"] = first.lstrip("# ").strip() if first.startswith("#") else ""
    return df


def leaderboard_tasks(lb: pd.DataFrame) -> list[str]:
    """The leaderboard's tasks that its `average` covers (all but AVERAGE_EXCLUDED)."""
    return [c for c in lb.columns if c not in {"model", "average", *AVERAGE_EXCLUDED}]


def run(args: argparse.Namespace) -> int:
    long = collect(args.inputs)
    table = summarize(long)
    with atomic_path(args.out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    log.info("wrote %s (%d rows)", args.out, len(table))
    return 0
