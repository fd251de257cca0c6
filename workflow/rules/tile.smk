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
    conda:
        ENV
    threads: TILE["threads"]
    resources:
        mem_mb=scaled(TILE["mem_mb"]),
        runtime=lambda wc, attempt: 120 * attempt,
    params:
        hest=folder_of("wsi", up=2),
        opts=(
            f"--patch-size {TILE['patch_size_px']} --pixel-size {TILE['pixel_size_um']} "
            f"--min-tissue {TILE['min_tissue_fraction']} --xenium-target {TILE['xenium_target']} "
            f"--min-qv {TILE['min_qv']}"
            + ("" if TILE["drop_controls"] else " --keep-controls")
        ),
    shell:
        "mint tile --sample {wildcards.sample} --hest-dir {params.hest} --metadata {input.metadata} "
        "--out {output} {params.opts} --threads {threads} 2> {log}"


rule tile:
    input:
        expand("results/tiles/{sample}.h5", sample=SAMPLES),
