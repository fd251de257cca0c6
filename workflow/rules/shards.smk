# Stages `vocab` and `shards`: shared gene vocabularies, then globally shuffled WebDataset
# shards with the per-gene statistics that training standardises with.

SHARDS = config["shards"]


rule vocab:
    input:
        tiles=expand("results/tiles/{sample}.h5", sample=SAMPLES),
        bench=expand(f"{BENCH}/{{task}}", task=BENCH_TASKS),
    output:
        visium="results/genes/visium.txt",
        xenium="results/genes/xenium.txt",
    log:
        "logs/vocab.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=memory_mb(16000),
        runtime=runtime_min(120),
    params:
        bench=folder_of("bench"),
        n_top=q(config["vocab"]["n_top_genes"]),
        tasks=" ".join(BENCH_TASKS),
    shell:
        "mint vocab --tiles {input.tiles} --bench-dir {params.bench} --bench-tasks {params.tasks} "
        "--n-top-genes {params.n_top} --out-dir results/genes 2> {log:q}"


rule shards:
    input:
        tiles=expand("results/tiles/{sample}.h5", sample=SAMPLES),
        bench=expand(f"{BENCH}/{{task}}", task=BENCH_TASKS),
        visium="results/genes/visium.txt",
        xenium="results/genes/xenium.txt",
    output:
        directory("results/shards"),
    log:
        "logs/shards.log",
    benchmark:
        "benchmarks/out/shards.tsv"
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=memory_mb(16000),
        runtime=runtime_min(720),
    params:
        bench=folder_of("bench"),
        opts=stage_opts("shards", SHARDS),
        # Leakage guard: shards refuse any tile of a bench sample.
        tasks=" ".join(BENCH_TASKS),
    shell:
        "mint shards --tiles {input.tiles} --vocab-dir results/genes --out-dir {output} "
        "--bench-dir {params.bench} --bench-tasks {params.tasks} --workers {threads} {params.opts} "
        "2> {log:q}"
