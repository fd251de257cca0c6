# Helpers shared by every stage: resolving paths against the workflow, the sample list,
# the benchmark tasks and the model keys. Nothing here touches the network or globs large
# folders: on SLURM every job re-parses the Snakefile.
import json
import re
from pathlib import Path

from mint.hest.bench import bench_tasks
from mint.hest.metadata import level_of, read_metadata
from mint.hest.select import SelectionConfig, select_samples
from mint.synth.hest import synthetic_metadata

WORKFLOW_DIR = Path(workflow.basedir)
ENV = "../../envs/mint.yaml"
HEST = "resources/hest"
BENCH = "resources/hest-bench"


def project_path(path):
    """A config path relative to the workflow folder (project files), absolute paths unchanged."""
    p = Path(path)
    return str(p if p.is_absolute() else WORKFLOW_DIR / p)


# ---------------------------------------------------------------- metadata and samples
SOURCE = config["hest"]["source"]
SYNTH = config["synthetic"]
SYNTH_ARGS = (
    f"--seed {SYNTH['seed']} --n-visium {SYNTH['n_visium']} --n-st {SYNTH['n_st']} "
    f"--n-xenium {SYNTH['n_xenium']} --slide-size-um {SYNTH['slide_size_um']} "
    f"--n-genes {SYNTH['n_genes']}"
)

if SOURCE == "synthetic":
    METADATA_CSV = f"{HEST}/HEST_metadata.csv"
    METADATA = synthetic_metadata(
        seed=SYNTH["seed"],
        n_visium=SYNTH["n_visium"],
        n_st=SYNTH["n_st"],
        n_xenium=SYNTH["n_xenium"],
        slide_size_um=SYNTH["slide_size_um"],
        n_genes=SYNTH["n_genes"],
    )
else:
    METADATA_CSV = project_path(config["hest"]["metadata_csv"])
    METADATA = read_metadata(METADATA_CSV)

SEL = config["select"]
SELECTION_CONFIG = SelectionConfig.from_dict(SEL)
SAMPLES = list(select_samples(METADATA, SELECTION_CONFIG, SOURCE).samples["id"])
# Patch-level (Xenium) samples have more files to fetch and tile than spot-level ones.
XENIUM_SAMPLES = [
    i
    for i, t in zip(METADATA["id"], METADATA["st_technology"])
    if level_of(t) == "patch"
]
SPOT_SAMPLES = [i for i in METADATA["id"] if i not in set(XENIUM_SAMPLES)]
if not SAMPLES:
    raise ValueError("config 'select': no HEST sample passes the filters")


def selection_args():
    """The `mint select` flags that reproduce SELECTION_CONFIG (same function, same result)."""
    args = []
    for flag, key in [
        ("--species", "species"),
        ("--technologies", "technologies"),
        ("--organs", "organs"),
        ("--include", "include"),
        ("--exclude", "exclude"),
    ]:
        if SEL[key]:
            values = " ".join(f"'{v}'" for v in SEL[key])
            args.append(f"{flag} {values}")
    if not SEL["exclude_bench"]:
        args.append("--no-exclude-bench")
    if SEL["exclude_leakage"]:
        args.append("--exclude-leakage")
    if SEL["exclude_visium_hd"]:
        args.append("--exclude-visium-hd")
    if SEL["max_samples"]:
        args.append(f"--max-samples {SEL['max_samples']}")
    return " ".join(args)


# ---------------------------------------------------------------- benchmark tasks
BENCH_SOURCE = config["bench_data"]["source"]
ALL_BENCH_TASKS = bench_tasks(BENCH_SOURCE)
BENCH_TASKS = config["bench_data"]["tasks"] or list(ALL_BENCH_TASKS)
for _task in BENCH_TASKS:
    if _task not in ALL_BENCH_TASKS:
        raise ValueError(
            f"config 'bench_data.tasks': unknown task {_task!r} for source {BENCH_SOURCE!r}; "
            f"known: {', '.join(ALL_BENCH_TASKS)}"
        )

# ---------------------------------------------------------------- models
RUNS = dict(config["train"]["runs"])


