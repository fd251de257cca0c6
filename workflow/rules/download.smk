# Stage `download`: one job per selected HEST-1k sample, plus one per HEST-Bench task.
# The token for the hub is read by `mint download` from HF_TOKEN in the job's environment:
# it never appears in params, logs or outputs.


if SOURCE == "synthetic":

    rule synth_metadata:
        output:
            METADATA_CSV,
        log:
            "logs/download/synth_metadata.log",
        conda:
            ENV
        threads: 1
        resources:
            mem_mb=1000,
            runtime=10,
        params:
            hest=folder_of(0, of="output"),
            synth=SYNTH_ARGS,
        shell:
            "mint synth --metadata-only --out {params.hest} {params.synth} 2> {log:q}"


rule download_sample:
    input:
        pinned(METADATA_CSV),
    output:
        wsi=f"{HEST}/wsis/{{sample}}.tif",
        st=f"{HEST}/st/{{sample}}.h5ad",
        meta=f"{HEST}/metadata/{{sample}}.json",
        contours=f"{HEST}/tissue_seg/{{sample}}_contours.geojson",
    log:
        "logs/download/{sample}.log",
    wildcard_constraints:
        sample=one_of(SPOT_SAMPLES),
    retries: 1
    # With --group-components sample=N (the SLURM profile), N samples' download and tile jobs
    # share one sbatch job instead of 2 x N.
    group:
        "sample"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=memory_mb(2000),
        runtime=runtime_min(240),
    params:
        hest=folder_of("wsi", up=2, of="output"),
        source=q(SOURCE),
        extra=download_source_args(),
    shell:
        DOWNLOAD_CMD


# Xenium samples also bring their transcripts and (cell targets) the cell segmentation, which
# tiling reads: declared, so a missing or updated file is fetched again and re-tiled.
XENIUM_CELLS = config["tile"]["xenium_target"] == "cells"


use rule download_sample as download_xenium_sample with:
    output:
        **(
            {"cell_seg": f"{HEST}/xenium_seg/{{sample}}_xenium_cell_seg.parquet"}
            if XENIUM_CELLS
            else {}
        ),
        wsi=f"{HEST}/wsis/{{sample}}.tif",
        st=f"{HEST}/st/{{sample}}.h5ad",
        meta=f"{HEST}/metadata/{{sample}}.json",
        contours=f"{HEST}/tissue_seg/{{sample}}_contours.geojson",
        transcripts=f"{HEST}/transcripts/{{sample}}_transcripts.parquet",
    wildcard_constraints:
        sample=one_of(XENIUM_SAMPLES),
    params:
        hest=folder_of("wsi", up=2, of="output"),
        source=SOURCE,
        extra=download_source_args() + ("" if XENIUM_CELLS else " --no-cell-seg"),


rule download_bench_task:
    output:
        directory(f"{BENCH}/{{task}}"),
    log:
        "logs/download/bench_{task}.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=memory_mb(2000),
        runtime=runtime_min(240),
    params:
        bench=folder_of(0, of="output"),
        source=q(BENCH_SOURCE),
        extra=bench_source_args(),
    shell:
        "mint download-bench --source {params.source} --task {wildcards.task} "
        "--out-dir {params.bench} {params.extra} 2> {log:q}"


rule download:
    input:
        expand(f"{HEST}/wsis/{{sample}}.tif", sample=SAMPLES),
        expand(f"{HEST}/st/{{sample}}.h5ad", sample=SAMPLES),
        expand(
            f"{HEST}/transcripts/{{sample}}_transcripts.parquet",
            sample=[s for s in SAMPLES if s in XENIUM_SAMPLES],
        ),


rule download_bench:
    input:
        expand(f"{BENCH}/{{task}}", task=BENCH_TASKS),
