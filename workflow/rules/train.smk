# Stage `train`: one MINT fine-tuning run per entry of train.runs. A GPU rule: the number of
# GPUs per node and of nodes come from config 'train.gpus' / 'train.nodes' only (common.smk),
# and start the same number of torchrun processes.
#
# Preemption and time limits (see mint/train/preempt.py and mint/train/launch.py): SLURM's
# SIGUSR1 (--signal=USR1@600 in the profile, sent to every process of the job step) or SIGTERM
# reaches every rank, directly or forwarded by torchrun; each rank stops after the same step,
# rank 0 writes a checkpoint and one line to preemptions.log, and the job exits with EXIT_RESUME
# (75). Snakemake (which ignores SIGUSR1, see the Snakefile) then retries the job; the retry
# resumes from the checkpoint, bit-exactly, and does not get more memory for it.

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
    # Each time-limit stop is an attempt: enough of them to finish a long run in pieces.
    retries: TRAIN["max_resumes"]
    conda:
        ENV
    threads: TRAIN["threads"]
    resources:
        **train_gpu_resources(),
        mem_mb=train_memory_mb,
        # not grown per attempt: a resumed run continues from its checkpoint
        runtime=TRAIN["runtime"],
    params:
        hp=lambda wc: q(train_params(wc.run)),
        # the process layout is a param: the world size changes the global batch (and result)
        launcher=torch_launcher(TRAIN["gpus"], TRAIN["nodes"]),
        out=lambda wc: q(f"results/models/{wc.run}"),
    shell:
        "{params.launcher} train --index {input.shards:q}/index.json --out-dir {params.out} "
        "--params {params.hp} 2> {log:q}"


rule train:
    input:
        expand("results/models/{run}/model.safetensors", run=RUNS),
