"""A timm VisionTransformer with one extra learnable "ST" token, without changing timm's code.

Token order: `[CLS, registers..., ST, patches...]`. The wrapper repeats timm's own
`forward_features` steps (patch_embed -> _pos_embed -> patch_drop -> norm_pre -> blocks -> norm)
and slips the ST token in right after the positional embedding, so it has no position of its own
and timm's position-embedding resampling (which relies on `num_prefix_tokens`) is untouched.

Initialisation: the ST token starts as the CLS token *as it enters the blocks*. For ViTs whose
CLS token receives a position embedding (`no_embed_class=False`), that is `cls_token +
pos_embed[:, 0]`; for `no_embed_class=True` it is `cls_token` itself. Either way the ST token's
first input equals the CLS token's, so it starts from the pretrained summary token.

`st_isolation=True` makes sure that no token except the ST token itself attends to the ST token.
CLS, register and patch outputs are then exactly those of the unwrapped model at initialisation
(the pretrained representation is untouched at step 0), while the ST token still reads every
token. Two equivalent implementations (`isolation_impl`):

* ``split`` (the default whenever the blocks are timm's standard ``Block``/``Attention``): inside
  the blocks the ST token sits *last*, so the other tokens are a contiguous slice; they attend
  among themselves in one ``scaled_dot_product_attention`` call without a mask, and the ST query
  attends to every key in a second, one-query call (both on views of the same q/k/v, no copies).
  A dense float mask rules out PyTorch's Flash-attention kernel on GPU; this path keeps it. The
  token order seen from outside (``[CLS, registers..., ST, patches...]``) is restored after the
  final norm; attention without position terms does not care about order inside the blocks.
* ``mask``: a dense float mask (0 / -inf) passed to each block as ``attn_mask`` (any timm block
  that takes one); the reference the ``split`` path is tested against.

The wrapper switches timm's dynamic image size on (patch embedding in NHWC, position
embedding resampled per input size) so that DINO's small local crops run through any ViT; at the
model's native size the resampling is an identity and the result is unchanged.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from mint.errors import MintError


def enable_dynamic_img_size(vit: nn.Module) -> None:
    """Let `vit` take any input size divisible by its patch size (as timm's own flag does)."""
    if getattr(vit, "dynamic_img_size", False):
        return
    from timm.layers import Format

    pe = vit.patch_embed
    pe.strict_img_size = False
    pe.flatten = False
    pe.output_fmt = Format.NHWC
    vit.dynamic_img_size = True


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """dtype the attention scores will have (the autocast dtype inside autocast)."""
    dev = t.device.type
    try:
        if torch.is_autocast_enabled(dev):
            return torch.get_autocast_dtype(dev)
    except (TypeError, AttributeError):  # torch < 2.4
        if dev == "cuda" and torch.is_autocast_enabled():
            return torch.get_autocast_gpu_dtype()
    return t.dtype


def _check_plain_vit(vit: nn.Module) -> None:
    """Subclasses of timm's VisionTransformer with their own token logic or head (distilled
    ViTs' distillation token, for one) would not be reproduced exactly: refuse them."""
    from timm.models.vision_transformer import VisionTransformer

    if type(vit) is not VisionTransformer and isinstance(vit, VisionTransformer):
        raise MintError(
            f"backbone {type(vit).__name__}: subclasses of timm's VisionTransformer are not "
            "supported (their forward differs from VisionTransformer's)"
        )


def _blocks_take_mask(vit: nn.Module) -> bool:
    return all("attn_mask" in inspect.signature(b.forward).parameters for b in vit.blocks)


def _blocks_splittable(vit: nn.Module) -> bool:
    """True when every block runs timm's own Block and Attention forward (the split path
    repeats exactly those steps; a subclass or another block type could do something else)."""
    try:
        from timm.layers import Attention
        from timm.models.vision_transformer import Block
    except ImportError:  # pragma: no cover - timm without these names
        return False
    return all(
        type(b).forward is Block.forward
        and isinstance(getattr(b, "attn", None), Attention)
        and type(b.attn).forward is Attention.forward
        for b in vit.blocks
    )


def _split_attention(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm ``Attention.forward`` for a sequence whose LAST token is the ST token: the others
    attend to all keys but the ST key, the ST query to every key. Two fused SDPA calls, no
    mask; q/k/v slices are views of the one qkv projection."""
    b, n, _ = x.shape
    gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
    qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    p = attn.attn_drop.p if attn.training else 0.0
    m = n - 1
    rest = F.scaled_dot_product_attention(q[:, :, :m], k[:, :, :m], v[:, :, :m], dropout_p=p)
    st = F.scaled_dot_product_attention(q[:, :, m:], k, v, dropout_p=p)
    x = torch.cat([rest, st], dim=2).transpose(1, 2).reshape(b, n, -1)
    x = attn.norm(x)
    if gate is not None:
        x = x * gate
    return attn.proj_drop(attn.proj(x))


def _split_block(blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm ``Block.forward`` with :func:`_split_attention` in place of its attention."""
    x = x + blk.drop_path1(blk.ls1(_split_attention(blk.attn, blk.norm1(x))))
    return x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))


