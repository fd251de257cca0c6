# Stage `eva`: kaiko-eva for the base model, extra backbones and every trained run. Offline
# tasks run `eva predict` (GPU: embeddings, own output root per model and task, since eva
# refuses to overwrite embeddings) then `eva fit` (linear or ABMIL heads on the stored
# embeddings: a CPU job, no GPU requested); segmentation tasks run `eva fit` online (GPU).
#
# A task whose data is missing is recorded as `missing_data` in its status.json and left empty
# in the summary and the report; the other tasks, the summary and the report still complete.
# When the data appears, its marker file becomes an input (common.smk `eva_data`) and the
# task reruns without --forcerun.


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
        n=q(config["synthetic"]["eva_patches_per_class"]),
        seed=q(config["synthetic"]["seed"]),
    shell:
        "mint eva make-synthetic --out {output:q} --patches-per-class {params.n} "
        "--seed {params.seed} 2> {log:q}"


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
        eva_task=one_of(EVA_OFFLINE),
    conda:
        ENV
    threads: max(1, EVA["num_workers"])
    resources:
        mem_mb=memory_mb(32000),
        runtime=runtime_min(720),
        gpu=EVA["gpus"],
        num_workers=EVA["num_workers"],
    params:
        common=eva_common_args,
    shell:
        "mint eva predict {params.common} --num-workers {resources.num_workers} "
        "--embeddings-dir {output:q} 2> {log:q}"


# Offline tasks: a head on stored embeddings, so a CPU job. eva writes its timestamped run
# folders under results/eva/runs/ (not declared: a directory() output would be required even
# when the data is missing, and deleted before every rerun).
rule eva_fit:
    input:
        eva_fit_inputs,
    output:
        status="results/eva/{model}/{eva_task}/status.json",
    log:
        "logs/eva/fit_{model}_{eva_task}.log",
    benchmark:
        "benchmarks/out/eva/fit_{model}_{eva_task}.tsv"
    wildcard_constraints:
        eva_task=one_of(EVA_OFFLINE),
    conda:
        ENV
    threads: max(1, EVA["num_workers"])
    resources:
        mem_mb=memory_mb(32000),
        runtime=runtime_min(720),
        num_workers=EVA["num_workers"],
    params:
        # a CPU job: the head trains on the CPU whatever eva.accelerator says for the GPU jobs
        common=lambda wc: eva_common_args(wc, accelerator="cpu"),
        embeddings=lambda wc: opt(
            "--embeddings-dir", f"results/eva/embeddings/{wc.model}/{wc.eva_task}"
        ),
        runs=lambda wc: q(f"results/eva/runs/{wc.model}/{wc.eva_task}"),
        out=lambda wc: q(f"results/eva/{wc.model}/{wc.eva_task}"),
    shell:
        "mint eva fit {params.common} --num-workers {resources.num_workers} "
        "{params.embeddings} --run-root {params.runs} --out-dir {params.out} 2> {log:q}"


# Segmentation tasks train a decoder on the frozen backbone online: a GPU job.
use rule eva_fit as eva_fit_online with:
    input:
        eva_fit_inputs,
    log:
        "logs/eva/fit_{model}_{eva_task}.log",
    benchmark:
        "benchmarks/out/eva/fit_{model}_{eva_task}.tsv"
    wildcard_constraints:
        eva_task=one_of(EVA_ONLINE),
    resources:
        mem_mb=memory_mb(32000),
        runtime=runtime_min(720),
        gpu=EVA["gpus"],
        num_workers=EVA["num_workers"],
    params:
        common=eva_common_args,
        embeddings="",
        runs=lambda wc: q(f"results/eva/runs/{wc.model}/{wc.eva_task}"),
        out=lambda wc: q(f"results/eva/{wc.model}/{wc.eva_task}"),


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
        "mint eva summary --inputs {input:q} --out {output:q} 2> {log:q}"
