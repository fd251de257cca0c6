# Helpers shared by every stage: the command that runs `mint`, shell quoting, the sample list,
# the benchmark tasks, the model keys, resources that grow with retries, and the parse-time
# checks of every value that becomes a path or a shell word. Nothing here touches the network or
# globs large folders: on SLURM every job re-parses the Snakefile.
#
# Two rules for shell lines, so that no config value can run a command or break one:
#   - a stage's settings become flags through `stage_opts(stage, config[section])` (the table
#     in mint/settings.py); any other value from the config or the metadata goes through
#     `q()` / `opt()` (shlex.quote) or, for paths, `{input:q}` / `{output:q}`;
#   - every id that becomes a path (sample, run, task, model key) is checked by
#     `mint.safe.check_name` here, at parse time, naming the value and where it came from.
import json
import os
import re
import sys
from pathlib import Path

from mint.config import (
    eva_overrides,
    results_config_hash,
    train_run_params,
)
from mint.errors import MintError
from mint.hest import layout
from mint.hest.bench import bench_tasks
from mint.hest.metadata import read_metadata
from mint.hest.select import SelectionConfig, select_samples
from mint.safe import check_name, model_key
from mint.settings import opt, opts, q, stage_opts
from mint.synth.hest import synthetic_metadata
from mint.synth.specs import SynthConfig
from mint.train.preempt import preemption_count
from snakemake.settings.types import DeploymentMethod

WORKFLOW_DIR = Path(workflow.basedir)
ENV = "../../envs/mint.yaml"
HEST = "resources/hest"
BENCH = "resources/hest-bench"


# Shell lines call `mint` (and `python` for torchrun). This Python's bin folder is put first on
# PATH in this process's environment, which every job's shell inherits (on SLURM each job
# re-parses this file), so `.venv/bin/snakemake` works without an activated venv. With
# --sdm conda the env's bin folder comes first (the env has the dependencies, not the package):
# `mint` is then workflow/bin/mint, which runs the package from this folder with the env's python.
envvars:
    "PATH",


if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
    _bin = WORKFLOW_DIR / "workflow" / "bin"
else:
    _bin = Path(sys.executable).parent
_path = os.environ["PATH"]
os.environ["PATH"] = os.pathsep.join([str(_bin), _path])


def project_path(path):
    """A config path relative to the workflow folder (project files), absolute paths unchanged."""
    p = Path(path)
    return str(p if p.is_absolute() else WORKFLOW_DIR / p)


def pinned(path):
    """A pinned input that a fresh copy (new mtime, same content) must not make stale."""
    return ancient(path)


# ---------------------------------------------------------------- metadata and samples
SOURCE = config["hest"]["source"]
SYNTH = config["synthetic"]
SYNTH_CONFIG = SynthConfig.from_config(SYNTH)
SYNTH_ARGS = stage_opts("synth", SYNTH)

if SOURCE == "synthetic":
    METADATA_CSV = f"{HEST}/{layout.METADATA_CSV}"
    METADATA = synthetic_metadata(SYNTH_CONFIG)
else:
    METADATA_CSV = project_path(config["hest"]["metadata_csv"])
    METADATA = read_metadata(METADATA_CSV)

# Every id of the metadata becomes a wildcard value and a file name: refuse unsafe ones here.
for _row, _id in enumerate(METADATA["id"]):
    check_name(_id, "sample id", f"{METADATA_CSV} row {_row + 2}")
for _key in ("include", "exclude"):
    for _id in config["select"][_key]:
        check_name(_id, "sample id", f"config 'select.{_key}'")

SEL = config["select"]
SELECTION_CONFIG = SelectionConfig.from_dict(SEL)
SAMPLES = list(select_samples(METADATA, SELECTION_CONFIG, SOURCE).samples["id"])
# Patch-level (Xenium) samples have more files to fetch and tile than spot-level ones.
XENIUM_SAMPLES = [
    i
    for i, t in zip(METADATA["id"], METADATA["st_technology"])
    if layout.is_patch_level(t)
]
SPOT_SAMPLES = [i for i in METADATA["id"] if i not in set(XENIUM_SAMPLES)]
if not SAMPLES:
    raise MintError("config 'select': no HEST sample passes the filters")


def selection_args():
    """The `mint select` flags that reproduce SELECTION_CONFIG (same function, same result)."""
    return stage_opts("select", SEL)


