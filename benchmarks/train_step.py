"""Time one MINT training step against a plain supervised fine-tuning step, in one run.

MINT step: student with ST token (isolated by the mask-free split attention; variant
``mint-mask`` runs the dense-mask reference, ``mint-noiso`` no isolation) (+ expression heads), DINO (EMA teacher on 2 global crops,
student on 2 global + N local crops, DINO head) and feature anchoring (frozen copy), AdamW with
layer decay, EMA update. Plain step: the same backbone, one 224 px view, a linear head on the
CLS token, MSE, AdamW. Same batch of tiles, same precision. The ratio is the cost of the
method's extra terms. Weights are random (pretrained=False): speed does not depend on them.
Data loading is excluded (batches are pre-made uint8 tensors) to time the model step only.

    python benchmarks/train_step.py                                 # tiny-vit, demo settings, CPU
    python benchmarks/train_step.py --backbone timm:vit_base_patch16_224 --batch-size 64 \
        --precision bf16 --params '{}'                              # DINOv2-sized heads on a GPU
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mint.models.backbones import build_backbone  # noqa: E402
from mint.models.st_vit import STTokenViT  # noqa: E402
from mint.precision import autocast, autocast_dtype  # noqa: E402
from mint.train.augment import local_crop_size_for  # noqa: E402
from mint.train.config import TrainConfig  # noqa: E402
from mint.train.trainer import MintTrainer  # noqa: E402

DEMO_PARAMS = {
    "n_local_crops": 2,
    "dino_prototypes": 512,
    "dino_hidden_dim": 128,
    "dino_bottleneck_dim": 64,
}


def make_batch(b: int, n_local: int, g: int, loc: int, vocab: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    half = b // 2
    masks = {
        "visium": torch.zeros(b, vocab, dtype=torch.bool),
        "xenium": torch.zeros(b, vocab, dtype=torch.bool),
    }
    masks["visium"][:half] = True
    masks["xenium"][half:] = True
    return {
        "global": torch.randint(0, 256, (b, 2, 3, g, g), dtype=torch.uint8, generator=gen),
        "local": torch.randint(
            0, 256, (b, max(n_local, 1), 3, loc, loc), dtype=torch.uint8, generator=gen
        )
        if n_local
        else None,
        "targets": {m: torch.randn(b, vocab, generator=gen) for m in masks},
        "masks": masks,
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PlainStep:
    """Supervised fine-tuning: backbone -> CLS -> Linear -> MSE on one view."""

    def __init__(self, vit: nn.Module, vocab: int, cfg: TrainConfig, device: torch.device):
        self.device = device
        self.backbone = STTokenViT(vit, st_token=False).to(device)
        self.backbone.set_grad_checkpointing(cfg.grad_checkpointing)
        self.head = nn.Linear(self.backbone.embed_dim, vocab).to(device)
        params = list(self.backbone.parameters()) + list(self.head.parameters())
        self.opt = torch.optim.AdamW(
            params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=device.type == "cuda"
        )
        self.params = params
        self.amp = autocast_dtype(cfg.precision, device, cpu_autocast=True)
        self.grad_clip = cfg.grad_clip
        self.mean = torch.tensor([0.5, 0.5, 0.5], device=device).view(3, 1, 1)

    def step(self, batch: dict) -> None:
        x = batch["global"][:, 0].to(self.device, non_blocking=True).float().div_(255) - self.mean
        y = batch["targets"]["visium"].to(self.device, non_blocking=True)
        with autocast(self.amp, self.device):
            loss = ((self.head(self.backbone(x)["cls"]).float() - y) ** 2).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.opt.step()


def time_steps(fn, steps: int, warmup: int, device: torch.device) -> list[float]:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return times


def run_variant(name: str, args, cfg: TrainConfig, vit: nn.Module, device, batch) -> dict:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    vit = copy.deepcopy(vit)
    if name == "plain":
        stepper = PlainStep(vit, args.vocab, cfg, device)

        def fn():
            stepper.step(batch)
    else:
        if name not in ("mint", "mint-mask", "mint-noiso"):
            raise SystemExit(f"unknown variant {name!r}")
        vcfg = (
            TrainConfig.from_dict({**cfg.to_dict(), "st_isolation": False})
            if name == "mint-noiso"
            else cfg
        )
        trainer = MintTrainer(vcfg, {"visium": args.vocab, "xenium": args.vocab}, device, vit=vit)
        vits = [
            m
            for part in (trainer.student, trainer.teacher, getattr(trainer, "frozen", None))
            if part is not None
            for m in part.modules()
            if isinstance(m, STTokenViT)
        ]
        if name == "mint-mask":  # the dense-mask reference instead of the default split path
            for m in vits:
                if m.st_isolation:
                    m.isolation_impl = "mask"
        impls = {m.isolation_impl for m in vits}
        counter = {"i": 0}

        def fn():
            trainer.train_step(batch, counter["i"])
            counter["i"] += 1

    times = time_steps(fn, args.steps, args.warmup, device)
    med = statistics.median(times)
    res = {
        "variant": name,
        "step_s_median": med,
        "step_s_mean": statistics.fmean(times),
        "tiles_per_s": args.batch_size / med,
    }
    if name != "plain":
        res["isolation_impl"] = ",".join(sorted(i or "none" for i in impls))
    if device.type == "cuda":
        res["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="tiny-vit", help="registry name or timm:<name>")
    p.add_argument("--tiny", action="store_true", help="tiny width/depth of the architecture")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--vocab", type=int, default=2000, help="genes per expression head")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument(
        "--params",
        default=json.dumps(DEMO_PARAMS),
        help="TrainConfig overrides as JSON ('{}' = full DINOv2-sized defaults); "
        "default: the demo's DINO sizes",
    )
    p.add_argument(
        "--variants",
        default="mint,plain",
        help="comma list of mint (ST isolation, default split path), mint-mask (isolation "
        "by the dense mask), mint-noiso (no isolation), plain",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json-out", default=None)
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available() and args.device != "cpu"
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    params = json.loads(args.params)
    params.update(
        backbone=args.backbone,
        batch_size=args.batch_size,
        precision=args.precision,
        steps=max(1000, args.steps + args.warmup),
    )
    cfg = TrainConfig.from_dict(params)
    vit = build_backbone(args.backbone, pretrained=False, tiny=args.tiny)
    patch = int(vit.patch_embed.patch_size[0])
    local = cfg.local_crop_size or local_crop_size_for(patch)
    batch = make_batch(args.batch_size, cfg.n_local_crops, cfg.global_crop_size, local, args.vocab)
    n_params = sum(q.numel() for q in vit.parameters()) / 1e6
    amp = autocast_dtype(cfg.precision, device, cpu_autocast=True)
    header = (
        f"backbone {args.backbone}{' (tiny)' if args.tiny else ''} {n_params:.1f} M params | "
        f"device {torch.cuda.get_device_name(0) if cuda else 'cpu'} | precision "
        f"{'bf16' if amp == torch.bfloat16 else 'fp32'} | batch {args.batch_size} tiles | crops 2x{cfg.global_crop_size} + "
        f"{cfg.n_local_crops}x{local} | DINO K={cfg.dino_prototypes} | threads "
        f"{torch.get_num_threads()}"
    )
    print(header, flush=True)
    results = []
    for name in args.variants.split(","):
        r = run_variant(name.strip(), args, cfg, vit, device, batch)
        results.append(r)
        mem = f"  peak {r['peak_mem_gib']:.2f} GiB" if "peak_mem_gib" in r else ""
        print(
            f"{r['variant']:<10} {r['step_s_median'] * 1e3:9.1f} ms/step  "
            f"{r['tiles_per_s']:8.1f} tiles/s{mem}",
            flush=True,
        )
    by = {r["variant"]: r for r in results}
    summary = {"header": header, "results": results}
    if "mint" in by and "mint-mask" in by:
        r = by["mint-mask"]["step_s_median"] / by["mint"]["step_s_median"]
        summary["ratio_mask_over_split"] = r
        mem = ""
        if "peak_mem_gib" in by["mint"]:
            m = by["mint-mask"]["peak_mem_gib"] / by["mint"]["peak_mem_gib"]
            summary["peak_mem_mask_over_split"] = m
            mem = f", peak memory {m:.2f}"
        print(f"ST isolation, dense mask / split (no mask): step time {r:.2f}{mem}", flush=True)
    if "mint" in by and "plain" in by:
        ratio = by["mint"]["step_s_median"] / by["plain"]["step_s_median"]
        summary["ratio_mint_over_plain"] = ratio
        print(f"ratio MINT / plain step time: {ratio:.2f}", flush=True)
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
