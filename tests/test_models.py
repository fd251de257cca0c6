"""Backbone registry, ST-token ViT and Encoder (CPU, tiny sizes, no network)."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from mint.errors import MintError
from mint.models.backbones import BACKBONES, build_backbone, parse_spec
from mint.models.encoder import EvalTransform, build_encoder
from mint.models.st_vit import STTokenViT

torch.set_num_threads(1)

STRUCTURE = {
    # name: (patch, registers, no_embed_class, swiglu, init_values, dynamic_img_size)
    "uni": (16, 0, False, False, 1e-5, True),
    "uni2-h": (14, 8, True, True, 1e-5, True),
    "virchow2": (14, 4, False, True, 1e-5, True),
    "h-optimus-0": (14, 4, True, True, 1e-5, False),
    "h-optimus-1": (14, 4, True, True, 1e-5, False),
    "gigapath": (16, 0, False, True, 1e-5, False),
    "tiny-vit": (16, 2, False, False, None, True),
}


def test_registry_has_the_contract_names_and_hub_ids():
    assert set(STRUCTURE) <= set(BACKBONES)
    assert BACKBONES["uni"].hub_id == "hf-hub:MahmoodLab/uni"
    assert BACKBONES["uni2-h"].hub_id == "hf-hub:MahmoodLab/UNI2-h"
    assert BACKBONES["virchow2"].hub_id == "hf-hub:paige-ai/Virchow2"
    assert BACKBONES["h-optimus-0"].hub_id == "hf-hub:bioptimus/H-optimus-0"
    assert BACKBONES["h-optimus-1"].hub_id == "hf-hub:bioptimus/H-optimus-1"
    assert BACKBONES["gigapath"].hub_id == "hf_hub:prov-gigapath/prov-gigapath"
    assert BACKBONES["h-optimus-0"].mean == (0.707223, 0.578729, 0.703617)
    assert BACKBONES["h-optimus-1"].std == (0.211883, 0.230117, 0.177517)
    assert BACKBONES["gigapath"].resize == 256
    assert BACKBONES["uni"].model_args["init_values"] == 1e-5
    assert BACKBONES["uni"].model_args["dynamic_img_size"] is True


@pytest.mark.parametrize("name", list(STRUCTURE))
def test_tiny_architectures_keep_structure_and_isolation_preserves_outputs(name):
    patch, regs, no_embed_class, swiglu, init_values, dynamic = STRUCTURE[name]
    vit = build_backbone(name, pretrained=False, tiny=True).eval()
    assert vit.embed_dim == 32 and len(vit.blocks) == 2
    assert vit.patch_embed.patch_size[0] == patch
    assert vit.num_reg_tokens == regs
    assert vit.no_embed_class == no_embed_class
    assert vit.dynamic_img_size == dynamic
    assert (type(vit.blocks[0].mlp).__name__ == "GluMlp") == swiglu
    assert isinstance(vit.blocks[0].ls1, torch.nn.Identity) == (init_values is None)
    with torch.no_grad():  # make the CLS token clearly non-trivial
        vit.cls_token.normal_()
    ref = copy.deepcopy(vit)
    model = STTokenViT(vit, st_token=True, st_isolation=True).eval()
    # ST token starts as the CLS token as it enters the blocks
    expected = ref.cls_token + (0 if ref.no_embed_class else ref.pos_embed[:, :1])
    torch.testing.assert_close(model.st_token, expected)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        want = ref.forward_features(x)
        out = model(x, return_tokens=True)
    tokens = out["tokens"]
    p = ref.num_prefix_tokens
    assert tokens.shape[1] == want.shape[1] + 1
    without_st = torch.cat([tokens[:, :p], tokens[:, p + 1 :]], dim=1)
    torch.testing.assert_close(without_st, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["cls"], want[:, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["patch_mean"], want[:, p:].mean(1), rtol=1e-5, atol=1e-5)
    assert out["st"].shape == (2, 32)
    layout = model.token_layout()
    assert layout["st_index"] == p and layout["order"].count("reg") == regs


def test_without_isolation_other_tokens_see_the_st_token():
    vit = build_backbone("tiny-vit", pretrained=False, tiny=True).eval()  # no layer scale
    with torch.no_grad():
        vit.cls_token.normal_()
    ref = copy.deepcopy(vit)
    model = STTokenViT(vit, st_isolation=False).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert not torch.allclose(model(x)["cls"], ref.forward_features(x)[:, 0], atol=1e-5)


def test_isolation_blocks_gradient_from_st_to_other_tokens():
    vit = build_backbone("tiny-vit", pretrained=False, tiny=True)
    model = STTokenViT(vit, st_isolation=True)
    out = model(torch.randn(2, 3, 64, 64))
    (out["cls"].sum() + out["patch_mean"].sum()).backward()
    assert model.st_token.grad is None or torch.count_nonzero(model.st_token.grad) == 0


def test_dynamic_sizes_local_crops_and_no_embed_class():
    # H-optimus is built with dynamic_img_size=False: the wrapper still takes 98 px crops.
    for name, local in (("h-optimus-0", 98), ("uni2-h", 98), ("uni", 96), ("gigapath", 96)):
        model = STTokenViT(build_backbone(name, pretrained=False, tiny=True), st_isolation=True)
        model.eval()
        with torch.no_grad():
            big = model(torch.randn(2, 3, 224, 224), return_tokens=True)
            small = model(torch.randn(2, 3, local, local), return_tokens=True)
        patch = model.patch_size
        assert big["patch_tokens"].shape[1] == (224 // patch) ** 2
        assert small["patch_tokens"].shape[1] == (local // patch) ** 2
        assert small["st"].shape == (2, 32)


def test_grad_checkpointing_matches_and_bf16_autocast_runs():
    torch.manual_seed(0)
    vit = build_backbone("virchow2", pretrained=False, tiny=True)
    a = STTokenViT(copy.deepcopy(vit), st_isolation=True).train()
    b = STTokenViT(copy.deepcopy(vit), st_isolation=True).train()
    b.set_grad_checkpointing(True)
    x = torch.randn(2, 3, 56, 56)
    la = a(x)["st"].pow(2).sum()
    lb = b(x)["st"].pow(2).sum()
    la.backward()
    lb.backward()
    torch.testing.assert_close(la, lb)
    torch.testing.assert_close(a.st_token.grad, b.st_token.grad)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = a(x)
    assert torch.isfinite(out["st"].float()).all()


def test_tiny_vit_is_deterministic_and_has_registers():
    a = build_backbone("tiny-vit", pretrained=True)
    torch.manual_seed(123)
    b = build_backbone("tiny-vit", pretrained=False)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    assert a.num_reg_tokens >= 1 and a.patch_embed.patch_size[0] == 16


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_timm_spec_with_local_checkpoints(tmp_path):
    from safetensors.torch import save_file

    name = "vit_tiny_patch16_224"
    src = build_backbone(f"timm:{name}", pretrained=False)
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    save_file(sd, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": sd}, tmp_path / "w.pt")
    for f in ("w.safetensors", "w.pt"):
        m = build_backbone(f"timm:{name}@{tmp_path / f}", pretrained=True)
        torch.testing.assert_close(m.pos_embed, src.pos_embed)
    # a pickle with arbitrary objects is refused (weights_only=True)
    with open(tmp_path / "evil.pt", "wb") as fh:
        pickle.dump({"x": object()}, fh)
    with pytest.raises(MintError, match="evil.pt"):
        build_backbone(f"timm:{name}@{tmp_path / 'evil.pt'}", pretrained=True)
    with pytest.raises(MintError, match="missing.pt"):
        build_backbone(f"timm:{name}@{tmp_path / 'missing.pt'}", pretrained=True)


def test_unknown_names_raise_mint_errors():
    with pytest.raises(MintError, match="nope"):
        parse_spec("nope")
    with pytest.raises(MintError, match="no_such_arch"):
        parse_spec("timm:no_such_arch")
    with pytest.raises(MintError, match="results/models/x"):
        build_encoder("results/models/x")


def test_encoder_api_and_transforms():
    enc = build_encoder("tiny-vit", pretrained=True)
    assert enc.name == "tiny-vit" and not enc.has_st
    assert enc.img_size == 224 and enc.patch_size == 16 and len(enc.mean) == 3
    img = np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    tf = enc.transform()
    x = torch.stack([tf(img), tf(Image.fromarray(img))])
    assert x.shape == (2, 3, 224, 224) and x.dtype == torch.float32
    torch.testing.assert_close(x[0], x[1])
    with torch.no_grad():
        out = enc(x)
        maps = enc.feature_maps(x)
    assert set(out) == {"cls", "patch_mean"} and out["cls"].shape == (2, enc.embed_dim)
    assert maps[0].shape == (2, enc.embed_dim, 14, 14)
    # GigaPath-style preprocessing: resize the shorter side to 256, centre-crop 224
    giga = EvalTransform(224, (0.5,) * 3, (0.5,) * 3, resize=256)
    assert giga(np.zeros((300, 400, 3), np.uint8)).shape == (3, 224, 224)
    # other sizes are resized to the model's input size
    assert tf(np.zeros((112, 112, 3), np.uint8)).shape == (3, 224, 224)
