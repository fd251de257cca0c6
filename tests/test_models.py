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


# --------------------------------------------------------------------------- exact timm backbones
def _tiny_timm_vit(**kw):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0)
    args.update(kw)
    return VisionTransformer(**args).eval()


@pytest.mark.parametrize(
    "kw",
    [
        {"global_pool": "avg", "fc_norm": True},  # LayerNorm after mean pooling (norm = Identity)
        {"global_pool": "map", "class_token": False},  # attention pooling (SigLIP-style)
        {"global_pool": "avg", "class_token": False, "reg_tokens": 2},
        {"global_pool": "token", "reg_tokens": 4},
    ],
)
def test_cls_is_timms_pooled_feature_and_every_parameter_is_used(kw):
    """`cls` equals timm's `forward_head(pre_logits=True)` (fc_norm / attn_pool applied), and a
    backward reaches every parameter (no unused parameters to break DDP)."""
    vit = _tiny_timm_vit(**kw)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = vit.forward_head(vit.forward_features(x), pre_logits=True)
    wrapped = STTokenViT(copy.deepcopy(vit), st_token=False).eval()
    with torch.no_grad():
        got = wrapped(x)["cls"]
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
    st = STTokenViT(copy.deepcopy(vit), st_token=True)
    out = st(x)
    (out["cls"].sum() + out["st"].sum() + out["patch_mean"].sum()).backward()
    unused = [n for n, p in st.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, unused


def test_timm_vit_subclasses_are_refused():
    from timm.models.deit import VisionTransformerDistilled

    vit = VisionTransformerDistilled(
        img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=0
    )
    with pytest.raises(MintError, match="VisionTransformerDistilled.*not supported"):
        STTokenViT(vit)


def test_timm_backbone_runs_at_the_training_size():
    """timm's DINOv2 ViTs default to 518 px; MINT trains on 224 px tiles, so the model is built
    (and exported, and evaluated) at 224."""
    from mint.models.backbones import architecture_record

    vit = build_backbone("timm:vit_small_patch14_dinov2", pretrained=False, tiny=True)
    assert tuple(vit.patch_embed.img_size) == (224, 224)
    rec = architecture_record("timm:vit_small_patch14_dinov2", vit)
    assert rec["img_size"] == 224 and rec["model_args"]["img_size"] == 224
    enc = build_encoder("timm:vit_small_patch14_dinov2", pretrained=False)
    assert enc.img_size == 224


@pytest.mark.parametrize("name", [*sorted(BACKBONES), "timm:vit_small_patch14_reg4_dinov2"])
def test_architecture_record_rebuilds_the_real_model(name):
    """The exported architecture is the model's own (a tiny build, a timm default), so the
    state dict loads strictly into the rebuild."""
    from mint.models.backbones import architecture_record, create_architecture

    vit = build_backbone(name, pretrained=False, tiny=True)
    rec = architecture_record(name, vit)
    with torch.device("meta"):
        rebuilt = create_architecture(rec["arch"], rec["model_args"])
    ref = {k: tuple(v.shape) for k, v in vit.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    assert got == ref
    assert rec["img_size"] == int(vit.patch_embed.img_size[0])


def test_gigapath_field_of_view_is_the_trained_one():
    """GigaPath's base model keeps its authors' (and HEST's) Resize 256 + CenterCrop 224; a MINT
    model trained on whole 224 px tiles is evaluated on the whole tile."""
    from mint.models.backbones import architecture_record

    vit = build_backbone("gigapath", pretrained=False, tiny=True)
    assert architecture_record("gigapath", vit)["resize"] == 256
    rec = architecture_record("gigapath", vit, trained=True)
    assert rec["resize"] is None and rec["base_resize"] == 256


def _export_tiny(out):
    from mint.models.heads import ExpressionHeads
    from mint.train.export import export_model

    vit = build_backbone("tiny-vit", pretrained=True)
    backbone = STTokenViT(vit, st_token=True)
    heads = ExpressionHeads(backbone.embed_dim, {"visium": 3})
    stats = {"visium": {"mean": [0.0] * 3, "std": [1.0] * 3}}
    export_model(out, backbone, heads, "tiny-vit", {"visium": ["A", "B", "C"]}, stats, {}, 1)
    return out


def test_load_model_failures_are_one_line_mint_errors(tmp_path):
    import json

    from mint.models.encoder import load_model

    good = _export_tiny(tmp_path / "m")
    assert load_model(good).img_size == 224
    cases = {}
    # the recorded architecture disagrees with the weights (shape mismatch)
    d = _export_tiny(tmp_path / "shape")
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_args"]["embed_dim"] = 48
    (d / "config.json").write_text(json.dumps(cfg))
    cases["shape"] = d
    # an architecture timm refuses
    d = _export_tiny(tmp_path / "arch")
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_args"]["no_such_option"] = 1
    (d / "config.json").write_text(json.dumps(cfg))
    cases["arch"] = d
    # truncated weights
    d = _export_tiny(tmp_path / "trunc")
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 3])
    cases["trunc"] = d
    for key, d in cases.items():
        with pytest.raises(MintError) as info:
            load_model(d)
        msg = str(info.value)
        assert "\n" not in msg and str(d) in msg, (key, msg)
