"""Synthetic morphology that the synthetic expression cannot explain.

The synthetic HEST's expression is a function of the local cell-type mix (`mint.synth.hest`), so
a model fine-tuned on it is only asked to keep what predicts the mix. Here the label is a
*nuclear variant* (nucleus size and chromatin texture, `NuclearVariant`) drawn independently of
the tissue: every patch gets a random cell-type mix and stain from its own random stream, and
the label only changes how its nuclei look. What a model knows about these variants comes from
pretraining, and is what a plain regression fine-tune is free to forget.

Two users:

* the demo's EVA-like task (`mint eva make-synthetic`): one class per entry of `VARIANTS`,
  with per-patch jitter of size and texture so that the task is not trivially solved;
* the demo's pretraining tiles (`mint pretrain`): continuous random variants, so that the
  pretrained model has seen (and learnt) the whole range.
"""

from __future__ import annotations

import numpy as np

from mint.synth.tissue import K, NuclearVariant, SlideModel

# Class name -> the variant at the centre of that class. Size and clumps vary independently,
# so a model has to see both the nucleus size and the chromatin texture.
# Calibrated on the demo's tiny ViT: with random weights a linear probe on its CLS (or patch
# mean) is at chance (0.23-0.28 for 4 classes, 30 patches per class), because colour and tissue
# mix, which dominate such features, carry no label; only a model that learnt nuclear shape and
# texture (pretraining) can score, and only a model that kept it can keep scoring.
VARIANTS: dict[str, NuclearVariant] = {
    "fine_small": NuclearVariant(size=1.0, clumps=0.0),
    "coarse_small": NuclearVariant(size=1.0, clumps=0.7),
    "fine_large": NuclearVariant(size=1.35, clumps=0.0),
    "coarse_large": NuclearVariant(size=1.35, clumps=0.7),
}
# Per-patch jitter of the class centre: keeps the task off the ceiling.
SIZE_JITTER = 0.05  # relative
CLUMPS_JITTER = 0.1  # absolute, on the clumps contrast
# A patch's cell-type mix: scores biased by N(0, MIX_SD) per type, independent of the label.
MIX_SD = 0.6


def random_tissue(rng: np.random.Generator, nuclei: NuclearVariant) -> SlideModel:
    """Tissue with a random cell-type mix and stain (drawn before, and regardless of, `nuclei`)."""
    bias = rng.normal(0.0, MIX_SD, K).astype(np.float32)
    stain = (float(rng.uniform(0.85, 1.15)), float(rng.uniform(0.85, 1.15)))
    seed = int(rng.integers(2**31 - 1))
    return SlideModel(
        seed=seed,
        width_um=1e6,
        height_um=1e6,
        type_bias=bias,
        with_background=False,
        stain=stain,
        nuclei=nuclei,
    )


def jittered(variant: NuclearVariant, rng: np.random.Generator) -> NuclearVariant:
    size = variant.size * (1.0 + rng.uniform(-SIZE_JITTER, SIZE_JITTER))
    clumps = max(0.0, variant.clumps + rng.uniform(-CLUMPS_JITTER, CLUMPS_JITTER))
    return NuclearVariant(size=float(size), clumps=float(clumps))


def _render(
    model: SlideModel, size_px: int, pixel_size_um: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    x0 = int(rng.integers(0, 10**6))
    y0 = int(rng.integers(0, 10**6))
    img = model.render(x0, y0, int(size_px), int(size_px), float(pixel_size_um))
    side = size_px * pixel_size_um
    frac, _ = model.composition(
        np.array([(x0 + size_px / 2) * pixel_size_um]),
        np.array([(y0 + size_px / 2) * pixel_size_um]),
        radius_um=side / 2,
    )
    return img, frac[0]


def morphology_patch(
    label: int, size_px: int, pixel_size_um: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One patch of class `label` (index into `VARIANTS`): uint8 (size, size, 3) and the
    patch's cell-type fractions (K,), the quantity the synthetic expression is made of."""
    names = list(VARIANTS)
    if not 0 <= int(label) < len(names):
        raise ValueError(f"morphology label {label} not in 0..{len(names) - 1} ({names})")
    model = random_tissue(rng, NuclearVariant())
    model.nuclei = jittered(VARIANTS[names[int(label)]], rng)
    return _render(model, size_px, pixel_size_um, rng)


def pretrain_patch(size_px: int, pixel_size_um: float, rng: np.random.Generator) -> np.ndarray:
    """A patch for self-supervised pretraining: random tissue and a random nuclear variant
    spanning (and a little beyond) the range of `VARIANTS`."""
    sizes = [v.size for v in VARIANTS.values()]
    clumps = [v.clumps for v in VARIANTS.values()]
    variant = NuclearVariant(
        size=float(rng.uniform(min(sizes) * 0.95, max(sizes) * 1.05)),
        clumps=float(rng.uniform(0.0, max(clumps) * 1.15)),
    )
    model = random_tissue(rng, variant)
    return _render(model, size_px, pixel_size_um, rng)[0]
