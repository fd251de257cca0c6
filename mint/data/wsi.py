"""The one whole-slide-image reader of the pipeline.

Every stage that looks at slide pixels goes through :class:`WSI`, so the three rules that keep
patches honest live in one place:

* The pixel size comes from the HEST metadata (``pixel_size_um_estimated``), passed in by the
  caller. The TIFF's own resolution tags are never trusted: they are wrong for some HEST slides
  (TENX95 claims 1 um/px, the truth is 0.2125).
* A level-0 box is resampled to the requested output size by reading the *finest pyramid level
  whose downsample does not exceed the one needed* and resizing only the remaining factor (< 2
  for a /2 pyramid). Reading a 40x slide at level 0 and shrinking by 2 costs 4x the decode work.
* Memory is bounded by the requested region, never by the slide: OpenSlide decodes only the
  tiles under the region, and whole-slide views (:meth:`WSI.downscaled`) are built band by band.

Geometry is exact, fractional boxes included: output pixel u covers level-0
``[x + u * w / out_w, x + (u + 1) * w / out_w)``. The reader asks OpenSlide for the enclosing
*integer* box of the chosen level (its fast path; a fractional location would make OpenSlide
resample the whole region bilinearly) plus a one-pixel margin (more on the far side when it
shrinks by 2x or more), then places the fractional box with :func:`resample` (one bilinear
sub-pixel pass on the level's grid, after averaging whole blocks when it must shrink by 2 or
more). Spot patches need this: their centres are fractional and the source side
``224 * 0.5 / slide_um`` is rarely an integer, and snapping either to the pixel grid shifts the
patch by more than an output pixel on coarse (~1 um/px) slides. Whole-pixel boxes at the read
level (integer-aligned spots, a Xenium grid whose step is whole there) skip it: plain
crop/resize.

Pixels come straight from the TIFF tiles when the slide is a plain tiled pyramidal TIFF (HEST's
format), through :class:`mint.data.tiff_tiles.TiffTiles`, checked against OpenSlide level by
level; OpenSlide reads everything else. That reader is a part of this one, split off only for
size: nothing else opens slides.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import cv2
import numpy as np

from mint.data.tiff_tiles import TiffTiles, UseOpenSlide
from mint.errors import MintError, show

try:
    from mint.data import _resample
except ImportError:  # installed without a C compiler (setup.py): OpenCV's warp resamples
    _resample = None
#: mint's resampler where its vector path runs (x86 with SSSE3: every x86-64 CPU since about
#: 2011); elsewhere OpenCV's warp, faster than the resampler's plain C path.
_RESAMPLER = _resample is not None and _resample.SIMD
#: Why patches are resampled more slowly, for the log (once per process).
_NO_RESAMPLER = "mint.data._resample is not built (reinstall with a C compiler: pip install -e .)"
_warned_no_resampler = False

log = logging.getLogger(__name__)

#: Tolerance when comparing a level's downsample with the one needed: pyramid levels of slides
#: with odd sizes report downsamples such as 4.0003, which must still count as 4.
_LEVEL_TOLERANCE = 1e-3
_EPS = 1e-6
#: Bytes of level pixels decoded at once when building a whole-slide view.
_BAND_BYTES = 64 << 20
#: Box sizes whose read plan a WSI keeps (a tile run uses one).
_PLANS = 64


def check_pixel_size(value, sample_id: str, source: str) -> float:
    """Return `value` as a positive finite float or raise a MintError naming sample and source."""
    try:
        ps = float(value)
    except (TypeError, ValueError):
        raise MintError(
            f"{sample_id} {source}: pixel_size_um_estimated is missing or not a number ({show(value)})"
        ) from None
    if not math.isfinite(ps) or ps <= 0:
        raise MintError(
            f"{sample_id} {source}: pixel_size_um_estimated must be a positive number, got {show(value)}"
        )
    return ps


class WSI:
    """A slide opened with OpenSlide, with the pixel size from the metadata.

    Thread safety: OpenSlide handles are thread-safe and ctypes releases the GIL during
    ``read_region``, so several threads may call :meth:`read_region` on one instance.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        pixel_size_um: float,
        sample_id: str = "",
        cache_mb: int = 128,
        direct: bool = True,
    ):
        import openslide

        self.path = Path(path)
        self.sample_id = sample_id or self.path.stem
        self.pixel_size_um = check_pixel_size(pixel_size_um, self.sample_id, "metadata")
        if not self.path.is_file():
            raise MintError(f"{self.sample_id} {self.path}: slide file not found")
        try:
            self._slide = openslide.OpenSlide(str(self.path))
        except Exception as exc:  # OpenSlideUnsupportedFormatError, OpenSlideError, OSError
            raise MintError(
                f"{self.sample_id} {self.path}: cannot open slide with OpenSlide "
                f"(corrupt or not a tiled pyramidal TIFF): {' '.join(str(exc).split())}"
            ) from None
        if cache_mb:
            try:
                self._slide.set_cache(openslide.OpenSlideCache(cache_mb << 20))
            except Exception:  # older OpenSlide: keep the library's default cache
                pass
        self.width, self.height = (int(v) for v in self._slide.dimensions)
        if self.width <= 0 or self.height <= 0:
            raise MintError(f"{self.sample_id} {self.path}: slide has no pixels")
        self.level_dimensions = [tuple(int(v) for v in d) for d in self._slide.level_dimensions]
        self.level_downsamples = [float(d) for d in self._slide.level_downsamples]
        self.level_scales = [_content_scale(self.dimensions, d) for d in self.level_dimensions]
        self._plans: dict[tuple, tuple] = {}
        self._tiles_failed: TiffTiles | None = None
        self._tiles, why = (
            TiffTiles.open(self, cache_mb << 20) if direct else (None, "direct tile reads off")
        )
        if why:
            log.debug("%s: OpenSlide reads the pixels (%s)", self.sample_id, why)
        self._openslide_why = why
        _warn_if_no_resampler()

    # -- construction / context --------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, pixel_size_um: float, sample_id: str = "") -> WSI:
        return cls(path, pixel_size_um, sample_id)

    @property
    def reads_tiles_directly(self) -> bool:
        """True when pixels come from the TIFF tiles, False when OpenSlide composites them."""
        return self._tiles is not None

    @property
    def pixel_source(self) -> str:
        """Where the pixels come from, for the log: the TIFF tiles and how they are stored, or
        OpenSlide and why (a slide that misses the fast path should say so, not only be slow)."""
        tiles = self._tiles
        if tiles is not None:
            return f"the TIFF's tiles ({tiles.describe()})"
        return f"OpenSlide ({self._openslide_why})"

    def close(self) -> None:
        for name in ("_tiles", "_tiles_failed"):
            tiles = getattr(self, name, None)
            if tiles is not None:
                tiles.close()
                setattr(self, name, None)
        slide = getattr(self, "_slide", None)
        if slide is not None:
            slide.close()
            self._slide = None

    def __enter__(self) -> WSI:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"WSI({self.sample_id!r}, {self.width}x{self.height} px, {self.pixel_size_um} um/px, "
            f"levels={self.level_downsamples})"
        )

    # -- geometry -----------------------------------------------------------------------------
    @property
    def dimensions(self) -> tuple[int, int]:
        return self.width, self.height

    def best_level(self, downsample: float) -> int:
        """Finest level whose downsample is <= `downsample` (level 0 when upsampling)."""
        best = 0
        for level, ds in enumerate(self.level_downsamples):
            if ds <= downsample * (1 + _LEVEL_TOLERANCE):
                best = level
        return best

    def size_at(self, pixel_size_um: float, size_px: int) -> int:
        """Level-0 side (px) of a patch of `size_px` pixels at `pixel_size_um`."""
        return max(1, int(round(size_px * pixel_size_um / self.pixel_size_um)))

    # -- pixels -------------------------------------------------------------------------------
    def _read_level(
        self, level: int, x: int, y: int, w: int, h: int
    ) -> tuple[np.ndarray, float, float]:
        """RGB uint8 (h, w, 3) from `level` starting near level pixel (x, y); outside the
        slide is white. Read-only or reused by this thread's next read (direct tile reads):
        use it before reading again, and never write into it.

        Returns the pixels and the level coordinates of their top-left corner (exactly (x, y)
        for direct tile reads; for OpenSlide, location / reported downsample as it computes
        them, equal to (x, y) whenever the downsample is an integer).
        """
        tiles = self._tiles
        if tiles is not None:
            try:
                return tiles.read(level, int(x), int(y), int(w), int(h)), float(x), float(y)
            except UseOpenSlide:
                # A level failed its self-check: OpenSlide reads everything from now on. The
                # reader stays open until close(), for threads still inside a read; its cache
                # (up to cache_mb of decoded tiles) goes now.
                self._tiles, self._tiles_failed = None, tiles
                tiles.forget_all()
                self._openslide_why = tiles.failed
                log.warning(
                    "%s %s: OpenSlide reads the pixels from now on (%s)",
                    self.sample_id,
                    self.path,
                    tiles.failed,
                )
        return self._openslide_level(level, x, y, w, h)

    def _openslide_level(
        self, level: int, x: int, y: int, w: int, h: int
    ) -> tuple[np.ndarray, float, float]:
        ds = self.level_downsamples[level]
        loc = (int(round(x * ds)), int(round(y * ds))) if level else (int(x), int(y))
        try:
            rgba = np.asarray(self._slide.read_region(loc, level, (int(w), int(h))))
        except Exception as exc:
            raise MintError(
                f"{self.sample_id} {self.path}: cannot read pixels (corrupt slide?): "
                f"{' '.join(str(exc).split())}"
            ) from None
        alpha = rgba[..., 3]
        if alpha.min() == 255:
            return cv2.cvtColor(rgba, cv2.COLOR_RGBA2RGB), loc[0] / ds, loc[1] / ds
        # OpenSlide returns transparent pixels outside the slide (openslide-python hands them
        # back un-premultiplied): composite onto white so padding looks like glass.
        a = alpha[..., None].astype(np.uint32)
        rgb = ((rgba[..., :3].astype(np.uint32) * a + 127) // 255 + (255 - a)).clip(0, 255)
        return rgb.astype(np.uint8), loc[0] / ds, loc[1] / ds

    def read_box(
        self,
        x: float,
        y: float,
        w: float,
        h: float,
        out_w: int,
        out_h: int,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Level-0 box (x, y, w, h) resampled to (out_h, out_w, 3) uint8 RGB.

        Parts of the box outside the slide are white. Geometry is exact: output pixel u covers
        level-0 [x + u * w / out_w, x + (u + 1) * w / out_w). With `out` (a C-contiguous
        (out_h, out_w, 3) uint8 array, e.g. one slot of a batch) the patch is written there and
        `out` is returned: the resampling writes into it, saving a copy per patch.
        """
        if out is not None and (
            out.shape != (out_h, out_w, 3) or out.dtype != np.uint8 or not out.flags.c_contiguous
        ):
            raise ValueError(f"out must be C-contiguous uint8 {(out_h, out_w, 3)}, got {out.shape}")
        level, kx, ky, bw, bh, whole, ax, ay = self._plan_for(w, h, out_w, out_h)
        bx, by = x / kx, y / ky
        exact = whole and _is_int(bx) and _is_int(by)
        margin = 0 if exact else 1
        ix0 = math.floor(bx + _EPS) - margin
        iy0 = math.floor(by + _EPS) - margin
        # shrinking by a whole factor a >= 2 averages blocks of a pixels from the box's first
        # whole pixel on (see resample): the last block may reach a - 1 pixels past the box
        ix1 = math.ceil(bx + bw - _EPS) + (ax if ax > 1 else margin)
        iy1 = math.ceil(by + bh - _EPS) + (ay if ay > 1 else margin)
        region, sx, sy = self._read_level(level, ix0, iy0, ix1 - ix0, iy1 - iy0)
        # `region` may be this thread's reused buffer or a cached tile: resample never
        # returns it itself (crops are copied), so the patch is the caller's
        img = resample(region, bx - sx, by - sy, bw, bh, out_w, out_h, out)
        if out is None or img is out:
            return img
        out[...] = img
        return out

    def forget_above(self, y: float, w: float, h: float, out_w: int, out_h: int) -> None:
        """Drop the decoded tiles that no box of this size starting at level-0 row `y` or
        below can need: the rows of its level above the first row such a box reads, and the
        tiles of every other level (boxes of one size are all read from one level).

        Why: patches are read in raster order (`mint tile`), and the tile cache would
        otherwise keep every tile it decoded up to its cap, so memory grew with the slide up
        to the cap (and its slabs up to twice that); with this it holds the band of tiles the
        current rows of patches need. The boxes left all start at `y` or below, so no tile
        dropped here is needed by them again. A no-op when OpenSlide reads the pixels (its
        own cache is bounded)."""
        tiles = self._tiles
        if tiles is not None:
            level, _, ky, *_ = self._plan_for(w, h, out_w, out_h)
            # the first level row a box at y reads: its first whole pixel, less the margin
            tiles.keep_only_below(level, math.floor(y / ky + _EPS) - 1)

    def _plan_for(self, w: float, h: float, out_w: int, out_h: int) -> tuple:
        """The plan of boxes of this size (see :meth:`_plan`), from the per-size cache."""
        plan = self._plans.get((w, h, out_w, out_h))
        if plan is None:
            if len(self._plans) >= _PLANS:  # boxes of ever new sizes: keep it small
                self._plans.clear()
            plan = self._plans[w, h, out_w, out_h] = self._plan(w, h, out_w, out_h)
        return plan

    def _plan(self, w: float, h: float, out_w: int, out_h: int) -> tuple:
        """What :meth:`read_box` derives from the box size alone (level, its scales, the box
        size there, whether that size is whole, the whole parts of the shrink factors), kept
        per size: a tile run asks for thousands of boxes of one size, and working this out
        again per patch cost ~5% of a patch."""
        if w <= 0 or h <= 0 or out_w <= 0 or out_h <= 0:
            raise ValueError(f"empty box or output size: {(w, h, out_w, out_h)}")
        level = self.best_level(min(w / out_w, h / out_h))
        kx, ky = self.level_scales[level]
        bw, bh = w / kx, h / ky
        whole = _is_int(bw) and _is_int(bh)
        return level, kx, ky, bw, bh, whole, _whole_factor(bw / out_w), _whole_factor(bh / out_h)

    def read_region(self, x: float, y: float, size_src: float, out_size: int) -> np.ndarray:
        """Square level-0 box with top-left (x, y) and side `size_src`, resampled to `out_size`.

        All three may be fractional (see :meth:`read_box`).
        """
        return self.read_box(x, y, size_src, size_src, out_size, out_size)

    def downscaled(self, pixel_size_um: float, max_side: int = 16384) -> tuple[np.ndarray, float]:
        """The whole slide at (about) `pixel_size_um`, built band by band.

        Returns (image, scale) where `scale` is level-0 pixels per output pixel (same on both
        axes). The output is capped at `max_side` pixels on its long side.
        """
        scale = max(pixel_size_um / self.pixel_size_um, 1.0)
        scale = max(scale, max(self.width, self.height) / max_side)
        out_w = max(1, int(math.ceil(self.width / scale)))
        out_h = max(1, int(math.ceil(self.height / scale)))
        out = np.empty((out_h, out_w, 3), np.uint8)
        level = self.best_level(scale)
        bytes_per_out_row = out_w * 3 * (scale / self.level_downsamples[level]) ** 2
        band = max(1, int(_BAND_BYTES // max(bytes_per_out_row, 1)))
        for r0 in range(0, out_h, band):
            r1 = min(out_h, r0 + band)
            out[r0:r1] = self.read_box(
                0, r0 * scale, out_w * scale, (r1 - r0) * scale, out_w, r1 - r0
            )
        return out, scale

    def thumbnail(self, max_size: int = 1024) -> np.ndarray:
        """RGB thumbnail whose long side is `max_size` pixels (or less for small slides)."""
        scale = max(self.width, self.height) / max_size
        img, _ = self.downscaled(self.pixel_size_um * max(scale, 1.0), max_side=max_size)
        return img


def _warn_if_no_resampler() -> None:
    """Warn once per process when patches must be resampled by OpenCV's warp because the
    extension was not built (not where it was built without a vector path: nothing to fix)."""
    global _warned_no_resampler
    if _resample is None and not _warned_no_resampler:
        _warned_no_resampler = True
        log.warning("patches are resampled 2-3.5x more slowly (OpenCV's warp): %s", _NO_RESAMPLER)


def _content_scale(dims0: tuple[int, int], dims: tuple[int, int]) -> tuple[float, float]:
    """Level-0 pixels per pixel of a level, per axis, as its *content* was made.

    OpenSlide reports one downsample per level, the mean of W0 / W and H0 / H, e.g. 1.998 for a
    /2 level of an odd-sized slide (W = ceil(W0 / 2)). Pyramid writers (vips, the synthetic
    writer, scanners) shrink by an exact integer factor and only round the size, so level pixel
    j shows level-0 [r * j, r * (j + 1)). Using the reported value would shift a patch by up to
    half a level pixel towards the far edge of the slide. A level whose sizes are
    floor or ceil of W0 / r and H0 / r for an integer r counts as exactly r; anything else (a
    resized level) as W0 / W and H0 / H.
    """
    (w0, h0), (w, h) = dims0, dims
    r = round(((w0 / w) + (h0 / h)) / 2)
    if r >= 1 and w in (w0 // r, -(-w0 // r)) and h in (h0 // r, -(-h0 // r)):
        return float(r), float(r)
    return w0 / w, h0 / h


def _is_int(v: float) -> bool:
    return abs(v - round(v)) < _EPS


def resample(
    img: np.ndarray,
    fx: float,
    fy: float,
    fw: float,
    fh: float,
    out_w: int,
    out_h: int,
    dst: np.ndarray | None = None,
) -> np.ndarray:
    """Resample the box (fx, fy, fw, fh) of `img` (pixel coordinates, corners) to out size.

    `img` has 1 to 4 channels (the output has as many; slides are uint8, other types take
    OpenCV's warp) and is never returned itself or written to. One bilinear pass on the input
    grid, placed exactly: output pixel centre u + 0.5 samples input fx + (u + 0.5) * fw / out_w.
    Along an axis that shrinks by a whole factor k >= 2, k input pixels are averaged first
    (area, exact: cheap in OpenCV, the blocks start at the box's first whole pixel), so the
    bilinear pass never shrinks by 2 or more, where it would alias without bound as k grows.
    Whole-pixel boxes inside `img` then take a plain crop (copied) or `cv2.resize`; anything
    else the bilinear pass, which repeats the border outside `img`. Every path writes into
    `dst` when it is a writable C-contiguous array of the output's shape and type (the result
    is then `dst`).
    The bilinear pass is mint's resampler (:mod:`mint.data._resample`, on RGB straight into
    `dst`: 2-3.5x OpenCV's warp with the RGBA conversions it needs to be fast,
    ``benchmarks/resample.py``) where its vector path runs (x86), else OpenCV's warp on 4
    channels (its 3-channel warp is 2.5x slower); both sample the same points, and their
    outputs are within 1 of each other with OpenCV 5 (older versions quantise the warp's
    positions to 1/32 px).

    Why not area averaging down to about the output scale and then the warp (the earlier
    design): between 1x and 2x OpenCV's area resize of a fractional factor costs 8-10x the
    warp, and the two passes blur twice: against the ideal patch (the scene averaged over each
    output pixel) one bilinear pass is closer there, fine textures included. From 2x on the
    block average trades the other way: blurrier than a bilinear pass alone on detail the output
    can hold, but without its aliasing of finer detail (benchmarks/RESULTS.md). For shrinking by
    k >= 2 the input should reach k - 1 pixels past the box (read_box reads k); with less, the
    last output pixels repeat the border.
    """
    kx, ky = _whole_factor(fw / out_w), _whole_factor(fh / out_h)
    if kx > 1 or ky > 1:
        ih, iw = img.shape[:2]
        sx, nx = _blocks(fx, fw, kx, iw)
        sy, ny = _blocks(fy, fh, ky, ih)
        if nx and ny:  # else the box lies past the image's far side: all border, no blocks
            block = img[sy : sy + ny * ky, sx : sx + nx * kx]
            img = cv2.resize(block, (nx, ny), interpolation=cv2.INTER_AREA)
            fx, fy, fw, fh = (fx - sx) / kx, (fy - sy) / ky, fw / kx, fh / ky
    shape = (out_h, out_w, *img.shape[2:])
    fits = (
        dst is not None
        and dst.shape == shape
        and dst.dtype == img.dtype
        and dst.flags.c_contiguous
        and dst.flags.writeable
    )
    if _is_int(fx) and _is_int(fy) and _is_int(fw) and _is_int(fh):
        x0, y0, w, h = (int(round(v)) for v in (fx, fy, fw, fh))
        if x0 >= 0 and y0 >= 0 and x0 + w <= img.shape[1] and y0 + h <= img.shape[0]:
            crop = img[y0 : y0 + h, x0 : x0 + w]
            if (w, h) == (out_w, out_h):
                if not fits:
                    return crop.copy()
                dst[...] = crop
                return dst
            return cv2.resize(
                crop, (out_w, out_h), dst=dst if fits else None, interpolation=cv2.INTER_LINEAR
            )
    rx, ry = fw / out_w, fh / out_h
    # Output pixel centre u + 0.5 maps to fx + (u + 0.5) * rx in corner coordinates, i.e.
    # fx + (u + 0.5) * rx - 0.5 in centre-based coordinates (the resampler's and OpenCV's).
    cx, cy = fx + 0.5 * rx - 0.5, fy + 0.5 * ry - 0.5
    if _RESAMPLER and img.dtype == np.uint8:
        if not _packed(img):  # e.g. a flipped view: the resampler takes packed pixels only
            img = np.ascontiguousarray(img)
        out = dst if fits else np.empty(shape, np.uint8)
        return _resample.bilinear(img, out, cx, cy, rx, ry)
    # OpenCV's warp, on 4 channels where there are 3 and OpenCV can add the fourth (it is
    # 2.5x faster on 4)
    wide = img.ndim == 3 and img.shape[2] == 3 and img.dtype in (np.uint8, np.uint16, np.float32)
    warped = cv2.warpAffine(
        cv2.cvtColor(img, cv2.COLOR_RGB2RGBA) if wide else img,
        np.array([[rx, 0.0, cx], [0.0, ry, cy]], np.float64),
        (out_w, out_h),
        dst=None if wide or not fits else dst,
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )
    if not wide:
        return warped
    return cv2.cvtColor(warped, cv2.COLOR_RGBA2RGB, dst=dst if fits else None)


def _packed(img: np.ndarray) -> bool:
    """Whether `img`'s samples and pixels are packed and its rows in order (the resampler's
    layout: rows may be apart, as in a view of part of a tile)."""
    s, item = img.strides, img.itemsize
    c = img.shape[2] if img.ndim == 3 else 1
    ok = img.ndim in (2, 3) and (img.ndim == 2 or c == 1 or s[2] == item)
    return ok and (img.shape[1] == 1 or s[1] == c * item) and s[0] >= img.shape[1] * c * item


def _blocks(f: float, size: float, k: int, n: int) -> tuple[int, int]:
    """First input pixel and number of k-pixel blocks along one axis for the box [f, f + size)
    of an axis of n pixels: the whole axis (0, n) when k is 1 (nothing averaged; the bilinear pass
    needs the pixels on both sides of the box), else from the box's first whole pixel to the
    block holding its end, within the axis (0 blocks when the box starts past it)."""
    if k == 1:
        return 0, n
    start = min(max(0, math.floor(f + _EPS)), n)
    return start, max(0, min(math.ceil((f + size - start) / k - _EPS), (n - start) // k))


def _whole_factor(ratio: float) -> int:
    """The whole part of a shrink factor (1 when enlarging), within rounding."""
    return max(1, int(math.floor(ratio + _EPS)))
