"""`mint embed`'s loader: uint8 batches normalised on the device give the encoder's own outputs.

The fast path (patches at the model's input size: workers ship uint8, the device normalises
the whole batch, outputs leave the device every FLUSH_BATCHES batches) must write exactly what
the per-image eval transform gives; patches of another size still go through the per-image
transform (resize) in the workers.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from mint.bench.data import BenchSample
from mint.bench.embed import FLUSH_BATCHES, EmbedConfig, _BatchNormalise, embed_sample
from mint.models.encoder import build_encoder


def _patches(path, n: int, size: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    with h5py.File(path, "w") as f:
        f["img"] = imgs
        f["coords"] = np.arange(2 * n).reshape(n, 2)
        f["barcode"] = np.array([f"B{i}".encode() for i in range(n)]).reshape(n, 1)
    return imgs


@pytest.mark.parametrize(("size", "workers"), [(224, 0), (224, 1), (160, 0)])
def test_embed_sample_equals_per_image_transform(tmp_path, size, workers):
    torch.manual_seed(0)
    enc = build_encoder("tiny-vit", pretrained=False).eval()
    n, batch = 2 * FLUSH_BATCHES + 3, 2  # several flushes and a short last batch
    imgs = _patches(tmp_path / "p.h5", n, size)
    fast = _BatchNormalise.make(enc.transform(), imgs.shape, "cpu")
    assert (fast is not None) == (size == enc.img_size)
    sample = BenchSample("S1", tmp_path / "p.h5", tmp_path / "e.h5ad")
    cfg = EmbedConfig(batch_size=batch, num_workers=workers, device="cpu")
    embed_sample(enc, sample, "T", tmp_path / "out.h5", "fp", "tiny-vit", cfg, "cpu")
    tf = enc.transform()
    with torch.inference_mode():
        ref = enc(torch.stack([tf(im) for im in imgs]))
    with h5py.File(tmp_path / "out.h5", "r") as f:
        for k in ("cls", "patch_mean"):
            assert np.abs(f[k][:] - ref[k].numpy()).max() <= 1e-5, k