# ---------------------------------------------------------------- benchmark tasks
BENCH_SOURCE = config["bench_data"]["source"]
ALL_BENCH_TASKS = bench_tasks(BENCH_SOURCE)
BENCH_TASKS = config["bench_data"]["tasks"] or list(ALL_BENCH_TASKS)
for _task in BENCH_TASKS:
    if _task not in ALL_BENCH_TASKS:
        raise MintError(
            f"config 'bench_data.tasks': unknown task {_task!r} for source {BENCH_SOURCE!r}; "
            f"known: {', '.join(ALL_BENCH_TASKS)}"
        )
    check_name(_task, "HEST-Bench task", "config 'bench_data.tasks'")

# ---------------------------------------------------------------- models
# base_model and extra_models are checked in the Snakefile (mint.config.check_open_sections).


# The demo pretrains its own base model (stage `pretrain`): the checkpoint then loads through
# `<arch>@<file>` like a user's own weights, and reports as `<arch>-pretrained`.
PRETRAIN = config["pretrain"]
PRETRAIN_CKPT = (
    f"results/pretrain/{model_key(config['base_model'])}.safetensors"
    if PRETRAIN["enabled"]
    else None
)
if PRETRAIN_CKPT:
    # pretrain.params: checked by the job's own parser in the Snakefile (check_open_sections)
    BASE_SPEC = f"{config['base_model']}@{PRETRAIN_CKPT}"
    BASE_KEY = model_key(config["base_model"]) + "-pretrained"
else:
    BASE_SPEC = config["base_model"]
    BASE_KEY = model_key(BASE_SPEC)
# Each run's `mint train` parameters, checked by TrainConfig (the job's own parser) now; a run
# without its own `backbone` fine-tunes the base model (the pretrained one in the demo).
TRAIN_PARAMS = train_run_params(config, base_spec=BASE_SPEC)
RUNS = list(TRAIN_PARAMS)
MODEL_SPECS = {BASE_KEY: BASE_SPEC}
for _spec in config["extra_models"]:
    MODEL_SPECS[model_key(_spec)] = _spec
for _key in MODEL_SPECS:
    check_name(_key, "model key", "config 'base_model' / 'extra_models'")
for _run in RUNS:
    if _run in MODEL_SPECS:
        raise MintError(
            f"config 'train.runs': run name {_run!r} clashes with a backbone name"
        )
    MODEL_SPECS[_run] = f"results/models/{_run}"
MODELS = list(MODEL_SPECS)


def model_spec(wildcards):
    return q(MODEL_SPECS[wildcards.model])


def model_files(wildcards):
    """Inputs that make a trained model a dependency of its evaluations; none for backbones."""
    if wildcards.model in RUNS:
        return [
            f"results/models/{wildcards.model}/model.safetensors",
            f"results/models/{wildcards.model}/config.json",
        ]
    if wildcards.model == BASE_KEY and PRETRAIN_CKPT:
        return [PRETRAIN_CKPT]
    return []


def train_params(run):
    """Everything `mint train` needs for one run, as one JSON string with sorted keys (a change
    of value reruns the run; re-saving the config with keys reordered does not)."""
    return json.dumps(TRAIN_PARAMS[run], sort_keys=True)


# ---------------------------------------------------------------- GPUs and retries
# The number of training processes is decided here, from the config, and nowhere else: the
# profile sets the GPU model and partition but never `gpu`, `gres` or `nodes` for train_run
# (checked below), so torchrun and sbatch always agree.
TRAIN = config["train"]
CLUSTER = config["cluster"]


def train_gpu_resources():
    """sbatch resources for the configured layout: `--gpus=N` on one node; on several nodes
    `--gres=gpu:N` (per node) and `--nodes`, so that SLURM cannot spread GPUs unevenly.
    """
    per_node, nodes = TRAIN["gpus"], TRAIN["nodes"]
    if nodes > 1:
        if per_node < 1:
            raise MintError(
                "config 'train.nodes' > 1 needs 'train.gpus' >= 1 (GPUs per node)"
            )
        return {"gres": f"gpu:{per_node}", "nodes": nodes}
    return {"gpu": per_node}


def check_profile_gpus():
    """A profile or --set-resources that sets the training layout would silently disagree with
    torchrun's process count: refuse it, naming the config keys that decide it."""
    overrides = workflow.resource_settings.overwrite_resources or {}
    for rule_name in ("train_run",):
        bad = sorted(
            set(overrides.get(rule_name, {})) & {"gpu", "gres", "nodes", "gpus"}
        )
        if bad:
            raise MintError(
                f"resources of {rule_name}: {', '.join(bad)} is set by the profile or "
                "--set-resources; the GPU layout comes from config 'train.gpus' (per node) and "
                "'train.nodes' only (set gpu_model, partition and cpus_per_gpu in the profile)"
            )


