# Stage `drift`: forgetting, measured for every trained run. CKA and mean cosine between the
# base model's and the run's CLS embeddings of the HEST-Bench patches (held-out slides; read
# from the bench stage's embedding cache), plus a linear probe on the synthetic morphology task.

DRIFT = config["drift"]


rule drift_run:
    input:
        base=expand(
            "results/bench/embeddings/{model}/{task}/manifest.json",
            model=BASE_KEY,
            task=BENCH_TASKS,
        ),
        run=expand(
            "results/bench/embeddings/{{run}}/{task}/manifest.json", task=BENCH_TASKS
        ),
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
        mem_mb=memory_mb(8000),
        runtime=runtime_min(60),
    params:
        # the embedding caches are folders of per-sample files, named by their manifests
        base_dirs=lambda wc, input: opts(*(q(Path(m).parent) for m in input.base)),
        run_dirs=lambda wc, input: opts(*(q(Path(m).parent) for m in input.run)),
        base=q(BASE_SPEC),
        model=folder_of("model"),
        morphology=lambda wc, input: (
            opt("--morphology", input.morphology[0]) if input.morphology else ""
        ),
        opts=stage_opts("drift", DRIFT),
    shell:
        "mint drift --base-embeddings {params.base_dirs} --run-embeddings {params.run_dirs} "
        "--base-model {params.base} --run-model {params.model} {params.morphology} "
        "{params.opts} --out {output:q} 2> {log:q}"


rule drift:
    input:
        expand("results/models/{run}/drift.json", run=RUNS),
