# Stage `download`: one job per selected HEST-1k sample, plus one per HEST-Bench task.
# The token for the hub is read by `mint download` from HF_TOKEN in the job's environment:
# it never appears in params, logs or outputs.


def download_source_args():
    h = config["hest"]
    if SOURCE == "hub":
        return f"--repo-id {h['repo_id']} --retries {h['retries']}"
    if SOURCE == "local":
        if not h["local_dir"]:
            raise ValueError("config 'hest.local_dir' is required when hest.source is 'local'")
        return f"--local-dir '{h['local_dir']}'" + (" --copy" if h["copy"] else "")
    return SYNTH_ARGS


def bench_source_args():
    b = config["bench_data"]
    if BENCH_SOURCE == "hub":
        return f"--repo-id {b['repo_id']} --retries {config['hest']['retries']}"
    if BENCH_SOURCE == "local":
        if not b["local_dir"]:
            raise ValueError(
                "config 'bench_data.local_dir' is required when bench_data.source is 'local'"
            )
        return f"--local-dir '{b['local_dir']}'"
    return SYNTH_ARGS


if SOURCE == "synthetic":

    rule synth_metadata:
        output:
            METADATA_CSV,
        log:
            "logs/download/synth_metadata.log",
        params:
            synth=SYNTH_ARGS,
        conda:
            ENV
        shell:
            "mint synth --metadata-only --out {HEST} {params.synth} 2> {log}"


rule download_sample:
    input:
        METADATA_CSV,
    output:
        wsi=f"{HEST}/wsis/{{sample}}.tif",
        st=f"{HEST}/st/{{sample}}.h5ad",
        meta=f"{HEST}/metadata/{{sample}}.json",
    log:
        "logs/download/{sample}.log",
    params:
        source=SOURCE,
        extra=download_source_args(),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=240,
    retries: 1
    conda:
        ENV
    shell:
        "mint download --source {params.source} --sample {wildcards.sample} --out-dir {HEST} "
        "--metadata {input} {params.extra} 2> {log}"


rule download_bench_task:
    output:
        directory(f"{BENCH}/{{task}}"),
    log:
        "logs/download/bench_{task}.log",
    params:
        source=BENCH_SOURCE,
        extra=bench_source_args(),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=240,
    conda:
        ENV
    shell:
        "mint download-bench --source {params.source} --task {wildcards.task} --out-dir {BENCH} "
        "{params.extra} 2> {log}"


rule download:
    input:
        expand(f"{HEST}/wsis/{{sample}}.tif", sample=SAMPLES),
        expand(f"{HEST}/st/{{sample}}.h5ad", sample=SAMPLES),


rule download_bench:
    input:
        expand(f"{BENCH}/{{task}}", task=BENCH_TASKS),
