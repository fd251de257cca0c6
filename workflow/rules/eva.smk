# Stage `eva`: kaiko-eva for the base model, extra backbones and every trained run. Offline
# tasks run `eva predict` (GPU: embeddings, own output root per model and task, since eva
# refuses to overwrite embeddings) then `eva fit` (linear or ABMIL heads on the stored
# embeddings); segmentation tasks run `eva fit` online. A task whose data is missing is
# recorded as such in status.json and left empty in the summary; the other tasks still run.
rule eva_synthetic_data:
    output:
        directory(f"{EVA_ROOT}/synthetic"),
    log:
        "logs/eva/synthetic_data.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        n=config["synthetic"]["eva_patches_per_class"],
        seed=config["synthetic"]["seed"],
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
    conda:
        ENV
    threads: max(1, EVA["num_workers"])
    resources:
        mem_mb=scaled(32000),
        runtime=720,
        gpu=EVA["gpus"],
    params:
        common=eva_common_args,
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
    conda:
        ENV
    threads: max(1, EVA["num_workers"])
    resources:
        mem_mb=scaled(32000),
        runtime=720,
        gpu=EVA["gpus"],
    params:
        common=eva_common_args,
        embeddings=lambda wc: (
            f"--embeddings-dir results/eva/embeddings/{wc.model}/{wc.eva_task}"
            if EVA_TASK_SPECS[wc.eva_task].offline
            else ""
        ),
    shell:
        "mint eva fit {params.common} {params.embeddings} --run-root {output.runs} "
        "--out-dir results/eva/{wildcards.model}/{wildcards.eva_task} 2> {log}"


rule eva:
    input:
        expand(
            "results/eva/{model}/{eva_task}/status.json",
            model=MODELS,
            eva_task=EVA_TASKS,
        ),
    output:
        "results/eva/summary.csv",
    log:
        "logs/eva/summary.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "mint eva summary --inputs {input} --out {output} 2> {log}"
