# Stage `pretrain` (demo only, pretrain.enabled): the demo's foundation model. The registered
# architecture base_model is pretrained self-supervised with MINT's own DINO trainer on
# synthetic tiles of tissue that is neither a training nor a bench sample; its checkpoint is a
# plain timm state dict that every later stage loads as `<base_model>@<file>`.

if PRETRAIN_CKPT:

    rule pretrain:
        output:
            PRETRAIN_CKPT,
        log:
            "logs/pretrain.log",
        benchmark:
            "benchmarks/out/pretrain.tsv"
        conda:
            ENV
        threads: PRETRAIN["threads"]
        resources:
            mem_mb=memory_mb(PRETRAIN["mem_mb"]),
            runtime=runtime_min(PRETRAIN["runtime"]),
            gpu=PRETRAIN["gpus"],
        params:
            # quoted: config values never become shell syntax
            arch=q(config["base_model"]),
            opts=stage_opts("pretrain", PRETRAIN),
            hp=q(json.dumps(PRETRAIN["params"], sort_keys=True)),
        shell:
            "mint pretrain --arch {params.arch} --out {output:q} {params.opts} "
            "--params {params.hp} 2> {log:q}"