check_profile_gpus()


def torch_launcher(gpus, nodes=1):
    """`mint` for one process; else `mint.train.launch` (torchrun, which forwards SIGUSR1 and
    SIGTERM to every rank) with `gpus` processes per node, under srun across nodes."""
    if gpus <= 1 and nodes <= 1:
        return "mint"
    launch = "python -m mint.train.launch"
    if nodes > 1:
        return (
            f"srun --overlap --nodes={nodes} --ntasks-per-node=1 {launch} --nnodes={nodes} "
            f"--nproc-per-node={gpus} "
            '--rdzv-backend=c10d --rdzv-endpoint="$(scontrol show hostnames "$SLURM_JOB_NODELIST" '
            '| head -n1):29500" --rdzv-id="$SLURM_JOB_ID" -m mint.cli'
        )
    return f"{launch} --standalone --nproc-per-node={gpus} -m mint.cli"


def memory_mb(mb):
    """mem_mb for a retry: doubles per failed attempt, capped at what a node offers
    (config 'cluster.max_mem_mb'). A failure can be a time limit rather than memory; the cap
    keeps such retries schedulable."""
    return lambda wildcards, attempt: min(
        mb * 2 ** (attempt - 1), CLUSTER["max_mem_mb"]
    )


def train_memory_mb(wildcards, attempt):
    """mem_mb of a training job: grows only for attempts that did not end in a checkpoint-and-
    exit (exit code 75). Each preemption or time-limit stop is recorded by `mint train` (one line
    in preemptions.log, removed when the run finishes); those attempts were not memory failures
    and do not count. Lines left by an earlier invocation can only make the growth smaller.
    """
    resumed = preemption_count(f"results/models/{wildcards.run}")
    failures = max(0, attempt - 1 - resumed)
    return min(TRAIN["mem_mb"] * 2**failures, CLUSTER["max_mem_mb"])


def runtime_min(minutes):
    """A time limit that grows with each attempt, for jobs that restart from the beginning
    (or from a per-sample cache) after a time-out; capped at config 'cluster.max_runtime'.
    """
    return lambda wildcards, attempt: min(minutes * attempt, CLUSTER["max_runtime"])


def folder_of(name, up=1, of="input"):
    """A params function: the folder `up` levels above a rule's input or output file, quoted.

    Passing folders this way (not as module-level constants) keeps provenance with the files.
    """

    def folder(wildcards, input, output):
        files = input if of == "input" else output
        value = files[name] if isinstance(name, int) else getattr(files, name)
        path = Path(value[0] if isinstance(value, list) else value)
        return q(path.parents[up - 1])

    return folder


def one_of(names):
    """A wildcard regex matching exactly these names (none: matches nothing)."""
    names = list(names)
    return "|".join(re.escape(n) for n in names) if names else "(?!)"


wildcard_constraints:
    sample=one_of(METADATA["id"]),
    task=one_of(ALL_BENCH_TASKS),
    run=one_of(RUNS),
    model=one_of(MODELS),
    eva_task=r"[a-z0-9_]+",


# ---------------------------------------------------------------- download
DOWNLOAD_CMD = (
    "mint download --source {params.source} --sample {wildcards.sample} "
    "--out-dir {params.hest} --metadata {input:q} {params.extra} 2> {log:q}"
)


def download_source_args():
    h = config["hest"]
    if SOURCE == "hub":
        return stage_opts("download", h, ["repo_id", "retries"])
    if SOURCE == "local":
        if not h["local_dir"]:
            raise MintError(
                "config 'hest.local_dir' is required when hest.source is 'local'"
            )
        return stage_opts("download", h, ["local_dir", "copy"])
    return SYNTH_ARGS


def bench_source_args():
    b = config["bench_data"]
    if BENCH_SOURCE == "hub":
        return opts(
            stage_opts("download-bench", b, ["repo_id"]),
            stage_opts("download", config["hest"], ["retries"]),
        )
    if BENCH_SOURCE == "local":
        if not b["local_dir"]:
            raise MintError(
                "config 'bench_data.local_dir' is required when bench_data.source is 'local'"
            )
        return stage_opts("download-bench", b, ["local_dir"])
    return SYNTH_ARGS


# ---------------------------------------------------------------- tiles
# HEST file names come from mint.hest.layout only (download outputs, tile inputs, report).
XENIUM_CELLS = config["tile"]["xenium_target"] == "cells"


