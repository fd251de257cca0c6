"""The bilinear pass of a patch: mint's resampler (mint.data._resample) against OpenCV's warp.

    .venv/bin/python benchmarks/resample.py [--repeats 5] [--n 2000]

Every patch ``mint tile`` cuts at a fractional position goes through one bilinear pass from
the level it reads to 224 px (``mint.data.wsi.resample``). Until 2026-11-30 that was OpenCV's
``warpAffine`` on an RGBA region (its 3-channel warp is ~2.5x slower), so the region was widened
from the RGB tiles and the result narrowed back to RGB; OpenCV's warp is also the fallback
where the resampler is not built or has no vector path. For the source side of a 224 px patch
at 0.5 um/px on slides of 0.3 to 1.0 um/px, one thread, warm data (the same random RGB region):

* ``mint``: ``mint.data._resample.bilinear`` from the RGB region into the RGB patch;
* ``warp RGBA``: RGB -> RGBA, ``cv2.warpAffine`` (bilinear, inverse map, border replicated),
  RGBA -> RGB into the patch: the path it replaced, and the fallback;
* ``warp RGB``: ``cv2.warpAffine`` on the RGB region directly.

Accuracy on the same noise region (the worst case: neighbours differ by up to 255): the largest
difference from bilinear interpolation computed in float64 at the same sampling points, and
between mint and the warp. Figures are microseconds a patch (process CPU time, best of
``--repeats`` runs of ``--n`` patches).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

PATCH, TARGET_UM = 224, 0.5
#: slide pixel sizes (um/px) whose level-0 side for a 0.5 um/px patch is resampled
SLIDES_UM = (0.3, 0.4, 0.5, 0.65, 0.8, 1.0)


def _best(fn, n: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        c = time.process_time()
        for _ in range(n):
            fn()
        best = min(best, (time.process_time() - c) / n)
    return best * 1e6


def _row(um: float, region: np.ndarray, n: int, repeats: int) -> str:
    """The table row of one slide pixel size: timings and errors on `region`."""
    import cv2
    from alignment import bilinear_exact

    from mint.data import _resample

    step = PATCH * TARGET_UM / um / PATCH
    x = y = 1.37 + 0.5 * step - 0.5  # a fractional corner, in centre coordinates
    m = np.array([[step, 0.0, x], [0.0, step, y]])
    flags, border = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, cv2.BORDER_REPLICATE
    out = np.empty((PATCH, PATCH, 3), np.uint8)
    out4 = np.empty((PATCH, PATCH, 4), np.uint8)

    def mint():
        _resample.bilinear(region, out, x, y, step, step)

    def warp_rgba():
        wide = cv2.cvtColor(region, cv2.COLOR_RGB2RGBA)
        cv2.warpAffine(wide, m, (PATCH, PATCH), dst=out4, flags=flags, borderMode=border)
        cv2.cvtColor(out4, cv2.COLOR_RGBA2RGB, dst=out)

    def warp_rgb():
        cv2.warpAffine(region, m, (PATCH, PATCH), dst=out, flags=flags, borderMode=border)

    t = {name: _best(fn, n, repeats) for name, fn in
         (("mint", mint), ("rgba", warp_rgba), ("rgb", warp_rgb))}  # fmt: skip
    ref = bilinear_exact(region, x, y, step, step, PATCH, PATCH)
    mine = _resample.bilinear(region, out, x, y, step, step).astype(np.float64)
    theirs = cv2.warpAffine(region, m, (PATCH, PATCH), flags=flags, borderMode=border)
    return (
        f"{um:6.2f} {step * PATCH:8.1f} {t['mint']:7.1f} {t['rgba']:10.1f} {t['rgb']:9.1f} "
        f"{t['rgba'] / t['mint']:10.2f} {np.abs(mine - ref).max():9.3f} "
        f"{np.abs(theirs - ref).max():9.3f} {np.abs(mine - theirs).max():12.0f} "
        f"{'vector' if _resample.vector_path(region.shape[1], PATCH, 3, x, step) else 'plain':>7}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--n", type=int, default=2000, help="patches a run")
    args = ap.parse_args()

    import cv2

    from mint.data import wsi as wsi_mod

    if wsi_mod._resample is None:
        sys.exit("mint.data._resample is not built (pip install -e . with a C compiler)")
    cv2.setNumThreads(1)
    print(f"OpenCV {cv2.__version__}; mint's vector path (SSSE3): {wsi_mod._resample.SIMD}")
    print("us a 224 px RGB patch, one thread; max |error| vs float64 bilinear, noise region")
    print(
        f"{'um/px':>6} {'side px':>8} {'mint':>7} {'warp RGBA':>10} {'warp RGB':>9} "
        f"{'RGBA/mint':>10} {'err mint':>9} {'err warp':>9} {'|mint-warp|':>12} {'path':>7}"
    )
    rng = np.random.default_rng(0)
    warm = rng.integers(0, 256, (400, 400, 3), np.uint8)
    _row(SLIDES_UM[0], warm, 1000, 1)  # a first run in a fresh process is up to 2x slower
    for um in SLIDES_UM:
        n_src = int(np.ceil(PATCH * TARGET_UM / um)) + 3
        region = rng.integers(0, 256, (n_src, n_src, 3), np.uint8)
        print(_row(um, region, args.n, args.repeats))


if __name__ == "__main__":
    main()
