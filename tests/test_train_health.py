"""The anti-forgetting terms do something: DINO leaves uniform collapse, anchoring limits drift,
the anchor target is the pretrained model's own output, and the pretraining / plain fine-tune
modes run end to end (CPU, tiny ViT, toy shards)."""

from __future__ import annotations

import copy
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mint.eval.drift import linear_cka
from mint.models.backbones import build_backbone
from mint.train.config import TrainConfig
from mint.train.data import TrainStream, ValStream, read_index
from mint.train.export import timm_state_dict
from mint.train.metrics import METRIC_COLUMNS, health_report
from mint.train.trainer import MintTrainer, train

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
SMALL = {
    "backbone": "tiny-vit",
    "batch_size": 8,
    "global_crop_size": 64,
    "n_local_crops": 2,
    "dino_prototypes": 64,
    "dino_hidden_dim": 32,
    "dino_bottleneck_dim": 16,
    "num_workers": 0,
    "shuffle_buffer": 16,
}
# The DINO settings the demo trains with (config/demo.yaml), so this test guards them.
DINO_KEYS = (
    "dino_head_lr",
    "teacher_temp_start",
    "teacher_temp_final",
    "teacher_temp_warmup_steps",
    "center_momentum",
    "ema_momentum",
    "ema_momentum_final",
    "freeze_last_layer_steps",
)


def demo_dino_settings() -> dict:
    defaults = yaml.safe_load((ROOT / "config/demo.yaml").read_text())["train"]["defaults"]
    return {k: defaults[k] for k in DINO_KEYS if k in defaults}


# the size of this module's `shards` fixture (tests/conftest.py)
TOY_SHARDS = dict(n_train=64, n_val=16, samples_per_shard=16, image_size=64)


def run_steps(cfg: TrainConfig, index, vit) -> tuple[MintTrainer, list[dict]]:
    t = MintTrainer(cfg, index.vocab_sizes, vit=copy.deepcopy(vit), n_train=index.n_train)
    it = iter(TrainStream(index, t.multicrop(), cfg.batch_size, cfg.seed, cfg.shuffle_buffer))
    hist = []
    for step in range(cfg.steps):
        parts = t.train_step(next(it), step)
        hist.append({k: float(v[0]) for k, v in parts.items()})
    return t, hist


@pytest.fixture(scope="module")
def pretrained_base(shards):
    """A 'pretrained' tiny ViT: short self-supervised DINO pretraining from random weights
    (the trainer's pretraining mode: no ST token, no expression heads, no anchor)."""
    index = read_index(shards)
    cfg = TrainConfig.from_dict(
        {
            **SMALL,
            **demo_dino_settings(),
            "steps": 30,
            "lr": 1e-3,
            "warmup_steps": 3,
            "st_token": False,
            "w_visium": 0,
            "w_xenium": 0,
            "w_anchor": 0,
        }
    )
    random_vit = build_backbone("tiny-vit", pretrained=False, tiny=True)
    t, _ = run_steps(cfg, index, random_vit)
    assert t.student.heads is None and t.frozen is None and not t.student.backbone.has_st
    vit = build_backbone("tiny-vit", pretrained=False, tiny=True)
    vit.load_state_dict(timm_state_dict(t.pretrained_backbone()))  # plain timm weights
    return vit


def test_dino_teacher_leaves_uniform_collapse(shards, pretrained_base):
    """MINT from a pretrained base with the demo's DINO settings: the teacher's entropy ends
    clearly below ln K. Inert DINO (the head at the backbone's lr, DINOv2's long-run EMA)
    ends at ln K."""
    index = read_index(shards)
    cfg = TrainConfig.from_dict(
        {**SMALL, **demo_dino_settings(), "steps": 30, "lr": 2e-4, "warmup_steps": 3}
    )
    _, hist = run_steps(cfg, index, pretrained_base)
    ln_k = math.log(cfg.dino_prototypes)
    end = np.mean([h["teacher_entropy"] for h in hist[-5:]])
    assert end < 0.9 * ln_k, f"teacher entropy {end:.3f} vs ln K {ln_k:.3f}"
    for h in hist:  # KL = cross-entropy - teacher entropy, never negative
        assert h["dino_kl"] == pytest.approx(h["loss_dino"] - h["teacher_entropy"], abs=1e-4)
        assert h["dino_kl"] >= -1e-4


def test_anchoring_limits_drift(shards):
    """Same seed, same data: a large anchor weight keeps the fine-tuned CLS embeddings of
    held-out tiles closer (linear CKA) to the base model's than no anchor."""
    index = read_index(shards)
    base = build_backbone("tiny-vit", pretrained=False, tiny=True)
    plain = {**SMALL, "steps": 20, "lr": 3e-3, "warmup_steps": 2, "st_token": False, "w_dino": 0}

    def cls_of(trainer: MintTrainer, vit=None) -> np.ndarray:
        out = []
        trainer.student.eval()
        for batch in ValStream(index, trainer.multicrop(), 8):
            g = batch["global"][:, 0].float().div(255)
            g = (g - trainer.mean[:, None, None]) / trainer.std[:, None, None]
            with torch.no_grad():
                if vit is None:
                    out.append(trainer.student.backbone(g)["cls"].numpy())
                else:
                    out.append(vit.forward_features(g)[:, 0].numpy())
        return np.concatenate(out)

    cka = {}
    for w in (0.0, 10.0):
        t, _ = run_steps(TrainConfig.from_dict({**plain, "w_anchor": w}), index, base)
        ref = cls_of(t, vit=copy.deepcopy(base).eval())
        cka[w] = linear_cka(ref, cls_of(t))
    assert cka[10.0] > cka[0.0] + 0.02, cka


