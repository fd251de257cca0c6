# Stage `report`: one self-contained HTML page (plots embedded) comparing the base model with
# every trained run on HEST-Bench and EVA, with training curves and the sample selection.
# The same figures are registered for `snakemake --report`.

EXAMPLE_SAMPLE = SAMPLES[0]


def report_inputs(wildcards):
    inputs = {
        "samples": "results/samples.tsv",
        "leakage": "results/leakage.tsv",
        "bench": "results/bench/summary.csv",
        "metrics": expand("results/models/{run}/metrics.csv", run=RUNS),
        "shards": "results/shards",
        "wsi": f"{HEST}/wsis/{EXAMPLE_SAMPLE}.tif",
        "st": f"{HEST}/st/{EXAMPLE_SAMPLE}.h5ad",
        "metadata": METADATA_CSV,
    }
    if config["eva"]["enabled"]:
        inputs["eva"] = "results/eva/summary.csv"
    return inputs


rule report:
    input:
        unpack(report_inputs),
    output:
        html=report(
            "results/report/index.html",
            caption="../report/index.rst",
            category="MINT report",
        ),
        figures=report(
            directory("results/report/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
        ),
    log:
        "logs/report.log",
    params:
        base=BASE_KEY,
        runs=" ".join(RUNS),
        eva=lambda wc, input: f"--eva {input.eva}" if "eva" in input.keys() else "",
        n_tiles=config["report"]["n_example_tiles"],
    conda:
        ENV
    shell:
        "mint report --samples {input.samples} --leakage {input.leakage} --bench {input.bench} "
        "{params.eva} --metrics {input.metrics} --runs {params.runs} --base {params.base} "
        "--shards {input.shards} --example-wsi {input.wsi} --example-st {input.st} --metadata {input.metadata} "
        "--n-example-tiles {params.n_tiles} --out {output.html} --figures-dir {output.figures} "
        "2> {log}"
