"""The autocast policy: which dtype a forward runs in, for training and for embedding.

One function for both, because the two used to drift. They differ on purpose in one point, which
the caller states with `cpu_autocast`:

- training (`mint.train`) forces bf16 even on CPU when asked (`precision: bf16`; torch's CPU
  autocast supports it), so a CPU test exercises the GPU run's numerics;
- HEST-Bench embedding (`mint.bench.embed`) follows HEST, whose `torch.cuda.amp.autocast` is a
  no-op on CPU: off the GPU it always embeds in fp32.

`precision`: "fp32" (no autocast), "bf16", "fp16", or "auto" = bf16 on a bf16-capable CUDA GPU,
else fp32 (the training default; the bench resolves its "auto" per backbone before calling).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(
    precision: str, device: torch.device | str, *, cpu_autocast: bool
) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`, or None for full precision."""
    device = torch.device(device)
    if precision == "fp32":
        return None
    if device.type != "cuda" and not cpu_autocast:
        return None
    if precision == "auto":
        bf16_gpu = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16_gpu else None
    return _DTYPES[precision]


def autocast(dtype: torch.dtype | None, device: torch.device | str) -> Any:
    """Context manager: autocast to `dtype` on `device`'s type, or nothing when `dtype` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
