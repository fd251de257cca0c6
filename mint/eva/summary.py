"""EVA summary table (one row per model, one column per task) and the published leaderboard.

The cell of a task is eva's headline number for it: the task's metric (balanced accuracy for
classification -- `MulticlassAccuracy` with macro averaging or `BinaryBalancedAccuracy` -- and
`MonaiDiceScore` without background for segmentation), mean over eva's runs, on the test split
where the task has one (PCam, Camelyon16-small, PANDA-small) and the validation split otherwise.
`average` is the mean over the leaderboard tasks present except BACH (the paper's "EVA" number
when all nine are present; `n_tasks` says how many went in). A task whose data was missing has
an empty cell and is named in `note`.
"""

from __future__ import annotations

import logging
import os
from importlib import resources
from pathlib import Path

import pandas as pd

from mint.errors import MintError
from mint.eva.run import RESULTS, STATUS, headline, read_status
from mint.eva.tasks import AVERAGE_EXCLUDED, LEADERBOARD_TASKS, TASKS, get_task
from mint.io import atomic_path

log = logging.getLogger(__name__)

LONG_COLUMNS = [
    "model", "task", "status", "split", "metric", "mean", "stdev", "n_runs", "message",
    "embedding", "precision",
]  # fmt: skip


def _record_from(path: Path) -> dict:
    """One long-format row from a status.json or a results.json (model/task from the path)."""
    if path.name == RESULTS:
        status = read_status(path.parent / STATUS)
        if status is None:
            # A bare eva results.json: .../<model>/<task>/results.json
            task = get_task(path.parent.name)
            import json

            score = headline(task, json.loads(path.read_text()), str(path))
            return {"model": path.parent.parent.name, "task": task.name, "status": "ok", **score}
        path = path.parent / STATUS
    else:
        status = read_status(path)
        if status is None:
            raise MintError(f"eva summary {path}: file not found")
    for key in ("status", "task", "model"):
        if key not in status:
            raise MintError(f"eva summary {path}: no {key!r} field")
    if status["status"] == "ok" and "mean" not in status:
        # Older status without the score: recompute from the copied results.json.
        import json

        results = path.parent / status.get("results", RESULTS)
        status.update(headline(get_task(status["task"]), json.loads(results.read_text())))
    return status


def collect_scores(paths: list[str | os.PathLike]) -> pd.DataFrame:
    """Long table: model, task, status, split, metric, mean, stdev, n_runs, message."""
    rows = []
    for p in paths:
        rec = _record_from(Path(p))
        rows.append({c: rec.get(c) for c in LONG_COLUMNS})
    df = pd.DataFrame(rows, columns=LONG_COLUMNS)
    df["n_runs"] = df["n_runs"].astype("Int64")
    dup = df.duplicated(["model", "task"], keep="last")
    if dup.any():
        first = df[dup].iloc[0]
        log.warning("eva summary: %s/%s given twice; keeping the last", first.model, first.task)
        df = df[~dup]
    return df.reset_index(drop=True)


def _task_order(tasks) -> list[str]:
    known = [t for t in LEADERBOARD_TASKS if t in tasks]
    others = sorted(t for t in tasks if t not in LEADERBOARD_TASKS)
    return known + others


def average_tasks(present: list[str]) -> list[str]:
    """Tasks that enter `average`: leaderboard tasks except BACH; for a run without any of them
    (the demo), every task present except BACH."""
    core = [t for t in present if t in LEADERBOARD_TASKS and t not in AVERAGE_EXCLUDED]
    if core:
        return core
    return [t for t in present if t not in AVERAGE_EXCLUDED]


def summary_table(long: pd.DataFrame) -> pd.DataFrame:
    """Wide table: model, <task...>, average, n_tasks, note."""
    tasks = _task_order(set(long["task"]))
    rows = []
    for model, grp in long.groupby("model", sort=False):
        row: dict = {"model": model}
        ok = grp[grp["status"] == "ok"].set_index("task")
        for t in tasks:
            row[t] = float(ok.loc[t, "mean"]) if t in ok.index else float("nan")
        used = [t for t in average_tasks(list(ok.index)) if t in ok.index]
        row["average"] = float(ok.loc[used, "mean"].mean()) if used else float("nan")
        row["n_tasks"] = len(used)
        notes = []
        missing = sorted(grp.loc[grp["status"] != "ok", "task"])
        if missing:
            notes.append(f"missing data: {', '.join(missing)}")
        n_core = len([t for t in LEADERBOARD_TASKS if t not in AVERAGE_EXCLUDED])
        if used and all(t in LEADERBOARD_TASKS for t in used) and len(used) < n_core:
            notes.append(f"average over {len(used)} of {n_core} tasks")
        row["note"] = "; ".join(notes)
        # Which embedding and precision produced the numbers (classification tasks' embedding;
        # segmentation always reads the last block's patch tokens).
        for key in ("embedding", "precision"):
            vals = sorted({str(v) for v in ok.get(key, pd.Series(dtype=object)) if v == v and v})
            vals = [v for v in vals if v != "feature_maps"] if key == "embedding" else vals
            row[key] = "/".join(vals)
        rows.append(row)
    return pd.DataFrame(
        rows, columns=["model", *tasks, "average", "n_tasks", "embedding", "precision", "note"]
    )


def write_summary(
    paths: list[str | os.PathLike],
    out: str | os.PathLike,
    long_out: str | os.PathLike | None = None,
) -> pd.DataFrame:
    if not paths:
        raise MintError(f"eva summary {out}: no inputs")
    long = collect_scores(paths)
    wide = summary_table(long)
    with atomic_path(out) as tmp:
        wide.to_csv(tmp, index=False, float_format="%.4f")
    if long_out:
        with atomic_path(long_out) as tmp:
            long.to_csv(tmp, index=False, float_format="%.4f")
    log.info("eva summary: %d models x %d tasks -> %s", len(wide), len(wide.columns) - 4, out)
    return wide


def load_leaderboard(headline_only: bool = True) -> pd.DataFrame:
    """kaiko's published eva leaderboard (mint/resources/eva_leaderboard.csv).

    `headline_only=True` gives the same shape as our summary: model, one column per task (the
    `/test` value where the task has one), average (9 tasks without BACH), n_tasks. With False,
    the raw table (val and `/test` columns).
    """
    ref = resources.files("mint") / "resources" / "eva_leaderboard.csv"
    with resources.as_file(ref) as path:
        raw = pd.read_csv(path, comment="#")
    if not headline_only:
        return raw
    out = pd.DataFrame({"model": raw["model"]})
    for task in LEADERBOARD_TASKS:
        spec = TASKS[task]
        col = f"{task}/test" if spec.headline_split == "test" and f"{task}/test" in raw else task
        out[task] = raw[col].astype(float)
    core = [t for t in LEADERBOARD_TASKS if t not in AVERAGE_EXCLUDED]
    out["average"] = out[core].mean(axis=1)
    out["n_tasks"] = len(core)
    return out.sort_values("average", ascending=False).reset_index(drop=True)
