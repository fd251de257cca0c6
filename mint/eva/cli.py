"""`mint eva <step>`: kaiko-eva evaluation of a base or MINT model.

Steps (one Snakemake rule each; every step also runs by hand):
  make-synthetic  write the demo's synthetic patch-classification task
  tasks           list the tasks, where their data is expected and whether it is there
  render          write the eva config for one model, task and stage (to inspect or run eva by hand)
  predict         offline tasks: `eva predict` -> embeddings folder (GPU step)
  fit             `eva fit` (heads over n runs; online segmentation runs the backbone too), then
                  copy eva's results.json and write status.json
  collect         copy the newest eva results.json of a run root (if fit was run by hand)
  summary         one row per model, one column per task, average of the 9 non-BACH tasks
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from mint.errors import MintError
from mint.safe import model_key

log = logging.getLogger(__name__)


def _add_model_args(p: argparse.ArgumentParser, stage_choice: bool = False) -> None:
    p.add_argument("--task", required=True, help="eva task (see `mint eva tasks`)")
    p.add_argument(
        "--model",
        required=True,
        help="registry name (uni, tiny-vit, ...), timm:<name>[@ckpt], or a MINT model folder",
    )
    p.add_argument(
        "--model-name", help="key of the model in results paths (default: the model's name)"
    )
    p.add_argument("--data-root", help="folder holding one sub-folder per eva dataset")
    p.add_argument("--data-dir", help="this task's dataset folder (overrides --data-root)")
    p.add_argument(
        "--download",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="let eva download the datasets it can (DOWNLOAD_DATA)",
    )
    p.add_argument(
        "--embedding",
        default="auto",
        choices=list(EMBEDDING_CHOICES),
        help="tokens that form the embedding (classification tasks); auto = as eva's "
        "leaderboard ran the backbone (CLS, Virchow2 included; MINT models: CLS), authors = the "
        "model card's recommendation (Virchow2: cls+patch_mean)",
    )
    p.add_argument("--accelerator", default="auto", help="lightning accelerator: auto, gpu, cpu")
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--num-workers", type=int, default=4, help="dataloader workers")
    p.add_argument(
        "--overrides",
        default="{}",
        help="JSON dict of protocol overrides: n_runs, max_steps, max_epochs, batch_size, "
        "predict_batch_size, lr, n_patches, patience, precision (empty = eva's protocol)",
    )
    p.add_argument("--max-steps", type=int, help="shortcut for overrides max_steps")
    p.add_argument("--n-runs", type=int, help="shortcut for overrides n_runs")
    p.add_argument("--batch-size", type=int, help="shortcut for overrides batch_size")
    p.add_argument("--template", help="an eva YAML template to use instead of the packaged one")
    p.add_argument(
        "--no-pretrained",
        dest="pretrained",
        action="store_false",
        help="build the backbone without its pretrained weights (debugging only)",
    )
    p.add_argument("--seed", type=int, default=42, help="EVA_GLOBAL_SEED")
    if stage_choice:
        p.add_argument("--stage", choices=["predict", "fit"], default="fit")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="eva_cmd", metavar="STEP")
    sub.required = True

    p = sub.add_parser("make-synthetic", help="write the synthetic demo task")
    p.add_argument("--out", required=True, help="output folder (e.g. resources/eva/synthetic)")
    p.add_argument("--patches-per-class", type=int, default=40, help="per class and split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size-px", type=int, default=224)
    p.add_argument("--pixel-size-um", type=float, default=0.5)

    p = sub.add_parser("tasks", help="list tasks and whether their data is present")
    p.add_argument("--data-root")
    p.add_argument("--download", action=argparse.BooleanOptionalAction, default=False)

    p = sub.add_parser("render", help="write the eva config for a model, task and stage")
    _add_model_args(p, stage_choice=True)
    p.add_argument("--out", required=True, help="config file to write")
    p.add_argument("--embeddings-dir", help="embeddings root (offline tasks)")
    p.add_argument("--run-root", help="eva output root (default: next to --out)")
    p.add_argument("--in-features", type=int, help="head input width (default: from the model)")

    p = sub.add_parser("predict", help="eva predict: embeddings of an offline task")
    _add_model_args(p)
    p.add_argument("--embeddings-dir", required=True, help="output folder of the embeddings")
    p.add_argument("--on-missing", choices=["skip", "error"], default="skip")

    p = sub.add_parser("fit", help="eva fit, then collect results.json")
    _add_model_args(p)
    p.add_argument("--embeddings-dir", help="embeddings written by predict (offline tasks)")
    p.add_argument("--run-root", required=True, help="eva's output root for this model and task")
    p.add_argument("--out-dir", required=True, help="results folder: results.json + status.json")
    p.add_argument("--on-missing", choices=["skip", "error"], default="skip")

    p = sub.add_parser("collect", help="copy eva's newest results.json of a run root")
    p.add_argument("--task", required=True)
    p.add_argument("--model-name", required=True)
    p.add_argument("--run-root", required=True)
    p.add_argument("--out-dir", required=True)

    p = sub.add_parser("summary", help="summary table over models and tasks")
    p.add_argument("--inputs", nargs="+", required=True, help="status.json (or results.json) files")
    p.add_argument("--out", required=True, help="summary CSV")
    p.add_argument("--long-out", help="also write the long table (one row per model and task)")


def _model_name(args) -> str:
    """The results key: --model-name, else a model folder's name, else the workflow's key."""
    if args.model_name:
        return args.model_name
    path = Path(args.model)
    return path.name if path.is_dir() else model_key(args.model)


def _overrides(args) -> dict:
    try:
        ov = json.loads(args.overrides or "{}")
    except json.JSONDecodeError as exc:
        raise MintError(f"eva task {args.task}: --overrides is not valid JSON ({exc})") from None
    if not isinstance(ov, dict):
        raise MintError(f"eva task {args.task}: --overrides must be a JSON object")
    for key in ("max_steps", "n_runs", "batch_size"):
        val = getattr(args, key, None)
        if val is not None:
            ov[key] = val
    return ov


EMBEDDING_CHOICES = ("auto", "authors", "cls", "cls+st", "st", "cls+patch_mean")


def resolve_embedding(model: str, choice: str) -> str:
    """The tokens that form a classification embedding.

    `auto`: as eva's leaderboard ran the backbone (eva's backbone registry: CLS for every
    pathology model, Virchow2 included, whose `include_patch_tokens` defaults to False; eva's
    replication guide uses 1280 features). A MINT model folder uses CLS as well.
    `authors`: the model card's recommendation (Virchow2: CLS ++ mean of patch tokens); a MINT
    folder answers with its base backbone's choice recorded in config.json.
    Anything else is taken as given.
    """
    if choice not in ("auto", "authors"):
        return choice
    key = "eva_embedding" if choice == "auto" else "embedding"
    path = Path(model)
    if path.is_dir():
        from mint.models.encoder import read_model_config

        return str(read_model_config(path).get(key, "cls"))
    from mint.models.backbones import parse_spec

    return getattr(parse_spec(model), key)


def _render_options(args, stage: str, output_root: str, embeddings_root: str | None):
    from mint.eva.render import RenderOptions

    return RenderOptions(
        task=args.task,
        model=args.model,
        model_name=_model_name(args),
        stage=stage,
        output_root=output_root,
        embeddings_root=embeddings_root,
        data_root=args.data_root,
        data_dir=args.data_dir,
        download=args.download,
        output=resolve_embedding(args.model, args.embedding),
        accelerator=args.accelerator,
        devices=args.devices,
        num_workers=args.num_workers,
        overrides=_overrides(args),
        in_features=getattr(args, "in_features", None),
        template=args.template,
        pretrained=args.pretrained,
    )


def _cmd_tasks(args) -> int:
    from mint.eva.tasks import TASKS, missing_data, task_data_dir

    for name, spec in TASKS.items():
        mode = "offline" if spec.offline else "online"
        where = "-"
        state = "no data root"
        if args.data_root:
            d = task_data_dir(spec, args.data_root)
            where = str(d)
            msg = missing_data(spec, d, args.download)
            state = "ok" if msg is None else "MISSING"
            if msg is None and args.download and spec.auto_download:
                state = "eva downloads"
        dl = "auto" if spec.auto_download else "manual"
        print(f"{name:18s} {mode:7s} {dl:6s} ~{spec.disk_gb:>6.1f} GB  {state:13s} {where}")
    return 0


def run(args) -> int:
    cmd = args.eva_cmd
    if cmd == "make-synthetic":
        from mint.eva.synthetic import make_synthetic

        make_synthetic(
            args.out,
            patches_per_class=args.patches_per_class,
            seed=args.seed,
            size_px=args.size_px,
            pixel_size_um=args.pixel_size_um,
        )
        return 0
    if cmd == "tasks":
        return _cmd_tasks(args)
    if cmd == "render":
        from mint.eva.render import render_to_file

        run_root = args.run_root or str(Path(args.out).resolve().parent / "eva_runs")
        opts = _render_options(args, args.stage, run_root, args.embeddings_dir)
        render_to_file(opts, args.out)
        log.info("eva task %s: wrote %s", args.task, args.out)
        return 0
    if cmd == "predict":
        from mint.eva.run import predict

        opts = _render_options(args, "predict", "", args.embeddings_dir)
        predict(opts, args.embeddings_dir, on_missing=args.on_missing, seed=args.seed)
        return 0
    if cmd == "fit":
        from mint.eva.run import fit

        opts = _render_options(args, "fit", args.run_root, args.embeddings_dir)
        fit(opts, args.run_root, args.out_dir, on_missing=args.on_missing, seed=args.seed)
        return 0
    if cmd == "collect":
        from mint.eva.run import collect

        collect(args.task, args.model_name, args.run_root, args.out_dir)
        return 0
    if cmd == "summary":
        from mint.eva.summary import write_summary

        write_summary(args.inputs, args.out, args.long_out)
        return 0
    raise MintError(f"mint eva: unknown step {cmd}")
