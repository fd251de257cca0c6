# Stage `eva`: kaiko-eva for the base model, extra backbones and every trained run. Offline
# tasks run `eva predict` (GPU: embeddings, own output root per model and task, since eva
# refuses to overwrite embeddings) then `eva fit` (linear or ABMIL heads on the stored
# embeddings); segmentation tasks run `eva fit` online. A task whose data is missing is
# recorded as such in status.json and left empty in the summary; the other tasks still run.
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


rule eva_synthetic_data:
    output:
        directory(f"{EVA_ROOT}/synthetic"),
    log:
        "logs/eva/synthetic_data.log",
    params:
        n=config["synthetic"]["eva_patches_per_class"],
        seed=config["synthetic"]["seed"],
    conda:
        ENV
    shell:
        "mint eva make-synthetic --out {output} --patches-per-class {params.n} "
        "--seed {params.seed} 2> {log}"


rule eva_predict:
    input:
        data=eva_data,
        model=model_files,
    output:
        directory("results/eva/embeddings/{model}/{eva_task}"),
    log:
        "logs/eva/predict_{model}_{eva_task}.log",
    benchmark:
        "benchmarks/out/eva/predict_{model}_{eva_task}.tsv"
    wildcard_constraints:
        eva_task=one_of(EVA_OFFLINE) if EVA_OFFLINE else "^$",
    params:
        common=eva_common_args,
    threads: max(1, EVA["num_workers"])
    resources:
        mem_mb=32000,
        runtime=720,
        gpu=EVA["gpus"],
    conda:
        ENV
    shell:
        "mint eva predict {params.common} --embeddings-dir {output} 2> {log}"


rule eva_fit:
    input:
        eva_fit_inputs,
    output:
        status="results/eva/{model}/{eva_task}/status.json",
        runs=directory("results/eva/runs/{model}/{eva_task}"),
    log:
        "logs/eva/fit_{model}_{eva_task}.log",
    benchmark:
        "benchmarks/out/eva/fit_{model}_{eva_task}.tsv"
    params:
        common=eva_common_args,
        embeddings=lambda wc: (
            f"--embeddings-dir results/eva/embeddings/{wc.model}/{wc.eva_task}"
            if EVA_TASK_SPECS[wc.eva_task].offline
            else ""
        ),
    threads: max(1, EVA["num_workers"])
    resources:
        mem_mb=32000,
        runtime=720,
        gpu=EVA["gpus"],
    conda:
        ENV
    shell:
        "mint eva fit {params.common} {params.embeddings} --run-root {output.runs} "
        "--out-dir results/eva/{wildcards.model}/{wildcards.eva_task} 2> {log}"


rule eva:
    input:
        expand("results/eva/{model}/{eva_task}/status.json", model=MODELS, eva_task=EVA_TASKS),
    output:
        "results/eva/summary.csv",
    log:
        "logs/eva/summary.log",
    conda:
        ENV
    shell:
        "mint eva summary --inputs {input} --out {output} 2> {log}"
