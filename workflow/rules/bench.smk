# Stage `bench`: HEST-Bench for the base model, any extra backbones and every trained run,
# all with the same code. Embeddings are a GPU job cached per model and task; the ridge
# probes are cheap CPU jobs, so changing a probe setting never recomputes embeddings.

BENCH_CFG = config["bench"]


rule embed:
    input:
        task=f"{BENCH}/{{task}}",
        model=model_files,
    output:
        directory("results/bench/embeddings/{model}/{task}"),
    log:
        "logs/bench/embed_{model}_{task}.log",
    benchmark:
        "benchmarks/out/bench/embed_{model}_{task}.tsv"
    conda:
        ENV
    threads: max(1, BENCH_CFG["num_workers"])
    resources:
        mem_mb=scaled(32000),
        runtime=240,
        gpu=BENCH_CFG["gpus"],
    params:
        bench=folder_of("task"),
        spec=model_spec,
        opts=(
            f"--batch-size {BENCH_CFG['batch_size']} --num-workers {BENCH_CFG['num_workers']} "
            f"--precision {BENCH_CFG['precision']}"
        ),
    shell:
        "mint embed --model {params.spec} --bench-dir {params.bench} --task {wildcards.task} "
        "--out-dir {output} {params.opts} 2> {log}"


rule probe:
    input:
        embeddings="results/bench/embeddings/{model}/{task}",
        task=f"{BENCH}/{{task}}",
    output:
        "results/bench/{model}/{task}.json",
    log:
        "logs/bench/probe_{model}_{task}.log",
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=scaled(16000),
        runtime=120,
    params:
        bench=folder_of("task"),
        variants=" ".join(BENCH_CFG["variants"]),
        pca=(
            f"--pca-components {BENCH_CFG['pca_components']}"
            if BENCH_CFG["pca_components"]
            else "--no-pca"
        ),
        seed=BENCH_CFG["seed"],
    shell:
        "mint probe --embeddings {input.embeddings} --bench-dir {params.bench} --task {wildcards.task} "
        "--model {wildcards.model} --variants {params.variants} {params.pca} --seed {params.seed} "
        "--out {output} 2> {log}"


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
        "mint bench-summary --inputs {input} --out {output} 2> {log}"
