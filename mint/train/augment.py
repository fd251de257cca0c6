"""Multi-crop augmentation for DINO plus the expression view, on uint8 tensors.

Random parameters come from an explicit `numpy.random.Generator` (seeded per sample from its
position in the data stream) and the image operations are torchvision.transforms.v2's functional
ops. That keeps augmentation a pure function of (seed, position): a resumed run sees the same
crops as an uninterrupted one, whatever process or worker decodes the sample.

Views (uint8 [3, S, S]; normalisation happens on the training device):

* global view 0: the whole tile (its expression label describes the whole tile) with
  label-preserving changes only: rotations by 90 degrees, flips, colour jitter, grayscale, blur.
* global view 1: random-resized crop (scale `global_crop_scale`) with the same photometric and
  dihedral changes; DINO only.
* local views: random-resized crops (scale `local_crop_scale`) at 96 px (98 for patch-14
  models), stronger blur; DINO only.

Rotations by 90 degrees and flips suit pathology: tissue has no canonical orientation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


def local_crop_size_for(patch_size: int, target: int = 96) -> int:
    """Closest multiple of the patch size to `target` (96 for patch 16/8, 98 for patch 14)."""
    return int(patch_size * max(1, round(target / patch_size)))


def random_resized_crop_box(
    rng: np.random.Generator,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a crop covering `scale` of the area with aspect ratio in `ratio`."""
    area = height * width
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        ar = math.exp(rng.uniform(*log_r))
        w = int(round(math.sqrt(target * ar)))
        h = int(round(math.sqrt(target / ar)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    side = min(height, width)  # fallback: central square
    return (height - side) // 2, (width - side) // 2, side, side


GRAY_WEIGHTS = (0.299, 0.587, 0.114)
# RGB <-> YIQ: a hue shift is a rotation of the (I, Q) plane, i.e. a linear map of RGB
_RGB2YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=np.float64
)
_YIQ2RGB = np.linalg.inv(_RGB2YIQ)


@dataclass
class Photometric:
    """Colour jitter (p), grayscale (p) and Gaussian blur (p).

    Brightness, contrast, saturation and hue (a rotation in YIQ space) are all affine maps of
    the RGB values, so they are composed (in random order) into one 3 x 3 matrix plus offset
    and applied in a single pass, clamped once at the end: about 20x cheaper than applying
    torchvision's per-op functions (hue through HSV is the slow one) with the same effect up
    to intermediate clamping.
    """

    p_jitter: float = 0.8
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.2
    hue: float = 0.04  # fraction of a full turn
    p_gray: float = 0.1
    p_blur: float = 0.2
    blur_sigma: tuple[float, float] = (0.1, 2.0)

    def colour_map(self, rng: np.random.Generator, mean_rgb: np.ndarray):
        """(A [3, 3], b [3]) of the random colour transform x -> A x + b (values in 0..1)."""
        a = np.eye(3)
        b = np.zeros(3)
        gray = np.array(GRAY_WEIGHTS)
        to_gray = np.outer(np.ones(3), gray)
        if rng.random() < self.p_jitter:
            for op in rng.permutation(4):
                if op == 0 and self.brightness > 0:
                    f = rng.uniform(1 - self.brightness, 1 + self.brightness)
                    a, b = f * a, f * b
                elif op == 1 and self.contrast > 0:
                    c = rng.uniform(1 - self.contrast, 1 + self.contrast)
                    m = gray @ (a @ mean_rgb + b)
                    a, b = c * a, c * b + (1 - c) * m
                elif op == 2 and self.saturation > 0:
                    s = rng.uniform(1 - self.saturation, 1 + self.saturation)
                    sat = s * np.eye(3) + (1 - s) * to_gray
                    a, b = sat @ a, sat @ b
                elif op == 3 and self.hue > 0:
                    t = 2 * math.pi * rng.uniform(-self.hue, self.hue)
                    rot = np.array(
                        [[1, 0, 0], [0, math.cos(t), -math.sin(t)], [0, math.sin(t), math.cos(t)]]
                    )
                    h = _YIQ2RGB @ rot @ _RGB2YIQ
                    a, b = h @ a, h @ b
        if rng.random() < self.p_gray:
            a, b = to_gray @ a, to_gray @ b
        return a, b

    def __call__(self, img: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """uint8 [3, H, W] -> uint8 [3, H, W]."""
        from torchvision.transforms.v2 import functional as F

        x = img.float().div_(255.0)
        mean_rgb = x.mean(dim=(1, 2)).double().numpy()
        a, b = self.colour_map(rng, mean_rgb)
        if not (np.allclose(a, np.eye(3)) and not b.any()):
            at = torch.from_numpy(a).float()
            bt = torch.from_numpy(b).float()
            x = torch.einsum("ij,jhw->ihw", at, x).add_(bt.view(3, 1, 1)).clamp_(0.0, 1.0)
        if rng.random() < self.p_blur:
            sigma = float(rng.uniform(*self.blur_sigma))
            k = max(3, int(2 * math.ceil(2 * sigma) + 1))
            k = min(k, (min(x.shape[-2:]) // 2) * 2 - 1)
            if k >= 3:
                x = F.gaussian_blur(x, [k, k], [sigma, sigma])
        return x.mul_(255.0).round_().to(torch.uint8)


def dihedral(img: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """One of the 8 rotations/flips of the square, uniformly."""
    k = int(rng.integers(0, 4))
    if k:
        img = torch.rot90(img, k, dims=(-2, -1))
    if rng.random() < 0.5:
        img = img.flip(-1)
    return img.contiguous()


class MultiCrop:
    """Sample -> (global views [n_global, 3, G, G], local views [n_local, 3, L, L]), uint8."""

    def __init__(
        self,
        global_size: int = 224,
        local_size: int = 96,
        n_global: int = 2,
        n_local: int = 8,
        global_scale: tuple[float, float] = (0.32, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.32),
    ) -> None:
        self.global_size = int(global_size)
        self.local_size = int(local_size)
        self.n_global = int(n_global)
        self.n_local = int(n_local)
        self.global_scale = tuple(global_scale)
        self.local_scale = tuple(local_scale)
        self.photo_global = Photometric(p_blur=0.2)
        self.photo_local = Photometric(p_blur=0.5)

    def _resized_crop(self, img, rng, scale, size) -> torch.Tensor:
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        top, left, h, w = random_resized_crop_box(rng, img.shape[-2], img.shape[-1], scale)
        return F.resized_crop(
            img, top, left, h, w, [size, size], InterpolationMode.BILINEAR, antialias=True
        )

    def whole_tile(self, img: torch.Tensor) -> torch.Tensor:
        """The tile at the global size (no crop): view 0 and the validation view."""
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        s = self.global_size
        if tuple(img.shape[-2:]) != (s, s):
            img = F.resize(img, [s, s], InterpolationMode.BILINEAR, antialias=True)
        return img

    def __call__(
        self, img: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        views = []
        for i in range(self.n_global):
            if i == 0:
                v = self.whole_tile(img)
            else:
                v = self._resized_crop(img, rng, self.global_scale, self.global_size)
            views.append(dihedral(self.photo_global(v, rng), rng))
        global_views = torch.stack(views)
        if self.n_local == 0:
            return global_views, None
        local = [
            dihedral(
                self.photo_local(
                    self._resized_crop(img, rng, self.local_scale, self.local_size), rng
                ),
                rng,
            )
            for _ in range(self.n_local)
        ]
        return global_views, torch.stack(local)


def normalize_uint8(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> float, normalised with the backbone's mean/std (on any device)."""
    x = x.float().div_(255.0)
    return (x - mean.view(3, 1, 1)) / std.view(3, 1, 1)
