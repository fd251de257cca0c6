"""Run the real eva CLI (`eva predict`, `eva fit`) and collect eva's own results.json.

Each step is a subprocess of eva's CLI in the same Python environment, with a config rendered
for the model, task and stage (mint.eva.render). Outputs:

- predict (offline tasks): `<embeddings_dir>/` = eva's embeddings (manifest.csv + .pt files),
  built under a temporary name and renamed when eva finished (eva refuses to write into a
  folder that already has a manifest, and a half-written one must never look finished), plus
  `status.json` and the rendered `eva_predict.yaml`.
- fit: eva writes `<run_root>/<timestamp>_<hash>/results.json`; we copy the newest one that this
  run produced to `<out_dir>/results.json` unchanged, and write `<out_dir>/status.json`
  (headline split, metric, mean, stdev).
- missing data: with `on_missing="skip"` no eva run happens; `status.json` records
  `{"status": "missing_data", "message": ...}` (and no results.json is written), so the other
  tasks and the summary still complete. With `on_missing="error"` the step fails.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Literal

from mint.errors import MintError
from mint.eva.render import RenderOptions, render_to_file
from mint.eva.tasks import TaskSpec, get_task, missing_data, task_data_dir
from mint.io import atomic_dir, atomic_path, write_json

log = logging.getLogger(__name__)

OnMissing = Literal["skip", "error"]
STATUS = "status.json"
RESULTS = "results.json"


def eva_command() -> list[str]:
    """eva's CLI in this interpreter's environment (the `eva` script may not be on PATH)."""
    return [sys.executable, "-m", "eva"]


def run_eva(command: str, config: Path, task: str, seed: int = 42, extra_env=None) -> None:
    """Run `eva <command> --config <config>`; eva's output goes to our stderr (the rule's log)."""
    env = os.environ.copy()
    env["EVA_GLOBAL_SEED"] = str(seed)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra_env or {})
    cmd = [*eva_command(), command, "--config", str(config)]
    log.info("eva task %s: running %s", task, " ".join(cmd[2:]))
    try:
        fd = sys.stderr.fileno()
        proc = subprocess.run(cmd, env=env, stdout=fd, stderr=fd, check=False)
        tail = ""
    except (AttributeError, OSError, ValueError):  # stderr is not a real file (e.g. pytest)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        sys.stderr.write(proc.stdout + proc.stderr)
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [""]
        tail = f": {tail[0][:300]}"
    if proc.returncode != 0:
        raise MintError(
            f"eva task {task} {config}: `eva {command}` failed with exit code "
            f"{proc.returncode} (see eva's output above){tail}"
        )


def _status(task: TaskSpec, model_name: str, status: str, **extra) -> dict:
    return {"status": status, "task": task.name, "model": model_name, **extra}


def _handle_missing(task: TaskSpec, message: str, on_missing: OnMissing) -> None:
    if on_missing == "error":
        raise MintError(message)
    log.warning("%s -- skipping this task (status missing_data)", message)


def predict(
    opts: RenderOptions,
    embeddings_dir: str | os.PathLike,
    on_missing: OnMissing = "skip",
    seed: int = 42,
) -> dict:
    """`eva predict` for an offline task: write the embeddings folder. Returns its status."""
    task = get_task(opts.task)
    if not task.offline:
        raise MintError(
            f"eva task {task.name}: online segmentation task, it has no predict step "
            "(run `mint eva fit` only)"
        )
    data_dir = task_data_dir(task, opts.data_root, opts.data_dir)
    message = missing_data(task, data_dir, opts.download)
    if message:
        _handle_missing(task, message, on_missing)
    else:
        opts = _embedding_for_model(opts)
    with atomic_dir(embeddings_dir) as tmp:
        if message:
            status = _status(task, opts.model_name, "missing_data", message=message)
        else:
            run_opts = dataclasses.replace(
                opts,
                stage="predict",
                embeddings_root=str(tmp),
                output_root=str(tmp / "predict_logs"),
            )
            config = tmp / "eva_predict.yaml"
            render_to_file(run_opts, config)
            run_eva("predict", config, task.name, seed=seed)
            manifest = tmp / "manifest.csv"
            if not manifest.is_file():
                raise MintError(f"eva task {task.name} {manifest}: eva predict wrote no manifest")
            n = sum(1 for _ in manifest.open()) - 1
            # The saved config names the final folder, not the temporary one eva wrote into.
            final = str(Path(embeddings_dir).resolve())
            config.write_text(config.read_text().replace(str(tmp.resolve()), final))
            status = _status(
                task,
                opts.model_name,
                "ok",
                model_spec=opts.model,
                embedding=opts.output,
                n_embeddings=n,
                data_dir=str(data_dir),
                config="eva_predict.yaml",
            )
        write_json(tmp / STATUS, status)
    return status


def _embedding_for_model(opts: RenderOptions) -> RenderOptions:
    """One `eva.embedding` setting serves every model: a model without an ST token (a base
    backbone) falls back from `cls+st` to `cls`, with a warning; `st` alone is an error."""
    if "st" not in opts.output.split("+"):
        return opts
    from mint.eva.render import model_info, resolve_model_spec

    if model_info(resolve_model_spec(opts.model)).has_st:
        return opts
    if opts.output == "st":
        raise MintError(f"eva model {opts.model}: embedding 'st' needs a MINT model (no ST token)")
    log.warning("eva model %s has no ST token: embedding %s -> cls", opts.model, opts.output)
    return dataclasses.replace(opts, output="cls")


def read_status(path: str | os.PathLike) -> dict | None:
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MintError(f"eva {path}: not valid JSON ({exc})") from None


def _session_results(run_root: Path) -> list[Path]:
    return sorted(run_root.glob(f"*/{RESULTS}"))


def fit(
    opts: RenderOptions,
    run_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    on_missing: OnMissing = "skip",
    seed: int = 42,
) -> dict:
    """`eva fit` (head training over n_runs) then `collect`. Returns the written status."""
    task = get_task(opts.task)
    run_root = Path(run_root)
    out_dir = Path(out_dir)
    message = None
    if task.offline:
        if not opts.embeddings_root:
            raise MintError(f"eva task {task.name}: offline task, --embeddings-dir is required")
        emb = Path(opts.embeddings_root)
        emb_status = read_status(emb / STATUS)
        if emb_status and emb_status.get("status") == "missing_data":
            message = emb_status.get("message") or f"eva task {task.name}: data missing"
        elif not (emb / "manifest.csv").is_file():
            raise MintError(
                f"eva task {task.name} {emb}: no embeddings (manifest.csv); run "
                "`mint eva predict` first"
            )
    else:
        data_dir = task_data_dir(task, opts.data_root, opts.data_dir)
        message = missing_data(task, data_dir, opts.download)
    if message:
        _handle_missing(task, message, on_missing)
        stale = out_dir / RESULTS
        if stale.exists():
            stale.unlink()
        status = _status(task, opts.model_name, "missing_data", message=message)
        write_json(out_dir / STATUS, status)
        return status

    provenance = _provenance(opts, task)
    run_root.mkdir(parents=True, exist_ok=True)
    before = set(_session_results(run_root))
    config = run_root / "mint_fit.yaml"
    render_to_file(dataclasses.replace(opts, stage="fit", output_root=str(run_root)), config)
    run_eva("fit", config, task.name, seed=seed)
    new = [p for p in _session_results(run_root) if p not in before]
    if not new:
        raise MintError(f"eva task {task.name} {run_root}: eva fit finished without a results.json")
    return collect(
        task.name, opts.model_name, run_root, out_dir, candidates=new, provenance=provenance
    )


def _provenance(opts: RenderOptions, task: TaskSpec) -> dict:
    """Which embedding, token and precision produced the number (recorded in status.json).

    Offline tasks: the embedding the predict step wrote (its status.json), else the one asked
    for. Segmentation: patch tokens of the last block, before the final norm (eva's timm
    encoder). Precision: eva's trainer precision (lightning's default, 32-bit, unless the
    `precision` override sets one); eva's leaderboard runs use the default.
    """
    precision = str(opts.overrides.get("precision") or "32-true (eva default)")
    if task.offline:
        emb_status = read_status(Path(opts.embeddings_root or ".") / STATUS) or {}
        embedding = emb_status.get("embedding") or opts.output
        tokens = embedding.split("+")
    else:
        embedding = "feature_maps"
        tokens = ["patch tokens, last block, before the final norm"]
    return {"embedding": embedding, "tokens": tokens, "precision": precision}


def headline(task: TaskSpec, results: dict, source: str = RESULTS) -> dict:
    """The leaderboard number of one eva results.json: the task's metric on the test split where
    the task has one, else on the validation split (eva's leaderboard rule)."""
    metrics = results.get("metrics") if isinstance(results, dict) else None
    if not isinstance(metrics, dict):
        raise MintError(f"eva task {task.name} {source}: no 'metrics' in eva's results")
    split = task.headline_split
    if not metrics.get(split):
        if split == "test" and metrics.get("val"):
            log.warning("eva task %s %s: no test results; using val", task.name, source)
            split = "val"
        else:
            raise MintError(f"eva task {task.name} {source}: no {split} results")
    per_dataset = metrics[split][0]
    key = f"{split}/{task.metric}"
    if key not in per_dataset:
        raise MintError(
            f"eva task {task.name} {source}: metric {key} not found "
            f"(has {', '.join(sorted(per_dataset)) or 'none'})"
        )
    stats = per_dataset[key]
    values = [float(v) for v in stats.get("values", [])]
    return {
        "split": split,
        "metric": task.metric,
        "mean": float(stats["mean"]),
        "stdev": float(stats.get("stdev", 0.0)),
        "n_runs": len(values),
        "values": values,
    }


def collect(
    task_name: str,
    model_name: str,
    run_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    candidates: list[Path] | None = None,
    provenance: dict | None = None,
) -> dict:
    """Copy eva's newest results.json from `run_root` to `out_dir` and write status.json
    (with `provenance`: embedding, tokens, precision, when the caller knows them)."""
    task = get_task(task_name)
    run_root = Path(run_root)
    out_dir = Path(out_dir)
    found = candidates if candidates is not None else _session_results(run_root)
    if not found:
        raise MintError(
            f"eva task {task.name} {run_root}: no <session>/results.json (did `eva fit` run?)"
        )
    # Session folders are named <YYYYmmdd-HHMMSSffffff>_<hash>: newest = last by name, then mtime.
    source = max(found, key=lambda p: (p.parent.name.split("_")[0], p.stat().st_mtime))
    try:
        results = json.loads(source.read_text())
    except json.JSONDecodeError as exc:
        raise MintError(f"eva task {task.name} {source}: not valid JSON ({exc})") from None
    score = headline(task, results, str(source))
    with atomic_path(out_dir / RESULTS) as tmp:
        shutil.copyfile(source, tmp)
    status = _status(
        task,
        model_name,
        "ok",
        results=RESULTS,
        source=str(source),
        **score,
        **(provenance or {}),
    )
    write_json(out_dir / STATUS, status)
    log.info(
        "eva task %s, model %s: %s %s = %.4f +- %.4f (%d runs)",
        task.name,
        model_name,
        score["split"],
        score["metric"],
        score["mean"],
        score["stdev"],
        score["n_runs"],
    )
    return status
