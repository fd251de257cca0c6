# Stage `report`: one self-contained HTML page (plots embedded) comparing the base model with
# every trained run on HEST-Bench and EVA, with training curves and the sample selection.
# The same figures are registered for `snakemake --report`.
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
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=memory_mb(4000),
        runtime=runtime_min(30),
    params:
        base=q(BASE_KEY),
        runs=" ".join(RUNS),
        eva=lambda wc, input: opt("--eva", input.eva) if "eva" in input.keys() else "",
        n_tiles=q(config["report"]["n_example_tiles"]),
        pretrain=lambda wc, input: (
            opt("--pretrain", input.pretrain) if "pretrain" in input.keys() else ""
        ),
        # provenance: the settings that change results, as one hash (a param: a new value
        # reruns the report; workers, threads and memory do not)
        config_hash=results_config_hash(config),
    shell:
        "mint report --samples {input.samples:q} --leakage {input.leakage:q} "
        "--bench {input.bench:q} --bench-results {input.bench_results:q} {params.eva} "
        "--metrics {input.metrics:q} --runs {params.runs} --base {params.base} "
        "--shards {input.shards:q} --example-wsi {input.wsi:q} --example-st {input.st:q} "
        "--metadata {input.metadata:q} --n-example-tiles {params.n_tiles} "
        "--drift {input.drift:q} {params.pretrain} --config-hash {params.config_hash} "
        "--out {output.html:q} --figures-dir {output.figures:q} 2> {log:q}"
