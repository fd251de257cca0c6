"""Ground truth for the tiling and WSI-reader tests: a texture defined in micrometres, the
ideal patch centred anywhere on it, the sub-pixel shift between two patches, and exact
bilinear interpolation."""

from __future__ import annotations

import cv2
import numpy as np

PATCH = 224
TARGET_UM = 0.5


def offset_xy(a: np.ndarray, b: np.ndarray, upsample: int = 20) -> tuple[float, float]:
    """Shift (dx, dy) in pixels of RGB image `b` relative to `a` (b(p) ~ a(p - d)).

    Windowed cross-correlation, refined to 1/`upsample` px with a matrix DFT around the peak.
    Not ``cv2.phaseCorrelate``: on the smooth test texture (a few plane waves) phase correlation
    whitens the spectrum, so the many empty frequency bins (leakage, uint8 rounding) dominate
    and it misses true shifts by 0.3-5 px; OpenCV also pads 224 px to a 225-point DFT, which
    biases every estimate by 0.5 px. The Hanning window removes the border discontinuity; the
    correlation is divided by the window's own autocorrelation, otherwise the shrinking overlap
    pulls the peak towards zero (-0.25 px at a true 5 px shift).
    """
    ga = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY).astype(np.float32)
    gb = cv2.cvtColor(b, cv2.COLOR_RGB2GRAY).astype(np.float32)
    h, w = ga.shape
    win = cv2.createHanningWindow((w, h), cv2.CV_32F)
    fa = np.fft.fft2((ga - ga.mean()) * win)
    fb = np.fft.fft2((gb - gb.mean()) * win)
    fw = np.fft.fft2(win)
    cross, wcross = fb * np.conj(fa), fw * np.conj(fw)
    wcc = np.fft.ifft2(wcross).real
    cc = np.fft.ifft2(cross).real / np.maximum(wcc, 0.05 * wcc.max())
    # Integer peak within a quarter of the image (beyond that the overlap is too small).
    sy = np.fft.fftfreq(h, 1 / h)[:, None]
    sx = np.fft.fftfreq(w, 1 / w)[None, :]
    cc[(np.abs(sy) > h // 4) | (np.abs(sx) > w // 4)] = -np.inf
    iy, ix = np.unravel_index(np.argmax(cc), cc.shape)
    steps = np.arange(-1.5, 1.5 + 1e-9, 1 / upsample)
    oy, ox = sy[iy, 0] + steps, sx[0, ix] + steps
    ey = np.exp(2j * np.pi * np.outer(oy, np.fft.fftfreq(h)))
    ex = np.exp(2j * np.pi * np.outer(np.fft.fftfreq(w), ox))
    fine = (ey @ cross @ ex).real / (ey @ wcross @ ex).real
    jy, jx = np.unravel_index(np.argmax(fine), fine.shape)
    return float(ox[jx]), float(oy[jy])


def offset_px(a: np.ndarray, b: np.ndarray) -> float:
    """Length of the sub-pixel shift between two RGB images (see :func:`offset_xy`)."""
    return float(np.hypot(*offset_xy(a, b)))


def render_um(y_um: np.ndarray, x_um: np.ndarray, seed: int = 0) -> np.ndarray:
    """The texture at points (y_um x x_um grid); plane waves evaluated separably (fast)."""
    rng = np.random.default_rng(seed)
    y = np.asarray(y_um, np.float64)[:, None]
    x = np.asarray(x_um, np.float64)[None, :]
    out = np.empty((y.shape[0], x.shape[1], 3), np.float32)
    for c in range(3):
        acc = np.full(out.shape[:2], 128.0)
        for _ in range(6):
            period = rng.uniform(6, 40)
            theta = rng.uniform(0, np.pi)
            phase = rng.uniform(0, 2 * np.pi)
            k = 2 * np.pi / period
            # sin(a + b) = sin a cos b + cos a sin b: two outer products instead of H*W sines.
            ax, by = k * np.cos(theta) * x, k * np.sin(theta) * y + phase
            acc += 20 * (np.sin(ax) * np.cos(by) + np.cos(ax) * np.sin(by))
        out[..., c] = acc
    return np.clip(out, 0, 255).astype(np.uint8)


def truth_patch(cx_um: float, cy_um: float, seed: int = 0, supersample: int = 4) -> np.ndarray:
    """Ground truth: the PATCH x PATCH patch at TARGET_UM centred exactly on (cx_um, cy_um).

    Cropped from a high-resolution rendering (TARGET_UM / supersample per pixel) centred on the
    real centre, then area-averaged to the target grid, i.e. what an ideal scanner would give.
    """
    n = PATCH * supersample
    step = TARGET_UM / supersample
    g = (np.arange(n) + 0.5) * step - PATCH * TARGET_UM / 2
    hi = render_um(cy_um + g, cx_um + g, seed)
    return cv2.resize(hi, (PATCH, PATCH), interpolation=cv2.INTER_AREA)


#: Largest |mint's resampler - bilinear_exact|: 0.5 for rounding to uint8, plus the weights'
#: quantisation (1/8192 px across, 1/32768 px down) and the intermediate rounding; measured up
#: to 0.524 on noise.
BILINEAR_BOUND = 0.53


def bilinear_exact(img: np.ndarray, x: float, y: float, sx: float, sy: float, oh: int, ow: int):
    """Bilinear interpolation of uint8 `img` in float64, the reference of mint's resampler:
    output (u, v) samples centre coordinates (x + u * sx, y + v * sy), the border repeated
    (clamped indices). Returns (oh, ow, channels) float64."""
    img = img.reshape(img.shape[0], img.shape[1], -1).astype(np.float64)
    h, w = img.shape[:2]
    px, py = x + np.arange(ow) * sx, y + np.arange(oh) * sy
    x0, y0 = np.floor(px), np.floor(py)
    fx, fy = (px - x0)[None, :, None], (py - y0)[:, None, None]
    cx0, cx1 = np.clip(x0, 0, w - 1).astype(int), np.clip(x0 + 1, 0, w - 1).astype(int)
    cy0, cy1 = np.clip(y0, 0, h - 1).astype(int), np.clip(y0 + 1, 0, h - 1).astype(int)
    top = img[cy0][:, cx0] * (1 - fx) + img[cy0][:, cx1] * fx
    bottom = img[cy1][:, cx0] * (1 - fx) + img[cy1][:, cx1] * fx
    return top * (1 - fy) + bottom * fy
