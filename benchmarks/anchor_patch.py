"""Does anchoring the patch tokens (`anchor_patch_tokens`) pay? One MINT run per setting on the
demo shards, same seed and data, then on the held-out slides: linear CKA between the base and the
fine-tuned model's CLS and patch_mean embeddings (1 = no drift) and the held-out regression loss.

    python benchmarks/anchor_patch.py --index results/shards/index.json --crop 96 \
        --params '{"w_dino": 0}'

`--params` overrides the demo's training settings (DINO off by default here so that the anchor
term alone moves the representation); `--crop` is the global crop size (224 in the demo; smaller
keeps the run short on a 2-core box). Prints one JSON line per setting.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mint.models.backbones import build_backbone  # noqa: E402
from mint.train.augment import MultiCrop, normalize_uint8  # noqa: E402
from mint.train.config import TrainConfig  # noqa: E402
from mint.train.data import TrainStream, ValStream, make_loader, read_index  # noqa: E402
from mint.train.trainer import MintTrainer  # noqa: E402

DEMO = {
    "steps": 150,
    "batch_size": 16,
    "lr": 2e-4,
    "head_lr": 2e-3,
    "warmup_steps": 15,
    "n_local_crops": 2,
    "dino_prototypes": 512,
    "dino_hidden_dim": 128,
    "dino_bottleneck_dim": 64,
    "num_workers": 0,
    "backbone": "tiny-vit",
    "shuffle_buffer": 200,
}


def linear_cka(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean(0)
    b = b - b.mean(0)
    return float(np.linalg.norm(a.T @ b) ** 2 / (np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b)))


def embeddings(index, base, trainer) -> tuple[dict, dict]:
    """CLS and patch_mean of the held-out tiles (whole tile, 224 px) from base and student."""
    crops = MultiCrop(
        global_size=224,
        local_size=96,
        n_global=1,
        n_local=0,
        global_scale=(0.32, 1.0),
        local_scale=(0.05, 0.32),
    )
    fb: dict[str, list] = {"cls": [], "patch_mean": []}
    fs: dict[str, list] = {"cls": [], "patch_mean": []}
    base.eval()
    trainer.student.eval()
    with torch.no_grad():
        for b in ValStream(index, crops, 32):
            g = normalize_uint8(b["global"][:, 0], trainer.mean, trainer.std)
            f = base.forward_features(g)
            fb["cls"].append(f[:, 0].numpy())
            fb["patch_mean"].append(f[:, base.num_prefix_tokens :].mean(1).numpy())
            o = trainer.student.backbone(g)
            fs["cls"].append(o["cls"].numpy())
            fs["patch_mean"].append(o["patch_mean"].numpy())
    return (
        {k: np.concatenate(v) for k, v in fb.items()},
        {k: np.concatenate(v) for k, v in fs.items()},
    )


def run(index, params: dict, crop: int, patch: bool) -> dict:
    cfg = TrainConfig.from_dict(
        {
            **DEMO,
            "global_crop_size": crop,
            "local_crop_size": max(16, crop // 2 // 16 * 16),
            **params,
            "anchor_patch_tokens": patch,
        }
    )
    base = build_backbone(cfg.backbone, pretrained=True)
    t = MintTrainer(cfg, index.vocab_sizes, vit=copy.deepcopy(base), n_train=index.n_train)
    it = iter(TrainStream(index, t.multicrop(), cfg.batch_size, cfg.seed, cfg.shuffle_buffer))
    t0 = time.time()
    for step in range(cfg.steps):
        t.train_step(next(it), step)
    val = t.evaluate(make_loader(ValStream(index, t.multicrop(), 32), 0))
    fb, fs = embeddings(index, base, t)
    return {
        "anchor_patch_tokens": patch,
        "cka_cls": round(linear_cka(fb["cls"], fs["cls"]), 4),
        "cka_patch_mean": round(linear_cka(fb["patch_mean"], fs["patch_mean"]), 4),
        "val": {k: round(v, 4) for k, v in val.items()},
        "train_s": round(time.time() - t0),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--index", default="results/shards/index.json")
    ap.add_argument("--crop", type=int, default=224)
    ap.add_argument("--params", default='{"w_dino": 0}')
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    index = read_index(args.index)
    for patch in (False, True):
        print(json.dumps(run(index, json.loads(args.params), args.crop, patch)), flush=True)


if __name__ == "__main__":
    main()