def model_key(spec):
    """A file-system-safe key for a backbone spec such as `timm:vit_base@/ckpt/w.safetensors`."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", spec).strip("_")


# The demo pretrains its own base model (stage `pretrain`): the checkpoint then loads through
# `<arch>@<file>` like a user's own weights, and reports as `<arch>-pretrained`.
PRETRAIN = config["pretrain"]
PRETRAIN_CKPT = (
    f"results/pretrain/{model_key(config['base_model'])}.safetensors"
    if PRETRAIN["enabled"]
    else None
)
if PRETRAIN_CKPT:
    BASE_SPEC = f"{config['base_model']}@{PRETRAIN_CKPT}"
    BASE_KEY = model_key(config["base_model"]) + "-pretrained"
else:
    BASE_SPEC = config["base_model"]
    BASE_KEY = model_key(BASE_SPEC)
MODEL_SPECS = {BASE_KEY: BASE_SPEC}
for _spec in config["extra_models"]:
    MODEL_SPECS[model_key(_spec)] = _spec
for _run in RUNS:
    if _run in MODEL_SPECS:
        raise ValueError(
            f"config 'train.runs': run name {_run!r} clashes with a backbone name"
        )
    MODEL_SPECS[_run] = f"results/models/{_run}"
MODELS = list(MODEL_SPECS)


def model_spec(wildcards):
    return MODEL_SPECS[wildcards.model]


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
    """Everything `mint train` needs for one run, as one JSON string (a change reruns the run)."""
    params = dict(config["train"]["defaults"])
    params.update(RUNS[run] or {})
    params.setdefault("backbone", BASE_SPEC)
    return json.dumps(params, sort_keys=True)


def torch_launcher(gpus, nodes=1):
    """`mint` for one process; torchrun for several GPUs; srun + torchrun across nodes.

    `gpus` is the job's total (the `gpu` resource, sbatch --gpus), spread evenly over `nodes`.
    """
    if gpus <= 1 and nodes <= 1:
        return "mint"
    if nodes > 1:
        if gpus % nodes:
            raise ValueError(
                f"resources: gpu={gpus} is not a multiple of nodes={nodes}"
            )
        return (
            f"srun --overlap --nodes={nodes} --ntasks-per-node=1 torchrun --nnodes={nodes} "
            f"--nproc-per-node={gpus // nodes} "
            '--rdzv-backend=c10d --rdzv-endpoint="$(scontrol show hostnames "$SLURM_JOB_NODELIST" '
            '| head -n1):29500" --rdzv-id="$SLURM_JOB_ID" -m mint.cli'
        )
    return f"torchrun --standalone --nproc-per-node={gpus} -m mint.cli"


def scaled(mb):
    """A memory request that grows with each retry (a job killed for memory gets more)."""
    return lambda wildcards, attempt: mb * attempt


def folder_of(name, up=1, of="input"):
    """A params function: the folder `up` levels above a rule's input or output file.

    Passing folders this way (not as module-level constants) keeps provenance with the files.
    """

    def folder(wildcards, input, output):
        files = input if of == "input" else output
        value = files[name] if isinstance(name, int) else getattr(files, name)
        path = Path(value[0] if isinstance(value, list) else value)
        return str(path.parents[up - 1])

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
    "mint download --source {params.source} --sample {wildcards.sample} --out-dir {params.hest} "
    "--metadata {input} {params.extra} 2> {log}"
)


def download_source_args():
    h = config["hest"]
    if SOURCE == "hub":
        return f"--repo-id {h['repo_id']} --retries {h['retries']}"
    if SOURCE == "local":
        if not h["local_dir"]:
            raise ValueError(
                "config 'hest.local_dir' is required when hest.source is 'local'"
            )
        return f"--local-dir '{h['local_dir']}'" + (" --copy" if h["copy"] else "")
    return SYNTH_ARGS


def bench_source_args():
    b = config["bench_data"]
    if BENCH_SOURCE == "hub":
        return f"--repo-id {b['repo_id']} --retries {config['hest']['retries']}"
    if BENCH_SOURCE == "local":
        if not b["local_dir"]:
            raise ValueError(
                "config 'bench_data.local_dir' is required when bench_data.source is 'local'"
            )
        return f"--local-dir '{b['local_dir']}'"
    return SYNTH_ARGS


# ---------------------------------------------------------------- tiles


def tile_inputs(wildcards):
    """Every file tiling reads (a restored or changed one re-tiles): slide, spots, metadata,
    tissue contours; for Xenium the transcripts and (cell targets) the cell segmentation.
    """
    s = wildcards.sample
    inputs = {
        "wsi": f"{HEST}/wsis/{s}.tif",
        "st": f"{HEST}/st/{s}.h5ad",
        "meta": f"{HEST}/metadata/{s}.json",
        "contours": f"{HEST}/tissue_seg/{s}_contours.geojson",
        "metadata": METADATA_CSV,
    }
    if s in XENIUM_SAMPLES:
        inputs["transcripts"] = f"{HEST}/transcripts/{s}_transcripts.parquet"
        if config["tile"]["xenium_target"] == "cells":
            inputs["cell_seg"] = f"{HEST}/xenium_seg/{s}_xenium_cell_seg.parquet"
    return inputs


def tile_output(path):
    """Tiles are disposable once shards exist when shards.temp is set (saves disk on real runs)."""
    return temp(path) if config["shards"]["temp"] else path


# ---------------------------------------------------------------- eva
from mint.eva.tasks import TASKS as EVA_TASK_SPECS

EVA = config["eva"]
EVA_TASKS = EVA["tasks"] if EVA["enabled"] else []
for _task in EVA_TASKS:
    if _task not in EVA_TASK_SPECS:
        raise ValueError(
            f"config 'eva.tasks': unknown task {_task!r}; known: {', '.join(EVA_TASK_SPECS)}"
        )
EVA_ROOT = EVA["data_root"] or "resources/eva"
EVA_OFFLINE = [t for t in EVA_TASKS if EVA_TASK_SPECS[t].offline]


def eva_common_args(wildcards):
    return (
        f"--task {wildcards.eva_task} --model {MODEL_SPECS[wildcards.model]} "
        f"--model-name {wildcards.model} --data-root {EVA_ROOT} "
        + ("--download " if EVA["download"] else "--no-download ")
        + f"--embedding {EVA['embedding']} --accelerator {EVA['accelerator']} "
        f"--num-workers {EVA['num_workers']} --overrides '{json.dumps(EVA['overrides'])}'"
    )


def eva_data(wildcards):
    """Only the synthetic demo task is made by the workflow; real datasets are the user's."""
    return [f"{EVA_ROOT}/synthetic"] if wildcards.eva_task == "synthetic" else []


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
        "wsi": f"{HEST}/wsis/{EXAMPLE_SAMPLE}.tif",
        "st": f"{HEST}/st/{EXAMPLE_SAMPLE}.h5ad",
        "metadata": METADATA_CSV,
    }
    if config["eva"]["enabled"]:
        inputs["eva"] = "results/eva/summary.csv"
    inputs["drift"] = expand("results/models/{run}/drift.json", run=RUNS)
    if PRETRAIN_CKPT:
        inputs["pretrain"] = PRETRAIN_CKPT
    return inputs
