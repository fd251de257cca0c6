"""The mask-free ST isolation (two fused SDPA calls) equals the dense-mask forward.

The split path is the default wherever the blocks are timm's own; it must give the same tokens and
gradients as the masked reference on every ViT layout MINT meets: plain, registers,
no_embed_class, and a UNI2-like SwiGLU + layer scale + registers model.
"""

from __future__ import annotations

import copy

import pytest
import torch
from timm.layers import SwiGLUPacked
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from mint.errors import MintError
from mint.models.st_vit import STTokenViT

TINY = dict(img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=4)
VARIANTS = {
    "plain": dict(),
    "registers": dict(reg_tokens=4),
    "no_embed_class": dict(reg_tokens=2, no_embed_class=True),
    "uni2_like": dict(
        reg_tokens=8,
        no_embed_class=True,
        mlp_layer=SwiGLUPacked,
        act_layer=nn.SiLU,
        mlp_ratio=2.671875 * 2,
        init_values=0.5,
    ),
    "no_class_token": dict(class_token=False, reg_tokens=2, global_pool="avg"),
}


def _pair(kw: dict) -> tuple[STTokenViT, STTokenViT]:
    torch.manual_seed(0)
    vit = VisionTransformer(**TINY, **kw)
    split = STTokenViT(copy.deepcopy(vit), st_isolation=True, isolation_impl="split")
    with torch.no_grad():  # an ST token unlike CLS, so that isolation matters
        split.st_token.normal_(0, 1.0)
    mask = STTokenViT(copy.deepcopy(vit), st_isolation=True, isolation_impl="mask")
    mask.load_state_dict(split.state_dict())
    return split, mask


@pytest.mark.parametrize("name", sorted(VARIANTS))
@pytest.mark.parametrize("ckpt", [False, True])
def test_split_isolation_equals_masked_forward_and_backward(name: str, ckpt: bool):
    split, mask = _pair(VARIANTS[name])
    assert (split.isolation_impl, mask.isolation_impl) == ("split", "mask")
    x = torch.randn(2, 3, 32, 32)
    outs, grads = [], []
    for model in (split, mask):
        model.train()
        model.set_grad_checkpointing(ckpt)
        model.zero_grad()
        out = model(x, return_tokens=True)
        loss = sum((v.float() ** 2).mean() for k, v in out.items() if k != "grid")
        loss.backward()
        outs.append(out)
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    for key in ("tokens", "st", "cls", "patch_mean"):
        diff = (outs[0][key] - outs[1][key]).abs().max().item()
        assert diff <= 1e-5, (name, key, diff)
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        diff = (grads[0][k] - grads[1][k]).abs().max().item()
        assert diff <= 1e-5, (name, k, diff)


def test_split_isolation_keeps_pretrained_outputs_and_local_crop_sizes():
    """Non-ST outputs equal the unwrapped ViT at any input size (ST is never read by them)."""
    torch.manual_seed(0)
    vit = VisionTransformer(**TINY, reg_tokens=4, dynamic_img_size=True).eval()
    model = STTokenViT(copy.deepcopy(vit), st_isolation=True).eval()
    with torch.no_grad():
        model.st_token.normal_(0, 3.0)
    for side in (32, 16):
        x = torch.randn(2, 3, side, side)
        with torch.no_grad():
            ref = vit.forward_features(x)
            tok = model(x, return_tokens=True)["tokens"]
        s = model.st_index
        other = torch.cat([tok[:, :s], tok[:, s + 1 :]], dim=1)
        assert (other - ref).abs().max().item() <= 1e-5


class _CustomBlock(Block):
    def forward(self, x, attn_mask=None, is_causal=False):  # a block that does its own thing
        return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)


def test_auto_picks_split_for_timm_blocks_and_mask_otherwise():
    torch.manual_seed(0)
    assert STTokenViT(VisionTransformer(**TINY), st_isolation=True).isolation_impl == "split"
    custom = VisionTransformer(**TINY, block_fn=_CustomBlock)
    assert STTokenViT(custom, st_isolation=True).isolation_impl == "mask"
    with pytest.raises(MintError, match="split needs"):
        STTokenViT(custom, st_isolation=True, isolation_impl="split")
    with pytest.raises(MintError, match="isolation_impl must be"):
        STTokenViT(VisionTransformer(**TINY), st_isolation=True, isolation_impl="flash")
