# Stage `select`: the training samples and the leakage report. The DAG already knows the list
# (common.smk runs the same selection at parse time); this rule records it for the user and
# the report, with counts by technology printed to the log.


rule select:
    input:
        pinned(METADATA_CSV),
    output:
        samples="results/samples.tsv",
        leakage="results/leakage.tsv",
    log:
        "logs/select.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        source=q(SOURCE),
        filters=selection_args(),
    shell:
        "mint select --metadata {input:q} --out {output.samples} "
        "--leakage-out {output.leakage} --source {params.source} {params.filters} 2> {log:q}"