def hest_file(key, sample="{sample}"):
    """A file of one sample in the HEST folder (`key` from layout.SAMPLE_FILES)."""
    return layout.sample_file(key, sample, HEST)


def hest_files(patch_level, sample="{sample}"):
    """{key: path} of every file a sample's download writes and its tile job reads."""
    keys = layout.sample_keys(patch_level, cell_seg=XENIUM_CELLS)
    return {k: hest_file(k, sample) for k in keys}


def tile_inputs(wildcards):
    """Every file tiling reads (a restored or changed one re-tiles): slide, spots, metadata,
    tissue contours; for Xenium the transcripts and (cell targets) the cell segmentation.
    """
    s = wildcards.sample
    inputs = hest_files(s in XENIUM_SAMPLES, s)
    inputs["metadata"] = pinned(METADATA_CSV)
    return inputs


def tile_output(path):
    """Tiles are disposable once shards exist when shards.temp is set (saves disk on real runs)."""
    return temp(path) if config["shards"]["temp"] else path


# ---------------------------------------------------------------- eva
from mint.eva.tasks import TASKS as EVA_TASK_SPECS, task_data_dir

EVA = config["eva"]
EVA_TASKS = EVA["tasks"] if EVA["enabled"] else []
for _task in EVA_TASKS:
    if _task not in EVA_TASK_SPECS:
        raise MintError(
            f"config 'eva.tasks': unknown task {_task!r}; known: {', '.join(EVA_TASK_SPECS)}"
        )
EVA_OVERRIDES = eva_overrides(config)
EVA_ROOT = EVA["data_root"] or "resources/eva"
EVA_OFFLINE = [t for t in EVA_TASKS if EVA_TASK_SPECS[t].offline]
EVA_ONLINE = [t for t in EVA_TASKS if not EVA_TASK_SPECS[t].offline]


def eva_common_args(wildcards, accelerator=None):
    """The flags every `mint eva` job shares that change its result (a change reruns it)."""
    return opts(
        opt("--task", wildcards.eva_task),
        opt("--model", MODEL_SPECS[wildcards.model]),
        opt("--model-name", wildcards.model),
        opt("--data-root", EVA_ROOT),
        stage_opts(
            "eva",
            {
                **EVA,
                "accelerator": accelerator or EVA["accelerator"],
                "overrides": EVA_OVERRIDES,
            },
        ),
    )


def eva_data_marker(task):
    """A file that exists once the user has put a task's data in place (the first file eva
    requires), or None while it is missing. Declared as an input when present, so that data
    appearing later changes the job's inputs and the task reruns without --forcerun."""
    spec = EVA_TASK_SPECS[task]
    if task == "synthetic" or (EVA["download"] and spec.auto_download):
        return None
    if not spec.required:
        return None
    marker = task_data_dir(spec, EVA_ROOT) / spec.required[0]
    return str(marker) if marker.exists() else None


def eva_data(wildcards):
    """The demo's synthetic task is made by the workflow; real datasets are the user's."""
    if wildcards.eva_task == "synthetic":
        return [f"{EVA_ROOT}/synthetic"]
    marker = eva_data_marker(wildcards.eva_task)
    return [ancient(marker)] if marker else []


def eva_fit_inputs(wildcards):
    if EVA_TASK_SPECS[wildcards.eva_task].offline:
        return [f"results/eva/embeddings/{wildcards.model}/{wildcards.eva_task}"]
    return eva_data(wildcards) + model_files(wildcards)


# ---------------------------------------------------------------- report
EXAMPLE_SAMPLE = SAMPLES[0]


def report_inputs(wildcards):
    inputs = {
        "samples": "results/samples.tsv",
        "leakage": "results/leakage.tsv",
        "bench": "results/bench/summary.csv",
        "bench_results": expand(
            "results/bench/{model}/{task}.json", model=MODELS, task=BENCH_TASKS
        ),
        "metrics": expand("results/models/{run}/metrics.csv", run=RUNS),
        "shards": "results/shards",
        "wsi": hest_file("wsi", EXAMPLE_SAMPLE),
        "st": hest_file("st", EXAMPLE_SAMPLE),
        "metadata": pinned(METADATA_CSV),
    }
    if config["eva"]["enabled"]:
        inputs["eva"] = "results/eva/summary.csv"
    inputs["drift"] = expand("results/models/{run}/drift.json", run=RUNS)
    if PRETRAIN_CKPT:
        inputs["pretrain"] = PRETRAIN_CKPT
    return inputs
