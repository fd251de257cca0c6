# Stage `download`: one job per selected HEST-1k sample, plus one per HEST-Bench task.
# Real data (hub, local) comes through `mint download` / `mint download-bench`; the synthetic
# source (the demo) is written by `mint synth`, into the same files: the rules and their
# outputs are the same for every source, only the command differs.
# The token for the hub is read by `mint download` from HF_TOKEN in the job's environment:
# it never appears in params, logs or outputs.

if SOURCE == "synthetic":
    SAMPLE_CMD = (
        "mint synth samples --out {params.hest} --samples {wildcards.sample} "
        "{params.extra} 2> {log:q}"
    )
else:
    SAMPLE_CMD = DOWNLOAD_CMD

if BENCH_SOURCE == "synthetic":
    BENCH_CMD = (
        "mint synth bench --bench-out {params.bench} --bench-tasks {wildcards.task} "
        "{params.extra} 2> {log:q}"
    )
else:
    BENCH_CMD = (
        "mint download-bench --source {params.source} --task {wildcards.task} "
        "--out-dir {params.bench} {params.extra} 2> {log:q}"
    )


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
            "mint synth metadata --out {params.hest} {params.synth} 2> {log:q}"


rule download_sample:
    input:
        pinned(METADATA_CSV),
    output:
        **hest_files(patch_level=False),
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
        SAMPLE_CMD


# Xenium samples also bring their transcripts and (cell targets) the cell segmentation, which
# tiling reads: declared, so a missing or updated file is fetched again and re-tiled.
use rule download_sample as download_xenium_sample with:
    output:
        **hest_files(patch_level=True),
    wildcard_constraints:
        sample=one_of(XENIUM_SAMPLES),
    params:
        hest=folder_of("wsi", up=2, of="output"),
        source=SOURCE,
        extra=download_source_args()
        + ("" if XENIUM_CELLS or SOURCE == "synthetic" else " --no-cell-seg"),


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
        BENCH_CMD


rule download:
    input:
        expand(hest_file("wsi"), sample=SAMPLES),
        expand(hest_file("st"), sample=SAMPLES),
        expand(
            hest_file("transcripts"),
            sample=[s for s in SAMPLES if s in XENIUM_SAMPLES],
        ),


rule download_bench:
    input:
        expand(f"{BENCH}/{{task}}", task=BENCH_TASKS),
