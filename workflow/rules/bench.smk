# Stage `bench`: HEST-Bench for the base model, any extra backbones and every trained run,
# all with the same code. Embeddings are a GPU job cached per model, task and sample; the
# ridge probes are cheap CPU jobs, so changing a probe setting never recomputes embeddings.
#
# The embed job's output is the cache's manifest (written last), not the cache folder: a
# directory() output is deleted by Snakemake before a rerun, whereas the per-sample files
# beside the manifest survive, so a retried or rerun job only embeds what is missing.

BENCH_CFG = config["bench"]


rule embed:
    input:
        task=f"{BENCH}/{{task}}",
        model=model_files,
    output:
        "results/bench/embeddings/{model}/{task}/manifest.json",
    log:
        "logs/bench/embed_{model}_{task}.log",
    benchmark:
        "benchmarks/out/bench/embed_{model}_{task}.tsv"
    conda:
        ENV
    threads: max(1, BENCH_CFG["num_workers"])
    resources:
        mem_mb=memory_mb(32000),
        runtime=runtime_min(240),
        gpu=BENCH_CFG["gpus"],
        # performance knobs: resources, not params, so changing them reruns nothing
        batch_size=BENCH_CFG["batch_size"],
        num_workers=BENCH_CFG["num_workers"],
    params:
        bench=folder_of("task"),
        spec=model_spec,
        cache=folder_of(0, of="output"),
        # precision changes the numbers (a param); batch size and workers only the speed
        precision=q(BENCH_CFG["precision"]),
    shell:
        "mint embed --model {params.spec} --bench-dir {params.bench} --task {wildcards.task} "
        "--out-dir {params.cache} --batch-size {resources.batch_size} "
        "--num-workers {resources.num_workers} --precision {params.precision} 2> {log:q}"


rule probe:
    input:
        embeddings="results/bench/embeddings/{model}/{task}/manifest.json",
        task=f"{BENCH}/{{task}}",
    output:
        "results/bench/{model}/{task}.json",
    log:
        "logs/bench/probe_{model}_{task}.log",
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=memory_mb(16000),
        runtime=runtime_min(120),
    params:
        bench=folder_of("task"),
        cache=folder_of("embeddings"),
        variants=stage_opts("probe", BENCH_CFG, ["variants"]),
        pca=stage_opts("probe", BENCH_CFG, ["pca_components"]),
        seed=q(BENCH_CFG["seed"]),
    shell:
        "mint probe --embeddings {params.cache} --bench-dir {params.bench} "
        "--task {wildcards.task} --model {wildcards.model} {params.variants} {params.pca} "
        "--seed {params.seed} --out {output:q} 2> {log:q}"


rule bench:
    input:
        expand("results/bench/{model}/{task}.json", model=MODELS, task=BENCH_TASKS),
    output:
        "results/bench/summary.csv",
    log:
        "logs/bench/summary.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "mint bench-summary --inputs {input:q} --out {output:q} 2> {log:q}"