class STTokenViT(nn.Module):
    """Wraps a timm VisionTransformer; `forward` returns a dict of pooled outputs.

    Args:
        vit: a timm VisionTransformer (any: registers, no_embed_class, SwiGLU, layer scale).
        st_token: insert the ST token (False = plain ViT through the same code path).
        st_isolation: only the ST token attends to the ST token.
        isolation_impl: ``auto`` (``split`` when the blocks allow it, else ``mask``), ``split``
            or ``mask`` (see the module docstring); the outputs are the same.
    """

    def __init__(
        self,
        vit: nn.Module,
        st_token: bool = True,
        st_isolation: bool = False,
        isolation_impl: str = "auto",
    ) -> None:
        super().__init__()
        self.vit = vit
        self.has_st = bool(st_token)
        self.st_isolation = bool(st_isolation) and self.has_st
        self.grad_checkpointing = False
        _check_plain_vit(vit)
        enable_dynamic_img_size(vit)
        self.isolation_impl = self._resolve_impl(isolation_impl) if self.st_isolation else ""
        # PatchDropout (if any) runs before the ST token is inserted: its prefix count stays right.
        self.num_prefix_tokens = int(vit.num_prefix_tokens)
        self.has_class_token = bool(getattr(vit, "has_class_token", vit.cls_token is not None))
        self.embed_dim = int(vit.embed_dim)
        self.patch_size = int(vit.patch_embed.patch_size[0])
        if self.has_st:
            self.st_token = nn.Parameter(self._initial_st())
        else:
            self.register_parameter("st_token", None)
        self._mask_cache: dict[tuple, torch.Tensor] = {}

    # -- set-up ----------------------------------------------------------------------------
    def _resolve_impl(self, impl: str) -> str:
        name = type(self.vit).__name__
        if impl not in ("auto", "split", "mask"):
            raise MintError(
                f"backbone {name}: isolation_impl must be auto, split or mask: {impl!r}"
            )
        split_ok = _blocks_splittable(self.vit)
        if impl == "auto":
            impl = "split" if split_ok else "mask"
        if impl == "split" and not split_ok:
            raise MintError(
                f"backbone {name}: isolation_impl split needs timm's standard Block/Attention"
            )
        if impl == "mask" and not _blocks_take_mask(self.vit):
            raise MintError(
                f"backbone {name}: st_isolation needs timm blocks whose forward "
                "takes attn_mask (timm >= 1.0.16); set st_isolation false"
            )
        return impl

    @torch.no_grad()
    def _initial_st(self) -> torch.Tensor:
        vit = self.vit
        if vit.cls_token is not None:
            st = vit.cls_token.detach().clone()
            if vit.pos_embed is not None and not vit.no_embed_class:
                st = st + vit.pos_embed[:, :1].detach()
            return st
        st = torch.empty(1, 1, self.embed_dim)
        nn.init.trunc_normal_(st, std=0.02)
        return st

    @property
    def st_index(self) -> int:
        """Position of the ST token in the sequence (after CLS and registers)."""
        return self.num_prefix_tokens

    @property
    def patch_start(self) -> int:
        return self.num_prefix_tokens + (1 if self.has_st else 0)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def token_layout(self) -> dict:
        n_reg = int(getattr(self.vit, "num_reg_tokens", 0))
        order = (["cls"] if self.has_class_token else []) + ["reg"] * n_reg
        if self.has_st:
            order.append("st")
        order.append("patches")
        return {
            "order": order,
            "num_prefix_tokens": self.num_prefix_tokens,
            "num_reg_tokens": n_reg,
            "st_index": self.st_index if self.has_st else None,
            "patch_start": self.patch_start,
            "no_embed_class": bool(self.vit.no_embed_class),
            "st_isolation": self.st_isolation,
        }

    def _isolation_mask(self, n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (n, device, dtype)
        mask = self._mask_cache.get(key)
        if mask is None:
            mask = torch.zeros(n, n, device=device, dtype=dtype)
            s = self.st_index
            mask[:, s] = float("-inf")
            mask[s, s] = 0.0
            if len(self._mask_cache) > 8:  # global and local crop sizes alternate: keep a few
                self._mask_cache.clear()
            self._mask_cache[key] = mask
        return mask

    # -- forward ---------------------------------------------------------------------------
    def forward_tokens(
        self, x: torch.Tensor, norm: bool = True
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """All output tokens [B, N, D] and the patch grid (h, w); `norm=False` stops before the
        final norm (where timm's `features_only` / eva's segmentation encoder reads them)."""
        vit = self.vit
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        t = vit.patch_embed(x)
        t = vit._pos_embed(t)  # includes pos_drop
        t = vit.patch_drop(t)
        p = self.num_prefix_tokens
        split = self.st_isolation and self.isolation_impl == "split"
        if self.has_st:
            st = self.st_token.to(t.dtype).expand(t.shape[0], -1, -1)
            # The split path keeps ST last inside the blocks (see the module docstring).
            t = torch.cat([t, st], dim=1) if split else torch.cat([t[:, :p], st, t[:, p:]], dim=1)
        t = vit.norm_pre(t)
        use_ckpt = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        if split:
            for blk in vit.blocks:
                if use_ckpt:
                    t = checkpoint(_split_block, blk, t, use_reentrant=False)
                else:
                    t = _split_block(blk, t)
            t = vit.norm(t)
            return torch.cat([t[:, :p], t[:, -1:], t[:, p:-1]], dim=1), grid
        mask = None
        if self.st_isolation:
            mask = self._isolation_mask(t.shape[1], t.device, _compute_dtype(t))
        for blk in vit.blocks:
            if use_ckpt:
                if mask is None:
                    t = checkpoint(blk, t, use_reentrant=False)
                else:
                    t = checkpoint(blk, t, attn_mask=mask, use_reentrant=False)
            elif mask is None:
                t = blk(t)
            else:
                t = blk(t, attn_mask=mask)
        if norm:
            t = vit.norm(t)
        return t, grid

    def pooled(self, tokens: torch.Tensor) -> torch.Tensor:
        """timm's own pooled feature (`forward_head(pre_logits=True)`) of the token sequence
        without the ST token: the class token for `global_pool` "token" or "" (Virchow2's hub
        config), else timm's pool (avg / max / attention pool), then `fc_norm` and `head_drop`,
        so every timm ViT gives the feature its authors defined and no parameter sits unused."""
        vit = self.vit
        if self.has_st:
            s = self.st_index
            tokens = torch.cat([tokens[:, :s], tokens[:, s + 1 :]], dim=1)
        if vit.attn_pool is None and vit.global_pool in ("token", ""):
            # "" has no pooled feature in timm: CLS, or the patch mean without a class token
            p = self.num_prefix_tokens
            x = tokens[:, 0] if self.has_class_token else tokens[:, p:].mean(dim=1)
        else:
            x = vit.pool(tokens)
        return vit.head_drop(vit.fc_norm(x))

    def forward(self, x: torch.Tensor, return_tokens: bool = False) -> dict[str, torch.Tensor]:
        tokens, grid = self.forward_tokens(x)
        patches = tokens[:, self.patch_start :]
        out: dict[str, torch.Tensor] = {"patch_mean": patches.mean(dim=1)}
        # `cls`: the model's summary feature, i.e. timm's pooled output (CLS for token pooling).
        out["cls"] = self.pooled(tokens)
        if self.has_st:
            out["st"] = tokens[:, self.st_index]
        if return_tokens:
            out["tokens"] = tokens
            out["patch_tokens"] = patches
            out["grid"] = torch.tensor(grid)
        return out
