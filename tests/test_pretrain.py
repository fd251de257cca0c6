"""The demo's foundation model (`mint pretrain`) and the morphology task that the synthetic
expression cannot explain (`mint.synth.morphology`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mint.errors import MintError
from mint.synth.morphology import VARIANTS, morphology_patch, pretrain_patch
from mint.synth.tissue import NuclearVariant, SlideModel, random_slide_model


# --------------------------------------------------------------------------- morphology task
def test_morphology_label_does_not_change_the_tissue_mix():
    """Expression is a function of the cell-type mix; the label must not move it."""
    for seed in range(3):
        comps, imgs = [], []
        for label in range(len(VARIANTS)):
            img, comp = morphology_patch(label, 64, 0.5, np.random.default_rng([seed]))
            comps.append(comp)
            imgs.append(img)
        for comp in comps[1:]:
            assert np.array_equal(comp, comps[0])
        # ... while the pixels do depend on the label
        assert len({img.tobytes() for img in imgs}) == len(VARIANTS)


def test_morphology_labels_are_not_predictable_from_the_tissue_mix():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    x, y = [], []
    for i in range(120):
        label = i % len(VARIANTS)
        _, comp = morphology_patch(label, 32, 0.5, np.random.default_rng([5, i]))
        x.append(comp)
        y.append(label)
    acc = cross_val_score(LogisticRegression(max_iter=1000), np.array(x), np.array(y), cv=4)
    assert acc.mean() < 0.4  # chance is 0.25


def test_nuclear_variant_changes_nuclei_only():
    tumour = random_slide_model(11, 400, 400)
    base = SlideModel(11, 400, 400, np.array([2.0, 0, 0, 0, 0]), stain=tumour.stain)
    big = SlideModel(
        base.seed,
        base.width_um,
        base.height_um,
        base.type_bias,
        stain=base.stain,
        nuclei=NuclearVariant(size=1.3, clumps=0.5),
    )
    x = np.linspace(10, 390, 50)
    assert np.array_equal(base.composition(x, x, 50)[0], big.composition(x, x, 50)[0])
    a = base.render(360, 360, 96, 96, 0.5)
    b = big.render(360, 360, 96, 96, 0.5)
    assert not np.array_equal(a, b)
    # the default variant renders exactly as before (the synthetic HEST slides are unchanged)
    same = SlideModel(base.seed, base.width_um, base.height_um, base.type_bias, stain=base.stain)
    assert np.array_equal(a, same.render(360, 360, 96, 96, 0.5))
    with pytest.raises(ValueError, match="morphology label"):
        morphology_patch(len(VARIANTS), 32, 0.5, np.random.default_rng(0))


def test_pretrain_patches_are_tissue_images():
    img = pretrain_patch(48, 0.5, np.random.default_rng(0))
    assert img.shape == (48, 48, 3) and img.dtype == np.uint8 and img.std() > 5


# --------------------------------------------------------------------------- pretraining
def test_pretrain_config_fixes_the_self_supervised_keys():
    from mint.synth.pretrain import pretrain_config

    cfg = pretrain_config({"steps": 3}, "tiny-vit")
    assert (cfg.st_token, cfg.w_visium, cfg.w_xenium, cfg.w_anchor, cfg.w_dino) == (
        False,
        0.0,
        0.0,
        0.0,
        1.0,
    )
    with pytest.raises(MintError, match="w_anchor"):
        pretrain_config({"w_anchor": 1.0}, "tiny-vit")
    with pytest.raises(MintError, match="w_dino"):
        pretrain_config({"w_dino": 0}, "tiny-vit")


def test_pretrain_writes_a_checkpoint_loadable_as_arch_at_file(tmp_path, monkeypatch):
    from mint.cli import main
    from mint.models.backbones import build_backbone, parse_spec
    from mint.models.encoder import build_encoder

    monkeypatch.chdir(tmp_path)
    params = {
        "steps": 2,
        "batch_size": 4,
        "n_local_crops": 1,
        "global_crop_size": 64,
        "local_crop_size": 32,
        "dino_prototypes": 16,
        "dino_hidden_dim": 16,
        "dino_bottleneck_dim": 8,
        "num_workers": 0,
        "checkpoint_every": 10,
        "log_every": 1,
        "lr": 1e-2,
    }
    out = tmp_path / "results/pretrain/tiny-vit.safetensors"
    rc = main(
        [
            "pretrain",
            "--out",
            str(out),
            "--arch",
            "tiny-vit",
            "--n-tiles",
            "8",
            "--params",
            json.dumps(params),
            "--device",
            "cpu",
        ]
    )
    assert rc == 0 and out.is_file()
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["train"]["w_dino"] == 1.0 and record["train"]["st_token"] is False

    spec = f"tiny-vit@{out}"
    assert parse_spec(spec).checkpoint == str(out)
    loaded = build_backbone(spec, pretrained=True)
    random_init = build_backbone("tiny-vit", pretrained=True)
    from safetensors.torch import load_file

    sd = load_file(str(out))
    assert not any(k.startswith(("backbone.", "heads.", "st_token")) for k in sd)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, sd[k]), k
    # training moved the weights away from the fixed-seed initialisation
    assert not torch.equal(loaded.blocks[0].attn.qkv.weight, random_init.blocks[0].attn.qkv.weight)
    enc = build_encoder(spec)
    assert enc.name == spec and enc(torch.zeros(1, 3, 224, 224))["cls"].shape == (1, 64)


def test_registry_name_at_file_needs_a_file(tmp_path):
    from mint.models.backbones import build_backbone, parse_spec

    with pytest.raises(MintError, match="tiny-vit@<checkpoint file>"):
        parse_spec("tiny-vit@")
    with pytest.raises(MintError, match="file not found"):
        build_backbone(f"tiny-vit@{tmp_path / 'missing.safetensors'}", pretrained=True)


def test_pretrain_refuses_bad_arguments(tmp_path):
    from mint.cli import main

    assert main(["pretrain", "--out", str(tmp_path / "x.pt")]) == 2
    assert main(["pretrain", "--out", str(tmp_path / "x.safetensors"), "--arch", "nope"]) == 2
    assert main(["pretrain", "--out", str(tmp_path / "x.safetensors"), "--params", "[1]"]) == 2
    assert not list(tmp_path.iterdir())
