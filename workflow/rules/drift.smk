# Stage `drift`: forgetting, measured for every trained run. CKA and mean cosine between the
# base model's and the run's CLS embeddings of the HEST-Bench patches (held-out slides; read
# from the bench stage's embedding cache), plus a linear probe on the synthetic morphology task.

import shlex

DRIFT = config["drift"]


rule drift_run:
    input:
        base=expand(
            "results/bench/embeddings/{model}/{task}", model=BASE_KEY, task=BENCH_TASKS
        ),
        run=expand("results/bench/embeddings/{{run}}/{task}", task=BENCH_TASKS),
        model="results/models/{run}/model.safetensors",
        base_files=[PRETRAIN_CKPT] if PRETRAIN_CKPT else [],
        morphology=[f"{EVA_ROOT}/synthetic"] if DRIFT["morphology"] else [],
    output:
        "results/models/{run}/drift.json",
    log:
        "logs/drift/{run}.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=scaled(8000),
        runtime=60,
    params:
        base=shlex.quote(BASE_SPEC),
        model=folder_of("model"),
        morphology=lambda wc, input: (
            f"--morphology {input.morphology}" if input.morphology else ""
        ),
        opts=f"--max-patches {DRIFT['max_patches']}",
    shell:
        "mint drift --base-embeddings {input.base} --run-embeddings {input.run} "
        "--base-model {params.base} --run-model {params.model} {params.morphology} "
        "{params.opts} --out {output} 2> {log}"


rule drift:
    input:
        expand("results/models/{run}/drift.json", run=RUNS),
