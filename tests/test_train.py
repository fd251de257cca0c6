"""Training parts: config, losses, DINO, EMA, crops, optimiser groups, data stream (CPU, fast)."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import webdataset as wds
from helpers import TINY_MODEL

from mint.errors import MintError
from mint.models.backbones import build_backbone
from mint.models.st_vit import STTokenViT
from mint.train.augment import MultiCrop, local_crop_size_for
from mint.train.config import TrainConfig
from mint.train.data import TrainStream, ValStream, in_order, make_loader, read_index
from mint.train.dino import (
    DINOHead,
    DINOLoss,
    cosine_momentum,
    ema_update,
    teacher_temperature,
)
from mint.train.losses import FrozenAnchor, anchor_loss, masked_mse
from mint.train.optim import WarmupCosine
from mint.train.trainer import MintTrainer

torch.set_num_threads(1)

SMALL = {
    **TINY_MODEL,
    "global_crop_size": 64,
    "n_local_crops": 2,
    "num_workers": 0,
    "shuffle_buffer": 8,
}


# the size of this module's `shards` fixture (tests/conftest.py)
TOY_SHARDS = dict(n_train=48, n_val=10, samples_per_shard=8, image_size=64)


# -- config ---------------------------------------------------------------------------------
def test_config_defaults_unknown_keys_and_types():
    cfg = TrainConfig.from_json('{"steps": 100, "lr": 1, "global_crop_scale": [0.4, 1]}')
    assert cfg.steps == 100 and cfg.lr == 1.0 and cfg.global_crop_scale == (0.4, 1.0)
    assert cfg.resolved_warmup_steps == 10 and cfg.resolved_teacher_temp_warmup_steps == 30
    assert cfg.keep_checkpoints is False
    with pytest.raises(MintError, match="bogus_key"):
        TrainConfig.from_json('{"steps": 1, "bogus_key": 3}')
    with pytest.raises(MintError, match="steps must be an integer"):
        TrainConfig.from_json('{"steps": "many"}')
    with pytest.raises(MintError, match="precision"):
        TrainConfig.from_json('{"precision": "fp8"}')
    with pytest.raises(MintError, match="teacher_temp was renamed teacher_temp_start"):
        TrainConfig.from_json('{"teacher_temp": 0.04}')
    with pytest.raises(MintError, match="not valid JSON"):
        TrainConfig.from_json("{steps: 1}")
    # the demo defaults of config/demo.yaml are all accepted
    demo = {
        "steps": 150,
        "batch_size": 16,
        "lr": 2.0e-4,
        "head_lr": 2.0e-3,
        "warmup_steps": 15,
        "n_local_crops": 2,
        "dino_prototypes": 512,
        "dino_hidden_dim": 128,
        "dino_bottleneck_dim": 64,
        "num_workers": 0,
        "checkpoint_every": 50,
        "log_every": 5,
        "val_every": 50,
        "backbone": "tiny-vit",
    }
    assert TrainConfig.from_dict(demo).to_dict()["warmup_steps"] == 15


# -- losses ---------------------------------------------------------------------------------
def test_one_autocast_policy_for_training_and_bench_embedding():
    """mint.precision is the policy of both: training forces bf16 even on CPU (CPU autocast), the
    HEST-Bench embedding never autocasts off the GPU (HEST's torch.cuda.amp.autocast); fp32 and a
    CPU "auto" are full precision for both."""
    from mint.precision import autocast, autocast_dtype

    assert autocast_dtype("bf16", "cpu", cpu_autocast=True) == torch.bfloat16
    assert autocast_dtype("bf16", "cpu", cpu_autocast=False) is None
    assert autocast_dtype("fp16", "cuda:0", cpu_autocast=False) == torch.float16
    assert autocast_dtype("bf16", "cuda", cpu_autocast=False) == torch.bfloat16
    for cpu_autocast in (True, False):
        assert autocast_dtype("fp32", "cuda", cpu_autocast=cpu_autocast) is None
        assert autocast_dtype("auto", "cpu", cpu_autocast=cpu_autocast) is None
    with autocast(torch.bfloat16, "cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast(None, "cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_masked_mse_matches_direct_computation():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(5, 7, generator=g, requires_grad=True)
    target = torch.randn(5, 7, generator=g)
    mask = torch.rand(5, 7, generator=g) > 0.4
    loss, count = masked_mse(pred, target, mask)
    direct = ((pred - target)[mask] ** 2).mean()
    torch.testing.assert_close(loss, direct)
    assert int(count) == int(mask.sum())
    empty, n = masked_mse(pred, target, torch.zeros_like(mask))
    assert float(empty.detach()) == 0.0 and int(n) == 0
    empty.backward()  # still part of the graph
    assert torch.count_nonzero(pred.grad) == 0


def test_anchor_loss_and_frozen_copy():
    a = torch.randn(4, 8)
    assert float(anchor_loss(a, a)) == pytest.approx(0.0, abs=1e-6)
    assert float(anchor_loss(a, -a)) == pytest.approx(2.0, abs=1e-6)
    b = torch.randn(4, 8)
    torch.testing.assert_close(anchor_loss(a, b), (1 - F.cosine_similarity(a, b, dim=-1)).mean())
    vit = build_backbone("tiny-vit", pretrained=False, tiny=True)
    frozen = FrozenAnchor(vit).train()
    assert not frozen.training and not frozen.vit.training
    assert all(not p.requires_grad for p in frozen.parameters())
    x = torch.randn(2, 3, 224, 224, requires_grad=True)
    out = frozen(x, patch_tokens=True)
    assert out["cls"].shape == (2, 32) and not out["cls"].requires_grad
    assert out["patches"].shape == (2, 196, 32)


def test_dino_loss_and_centering_match_direct_computation():
    g = torch.Generator().manual_seed(1)
    b, k, n_crops, tt, ts = 3, 7, 4, 0.05, 0.1
    s = torch.randn(n_crops * b, k, generator=g)
    t = torch.randn(2 * b, k, generator=g)
    loss_fn = DINOLoss(k, student_temp=ts, center_momentum=0.8)
    loss_fn.center.copy_(torch.randn(1, k, generator=g))
    c0 = loss_fn.center.clone()
    got = loss_fn(s, t, teacher_temp_now=tt, n_crops=n_crops)
    terms = []
    for i in range(2):
        for v in range(n_crops):
            if v == i:
                continue
            per_sample = []
            for j in range(b):
                q = torch.softmax((t[i * b + j] - c0[0]) / tt, dim=-1)
                logp = torch.log_softmax(s[v * b + j] / ts, dim=-1)
                per_sample.append(-(q * logp).sum())
            terms.append(torch.stack(per_sample).mean())
    torch.testing.assert_close(got, torch.stack(terms).mean())
    got2, stats = loss_fn.loss_and_stats(s, t, teacher_temp_now=tt, n_crops=n_crops)
    torch.testing.assert_close(got2, got)
    q = torch.softmax((t - c0) / tt, dim=-1)
    h = -torch.special.xlogy(q, q).sum(-1).mean()
    torch.testing.assert_close(stats["teacher_entropy"], h)
    torch.testing.assert_close(stats["dino_kl"], got - h)
    qm = q.mean(0)
    torch.testing.assert_close(
        stats["teacher_marginal_entropy"], -torch.special.xlogy(qm, qm).sum()
    )
    loss_fn.update_center(t)
    torch.testing.assert_close(loss_fn.center, c0 * 0.8 + t.mean(0, keepdim=True) * 0.2)


def test_dino_head_prototypes_have_unit_norm_and_schedules():
    head = DINOHead(12, out_dim=10, hidden_dim=16, bottleneck_dim=6)
    x = torch.randn(3, 12)
    y = head(x)
    assert y.shape == (3, 10)
    assert float(y.detach().abs().max()) <= 1.0 + 1e-5  # cosine between unit vectors
    with torch.no_grad():
        head.prototypes.mul_(torch.rand(10, 1) + 0.5)  # rescaling a prototype changes nothing
    torch.testing.assert_close(head(x), y)
    assert len([m for m in head.mlp if isinstance(m, torch.nn.Linear)]) == 3
    assert cosine_momentum(0, 100, 0.992, 1.0) == pytest.approx(0.992)
    assert cosine_momentum(100, 100, 0.992, 1.0) == pytest.approx(1.0)
    assert cosine_momentum(50, 100, 0.992, 1.0) == pytest.approx(0.996)
    assert teacher_temperature(0, 0.04, 0.07, 30) == pytest.approx(0.04)
    assert teacher_temperature(15, 0.04, 0.07, 30) == pytest.approx(0.055)
    assert teacher_temperature(99, 0.04, 0.07, 30) == pytest.approx(0.07)


def test_ema_update():
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    teacher = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    ema_update(teacher, student, 0.9)
    for k, v in teacher.state_dict().items():
        torch.testing.assert_close(v, 0.9 * before[k] + 0.1 * student.state_dict()[k])


# -- crops ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name,patch,local", [("uni2-h", 14, 98), ("uni", 16, 96)])
def test_multicrop_shapes_for_patch_14_and_16(name, patch, local):
    assert local_crop_size_for(patch) == local
    crops = MultiCrop(224, local_crop_size_for(patch), n_global=2, n_local=3)
    img = torch.randint(0, 256, (3, 224, 224), dtype=torch.uint8)
    g, loc = crops(img, np.random.default_rng(0))
    assert g.shape == (2, 3, 224, 224) and g.dtype == torch.uint8
    assert loc.shape == (3, 3, local, local)
    g2, loc2 = crops(img, np.random.default_rng(0))  # a pure function of the generator
    assert torch.equal(g, g2) and torch.equal(loc, loc2)
    model = STTokenViT(build_backbone(name, pretrained=False, tiny=True)).eval()
    with torch.no_grad():
        out = model(loc.float() / 255, return_tokens=True)
    assert out["patch_tokens"].shape[1] == (local // patch) ** 2


# -- optimiser ------------------------------------------------------------------------------
def test_param_groups_layer_decay_and_no_weight_decay():
    cfg = TrainConfig.from_dict(
        {**SMALL, "lr": 1.0, "head_lr": 5.0, "dino_head_lr": 7.0, "layer_decay": 0.5}
    )
    vit = build_backbone("tiny-vit", pretrained=False, tiny=True)  # depth 2
    trainer = MintTrainer(cfg, {"visium": 5, "xenium": 3}, vit=vit)
    lr_of, wd_of = {}, {}
    for g in trainer.optimizer.param_groups:
        for p in g["params"]:
            lr_of[id(p)], wd_of[id(p)] = g["base_lr"], g["weight_decay"]
    s = trainer.student
    v = s.backbone.vit
    assert lr_of[id(v.patch_embed.proj.weight)] == pytest.approx(0.5**3)
    assert lr_of[id(v.blocks[0].attn.qkv.weight)] == pytest.approx(0.5**2)
    assert lr_of[id(v.blocks[1].mlp.fc1.weight)] == pytest.approx(0.5)
    assert lr_of[id(v.norm.weight)] == pytest.approx(1.0)
    assert lr_of[id(s.backbone.st_token)] == 5.0 and wd_of[id(s.backbone.st_token)] == 0
    assert lr_of[id(s.heads["visium"].linear.weight)] == 5.0
    assert lr_of[id(s.dino_head.prototypes)] == 7.0  # its own lr: a fresh head must move
    for p in (v.pos_embed, v.cls_token, v.reg_token, v.blocks[0].attn.qkv.bias, v.norm.weight):
        assert wd_of[id(p)] == 0.0
    assert wd_of[id(v.blocks[0].attn.qkv.weight)] == cfg.weight_decay
    sched = WarmupCosine(warmup=10, total=110)
    assert sched(0) == pytest.approx(0.1) and sched(9) == pytest.approx(1.0)
    assert sched(10) == pytest.approx(1.0) and sched(60) == pytest.approx(0.5)
    assert sched(110) == pytest.approx(0.0, abs=1e-9)


# -- DINO last layer: frozen for the first epoch ----------------------------------------------
def test_freeze_last_layer_defaults_to_one_epoch():
    cfg = TrainConfig.from_dict({**SMALL, "steps": 1000})  # batch_size 4
    assert cfg.resolved_freeze_last_layer_steps(40) == 10
    assert cfg.resolved_freeze_last_layer_steps(41) == 11  # a partial batch still counts
    assert cfg.resolved_freeze_last_layer_steps(41, world_size=2) == 6  # global batch 8
    assert cfg.resolved_freeze_last_layer_steps(None) == 0  # no index: nothing frozen
    explicit = TrainConfig.from_dict({**SMALL, "freeze_last_layer_steps": 3})
    assert explicit.resolved_freeze_last_layer_steps(40, world_size=4) == 3


def test_last_layer_frozen_during_first_epoch_only(shards):
    index = read_index(shards)  # 48 training tiles, batch 4: one epoch is 12 steps
    cfg = TrainConfig.from_dict({**SMALL, "steps": 100, "w_anchor": 0})
    vit = build_backbone("tiny-vit", pretrained=False, tiny=True)
    t = MintTrainer(cfg, index.vocab_sizes, vit=vit, n_train=index.n_train)
    assert t.freeze_last_layer_steps == 12
    batch = next(iter(TrainStream(index, t.multicrop(), 4, shuffle_buffer=0)))
    protos = t.student.dino_head.prototypes
    before = protos.detach().clone()
    t.train_step(batch, 11)
    assert torch.equal(protos.detach(), before)
    t.train_step(batch, 12)
    assert not torch.equal(protos.detach(), before)


# -- ablations: a weight of 0 removes the term and its compute ------------------------------
def test_zero_weights_remove_modules_and_views(shards):
    index = read_index(shards)
    vit = build_backbone("tiny-vit", pretrained=False, tiny=True)
    t = MintTrainer(
        TrainConfig.from_dict({**SMALL, "w_dino": 0, "w_xenium": 0}), index.vocab_sizes, vit=vit
    )
    assert t.teacher is None and t.student.dino_head is None and t.n_global == 1
    assert t.n_local == 0 and list(t.student.heads) == ["visium"] and t.frozen is not None
    crops = t.multicrop()
    batch = next(iter(TrainStream(index, crops, 4, shuffle_buffer=0)))
    assert batch["global"].shape[1] == 1 and batch["local"] is None
    parts = t.train_step(batch, 0)
    assert set(parts) == {"loss", "loss_visium", "loss_anchor"}  # no DINO statistics
    t2 = MintTrainer(
        TrainConfig.from_dict({**SMALL, "w_anchor": 0, "w_visium": 0}),
        index.vocab_sizes,
        vit=build_backbone("tiny-vit", pretrained=False, tiny=True),
    )
    assert t2.frozen is None and list(t2.student.heads) == ["xenium"] and t2.teacher is not None
    batch = next(iter(TrainStream(index, t2.multicrop(), 4, shuffle_buffer=0)))
    assert batch["global"].shape[1] == 2 and batch["local"].shape[1] == 2
    parts = t2.train_step(batch, 0)
    assert set(parts) == {
        "loss",
        "loss_xenium",
        "loss_dino",
        "teacher_entropy",
        "dino_kl",
        "teacher_marginal_entropy",
    }


# -- data -----------------------------------------------------------------------------------
def test_batches_standardise_targets_and_mix_modalities(shards):
    index = read_index(shards)
    crops = MultiCrop(64, 32, n_global=2, n_local=2)
    batch = next(iter(TrainStream(index, crops, 8, shuffle_buffer=0)))
    assert batch["global"].shape == (8, 2, 3, 64, 64)
    assert batch["local"].shape == (8, 2, 3, 32, 32)
    assert batch["targets"]["visium"].shape == (8, 24)
    assert batch["targets"]["xenium"].shape == (8, 12)
    mods = [index.modalities[i] for i in batch["modality"]]
    assert set(mods) == {"visium", "xenium"}
    for i, m in enumerate(mods):
        other = "xenium" if m == "visium" else "visium"
        assert not batch["masks"][other][i].any() and batch["masks"][m][i].any()
    # compare one sample against its raw shard content
    raws = {
        r["__key__"]: r
        for r in wds.tarfile_to_samples()(iter([{"url": s.path} for s in index.shards]))
    }
    i, key = 0, batch["keys"][0]
    raw = raws[key]
    m = json.loads(raw["json"])["modality"]
    expr = np.load(io.BytesIO(raw["expr.npy"])).astype(np.float32)
    mask = np.load(io.BytesIO(raw["mask.npy"]))
    want = (expr - index.mean[m]) / index.std[m]
    got = batch["targets"][m][i].numpy()
    np.testing.assert_allclose(got[mask], want[mask], rtol=1e-5, atol=1e-5)
    assert np.array_equal(batch["masks"][m][i].numpy(), mask)
    # validation: every val tile exactly once, whole tile only
    val = list(make_loader(ValStream(index, crops, 4), 0))
    assert sum(len(b["keys"]) for b in val) == index.n_val
    assert val[0]["global"].shape[1:] == (1, 3, 64, 64) and val[0]["local"] is None


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_resumes_at_any_batch(shards, workers):
    index = read_index(shards)
    crops = MultiCrop(32, 16, n_global=2, n_local=1)
    full = make_loader(TrainStream(index, crops, 4, seed=3, shuffle_buffer=6), workers)
    it = in_order(full)
    ref = [next(it) for _ in range(16)]
    assert [b["index"] for b in ref] == list(range(16))  # > one epoch per worker
    del it
    keys = [k for b in ref[:12] for k in b["keys"]]
    assert len(set(keys)) == 48  # the first epoch covers every training tile once
    start = 13
    resumed = in_order(
        make_loader(
            TrainStream(index, crops, 4, seed=3, shuffle_buffer=6, start_batch=start), workers
        ),
        start,
    )
    for j in range(start, 16):
        b = next(resumed)
        assert b["keys"] == ref[j]["keys"]
        assert torch.equal(b["global"], ref[j]["global"]) and torch.equal(
            b["local"], ref[j]["local"]
        )
    del resumed


def test_bad_shard_input_names_sample_and_file(tmp_path, shards):
    with pytest.raises(MintError, match="index.json not found"):
        read_index(tmp_path / "index.json")
    bad = json.loads(shards.read_text())
    bad["stats"]["visium"]["mean"] = [0.0]
    p = shards.parent / "bad_index.json"
    p.write_text(json.dumps(bad))
    with pytest.raises(MintError, match="stats.visium"):
        read_index(p)
    assert math.isfinite(read_index(shards).std["visium"].min())