def test_anchor_target_is_the_student_at_step_0_under_autocast(shards):
    """The frozen copy runs in the student's numerics: under bf16 autocast the anchor loss of
    an untrained student is 0 (a bf16 copy of the weights gives a visibly different target)."""
    index = read_index(shards)
    vit = build_backbone("tiny-vit", pretrained=False, tiny=True)
    cfg = TrainConfig.from_dict({**SMALL, "precision": "bf16", "w_dino": 0, "steps": 1})
    t = MintTrainer(cfg, index.vocab_sizes, vit=vit)
    assert t.amp_dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in t.frozen.parameters())
    batch = next(iter(TrainStream(index, t.multicrop(), 8, shuffle_buffer=0)))
    _, parts = t.forward_losses(batch, 0)
    assert float(parts["loss_anchor"][0]) < 1e-6


def test_patch_token_anchoring(shards):
    index = read_index(shards)
    vit = build_backbone("tiny-vit", pretrained=False, tiny=True)
    cfg = TrainConfig.from_dict({**SMALL, "anchor_patch_tokens": True, "w_dino": 0, "lr": 1e-2})
    t = MintTrainer(cfg, index.vocab_sizes, vit=vit)
    batch = next(iter(TrainStream(index, t.multicrop(), 8, shuffle_buffer=0)))
    parts = t.train_step(batch, 0)
    assert float(parts["loss_anchor_patch"][0]) < 1e-6  # step 0: identical patch tokens
    parts = t.train_step(batch, 1)
    patch = float(parts["loss_anchor_patch"][0])
    assert 0 < patch <= float(parts["loss_anchor"][0])


def test_health_flags_uniform_and_dimension_collapse():
    cfg = TrainConfig.from_dict({**SMALL})
    ln_k = math.log(cfg.dino_prototypes)

    def row(h: float, hm: float) -> dict:
        return {
            "step": 10,
            "split": "train",
            "teacher_entropy": f"{h:.6g}",
            "teacher_marginal_entropy": f"{hm:.6g}",
            "dino_kl": "0.01",
            "loss_dino": f"{h + 0.01:.6g}",
        }

    assert health_report([row(0.5 * ln_k, ln_k)], cfg)["dino"]["status"] == "ok"
    rep = health_report([row(0.5 * ln_k, ln_k), row(0.99 * ln_k, ln_k)], cfg)
    assert rep["dino"]["status"] == "uniform_collapse" and "uniform collapse" in rep["warnings"][0]
    rep = health_report([row(0.01, 0.01)], cfg)
    assert rep["dino"]["status"] == "dimension_collapse" and len(rep["warnings"]) == 1
    off = TrainConfig.from_dict({**SMALL, "w_dino": 0})
    assert health_report([], off) == {"dino": {"status": "off"}, "warnings": []}


@pytest.mark.parametrize(
    "mode",
    [
        # self-supervised DINO pretraining: no ST token, no heads, no anchor
        {"st_token": False, "w_visium": 0, "w_xenium": 0, "w_anchor": 0, "w_dino": 1},
        # plain fine-tune baseline: expression regression on CLS
        {"st_token": False, "w_dino": 0, "w_anchor": 0},
    ],
    ids=["pretrain", "plain-finetune"],
)
def test_trainer_modes_run_end_to_end(shards, tmp_path, mode):
    cfg = TrainConfig.from_dict(
        {**SMALL, **mode, "steps": 4, "log_every": 2, "val_every": 0, "checkpoint_every": 4}
    )
    out = tmp_path / "run"
    weights = tmp_path / "base.safetensors"
    assert train(cfg, shards, out, device="cpu", timm_out=weights) == out
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert list(rows[0]) == METRIC_COLUMNS
    health = json.loads((out / "health.json").read_text())
    exported = json.loads((out / "config.json").read_text())
    train_rows = [r for r in rows if r["split"] == "train"]
    if mode["w_dino"]:
        assert exported["heads"] is False and not exported["has_st"]
        assert all(r["teacher_entropy"] and r["loss_visium"] == "" for r in train_rows)
        assert health["dino"]["status"] in ("ok", "uniform_collapse", "dimension_collapse")
        assert not [r for r in rows if r["split"] == "val"]  # nothing to validate
        from safetensors.torch import load_file

        vit = build_backbone("tiny-vit", pretrained=True)  # the seeded start of the run
        before = vit.blocks[0].attn.qkv.weight.detach().clone()
        vit.load_state_dict(load_file(weights))  # strict: plain timm keys, no ST token, no heads
        assert not torch.equal(vit.blocks[0].attn.qkv.weight, before)  # the trained weights
    else:
        assert exported["heads"] is True and exported["st_source"] == "cls"
        assert all(r["teacher_entropy"] == "" and r["loss_anchor"] == "" for r in train_rows)
        assert health == {"dino": {"status": "off"}, "warnings": []}
        assert [r for r in rows if r["split"] == "val"]
