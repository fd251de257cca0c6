# Stage `train`: one MINT fine-tuning run per entry of train.runs. A GPU rule: the number of
# GPUs (and nodes) comes from config and starts torchrun; training resumes from the latest
# checkpoint in results/models/{run}/checkpoints when a preempted job is requeued.

TRAIN = config["train"]


rule train_run:
    input:
        shards="results/shards",
        base=[PRETRAIN_CKPT] if PRETRAIN_CKPT else [],
    output:
        model="results/models/{run}/model.safetensors",
        config="results/models/{run}/config.json",
        metrics="results/models/{run}/metrics.csv",
    log:
        "logs/train/{run}.log",
    benchmark:
        "benchmarks/out/train/{run}.tsv"
    conda:
        ENV
    threads: TRAIN["threads"]
    resources:
        mem_mb=scaled(TRAIN["mem_mb"]),
        runtime=TRAIN["runtime"],
        gpu=TRAIN["gpus"],
        nodes=TRAIN["nodes"],
    params:
        hp=lambda wc: train_params(wc.run),
        # torchrun's process count follows the GPUs the job actually gets (profile may override)
        launcher=lambda wc, resources: torch_launcher(resources.gpu, resources.nodes),
    shell:
        "{params.launcher} train --index {input.shards}/index.json "
        "--out-dir results/models/{wildcards.run} --params '{params.hp}' 2> {log}"


rule train:
    input:
        expand("results/models/{run}/model.safetensors", run=RUNS),
