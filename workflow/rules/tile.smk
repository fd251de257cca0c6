# Stage `tile`: each selected sample becomes results/tiles/{sample}.h5 (HEST patch layout plus
# expression targets). One job per sample, so slides are tiled in parallel across nodes.

TILE = config["tile"]


rule tile_sample:
    input:
        unpack(tile_inputs),
    output:
        tile_output("results/tiles/{sample}.h5"),
    log:
        "logs/tile/{sample}.log",
    benchmark:
        "benchmarks/out/tile/{sample}.tsv"
    group:
        "sample"
    conda:
        ENV
    threads: TILE["threads"]
    resources:
        mem_mb=memory_mb(TILE["mem_mb"]),
        runtime=runtime_min(120),
    params:
        hest=folder_of("wsi", up=2),
        opts=stage_opts("tile", TILE),
    shell:
        "mint tile --sample {wildcards.sample} --hest-dir {params.hest} "
        "--metadata {input.metadata:q} --out {output:q} {params.opts} --threads {threads} "
        "2> {log:q}"


rule tile:
    input:
        expand("results/tiles/{sample}.h5", sample=SAMPLES),
