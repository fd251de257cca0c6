# Stage `pretrain` (demo only, pretrain.enabled): the demo's foundation model. The registered
# architecture base_model is pretrained self-supervised with MINT's own DINO trainer on
# synthetic tiles of tissue that is neither a training nor a bench sample; its checkpoint is a
# plain timm state dict that every later stage loads as `<base_model>@<file>`.

import shlex

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
            mem_mb=scaled(PRETRAIN["mem_mb"]),
            runtime=PRETRAIN["runtime"],
            gpu=PRETRAIN["gpus"],
        params:
            # quoted: config values never become shell syntax
            arch=shlex.quote(config["base_model"]),
            opts=f"--n-tiles {PRETRAIN['n_tiles']} --seed {PRETRAIN['seed']}",
            hp=shlex.quote(json.dumps(PRETRAIN["params"], sort_keys=True)),
        shell:
            "mint pretrain --arch {params.arch} --out {output} {params.opts} "
            "--params {params.hp} 2> {log}"
