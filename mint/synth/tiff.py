"""Pyramidal tiled TIFF writer that OpenSlide reads, with memory that does not grow with the slide.

HEST ships whole-slide images as pyramidal tiled TIFFs. We write the same kind of file:
level 0 is produced tile by tile by a callback (`tile_fn`), each further level halves the
previous one (2 x 2 mean), every level is a separate top-level IFD (OpenSlide's "generic tiled
TIFF" reads those; SubIFDs it ignores), 256 px tiles, and XResolution/YResolution in pixels per
centimetre, from which OpenSlide reports `openslide.mpp-x`/`openslide.mpp-y`. Tiles are
compressed as HEST's own writer does (``hest.utils.tiff_save``, libvips ``tiffsave``): LZW
with the horizontal predictor, so that the demo, the tests and the benchmarks decode what
real HEST slides hold; ``compression`` and ``predictor`` select others (deflate, HEST's writer
before HEST-lib 1.1.0; or no predictor).

Memory: only one row of level-0 tiles is held at a time; the reduced levels are accumulated in
a temporary disk-backed array (a quarter, a sixteenth, ... of level 0), so a 100k x 100k slide
needs no more RAM than a 1k x 1k one.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import tifffile

from mint.io import atomic_path

log = logging.getLogger(__name__)

TileFn = Callable[[int, int, int, int], np.ndarray]


def default_n_levels(height: int, width: int, tile: int = 256) -> int:
    """Halve until the largest side fits in one tile (at least 2 levels for slides > 1 tile)."""
    n = 1
    h, w = height, width
    while max(h, w) > tile:
        h, w = (h + 1) // 2, (w + 1) // 2
        n += 1
    return n


def _downsample2(a: np.ndarray) -> np.ndarray:
    """2 x 2 box mean of an (H, W, 3) uint8 array; odd sides repeat their last row/column."""
    h, w = a.shape[:2]
    if h % 2 or w % 2:
        a = np.pad(a, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    s = a.reshape(a.shape[0] // 2, 2, a.shape[1] // 2, 2, 3).astype(np.uint16).sum(axis=(1, 3))
    return ((s + 2) // 4).astype(np.uint8)


def _pad_tile(t: np.ndarray, tile: int) -> np.ndarray:
    if t.shape[0] == tile and t.shape[1] == tile:
        return t
    out = np.zeros((tile, tile, 3), np.uint8)
    out[: t.shape[0], : t.shape[1]] = t
    return out


def _check_tile(t: np.ndarray, h: int, w: int, y0: int, x0: int) -> np.ndarray:
    t = np.asarray(t)
    if t.shape != (h, w, 3) or t.dtype != np.uint8:
        raise ValueError(
            f"tile_fn({y0}, {x0}, {h}, {w}) returned {t.dtype} {t.shape}, expected uint8 ({h}, {w}, 3)"
        )
    return t


def write_pyramidal_tiff(
    path: str | os.PathLike,
    height: int,
    width: int,
    tile_fn: TileFn,
    pixel_size_um: float,
    tile: int = 256,
    n_levels: int | None = None,
    compression: str = "lzw",
    predictor: bool = True,
    description: str | None = None,
) -> Path:
    """Write a pyramidal tiled RGB TIFF whose level 0 comes from `tile_fn(y0, x0, h, w)`.

    `tile_fn` must return uint8 (h, w, 3) level-0 pixels of rows y0..y0+h, columns x0..x0+w;
    it is called once per tile in row-major order. Levels halve each side. `compression` is
    "lzw" or "deflate" (with TIFF's horizontal predictor when `predictor`), or "none". The
    file is written atomically.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"{path}: empty image {height}x{width}")
    if tile % 16:
        raise ValueError("tile size must be a multiple of 16 (TIFF)")
    codecs = {"lzw": "lzw", "deflate": "adobe_deflate", "none": None}
    if compression not in codecs:
        raise ValueError(f"compression must be one of {', '.join(codecs)}, got {compression!r}")
    n_levels = n_levels or default_n_levels(height, width, tile)
    ppcm = 1e4 / float(pixel_size_um)
    path = Path(path)
    shapes = [(height, width)]
    for _ in range(1, n_levels):
        h, w = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2))

    with (
        tempfile.TemporaryDirectory(
            prefix=".pyr.", dir=path.parent if path.parent.exists() else None
        ) as td,
        atomic_path(path) as tmp,
    ):
        # Disk-backed buffers for reduced levels (filled while the level above is written).
        bufs: list[np.memmap | None] = [None]
        for lvl in range(1, n_levels):
            h, w = shapes[lvl]
            bufs.append(np.memmap(Path(td) / f"l{lvl}.raw", np.uint8, "w+", shape=(h, w, 3)))

        def level0_tiles() -> Iterator[np.ndarray]:
            for y0 in range(0, height, tile):
                h = min(tile, height - y0)
                # Render the whole strip and fill the next level BEFORE yielding its tiles:
                # tifffile stops pulling after the last tile, so work placed after the final
                # yield would never run for the bottom strip.
                strip = np.empty((h, width, 3), np.uint8)
                for x0 in range(0, width, tile):
                    w = min(tile, width - x0)
                    strip[:, x0 : x0 + w] = _check_tile(tile_fn(y0, x0, h, w), h, w, y0, x0)
                if n_levels > 1:
                    small = _downsample2(strip)
                    bufs[1][y0 // 2 : y0 // 2 + small.shape[0]] = small
                for x0 in range(0, width, tile):
                    yield _pad_tile(strip[:, x0 : x0 + tile], tile)

        def level_tiles(lvl: int) -> Iterator[np.ndarray]:
            src = bufs[lvl]
            h_l, w_l = shapes[lvl]
            for y0 in range(0, h_l, tile):
                strip = np.asarray(src[y0 : y0 + tile])
                if lvl + 1 < n_levels:
                    small = _downsample2(strip)
                    bufs[lvl + 1][y0 // 2 : y0 // 2 + small.shape[0]] = small
                for x0 in range(0, w_l, tile):
                    yield _pad_tile(strip[:, x0 : x0 + tile], tile)

        common = dict(
            dtype=np.uint8,
            photometric="rgb",
            planarconfig="contig",
            tile=(tile, tile),
            compression=codecs[compression],
            # deflate level 1 as fast as LZW; the predictor only where a codec follows
            compressionargs={"level": 1} if compression == "deflate" else None,
            predictor=bool(predictor and codecs[compression]),
            resolution=(ppcm, ppcm),
            resolutionunit="CENTIMETER",
            metadata=None,
        )
        with tifffile.TiffWriter(tmp, bigtiff=height * width * 3 > 2**31) as tw:
            tw.write(
                level0_tiles(),
                shape=(height, width, 3),
                description=description or f"MINT synthetic slide; mpp={pixel_size_um}",
                **common,
            )
            for lvl in range(1, n_levels):
                tw.write(level_tiles(lvl), shape=(*shapes[lvl], 3), subfiletype=1, **common)
        for b in bufs[1:]:
            del b
    log.debug(
        "wrote %s (%dx%d, %d levels, %.4f um/px)", path, width, height, n_levels, pixel_size_um
    )
    return path


def write_pyramidal_tiff_array(
    path: str | os.PathLike,
    img: np.ndarray,
    pixel_size_um: float,
    tile: int = 256,
    n_levels: int | None = None,
    compression: str = "lzw",
    predictor: bool = True,
) -> Path:
    """Write a small in-memory uint8 (H, W, 3) image as a pyramidal TIFF (tests, known content)."""
    img = np.ascontiguousarray(img)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"{path}: expected uint8 (H, W, 3), got {img.dtype} {img.shape}")

    def tile_fn(y0: int, x0: int, h: int, w: int) -> np.ndarray:
        return img[y0 : y0 + h, x0 : x0 + w]

    if n_levels is None:
        # OpenSlide and the tests want a pyramid even for small images.
        n_levels = max(2, default_n_levels(*img.shape[:2], tile)) if min(img.shape[:2]) >= 2 else 1
    return write_pyramidal_tiff(
        path, img.shape[0], img.shape[1], tile_fn, pixel_size_um, tile, n_levels,
        compression=compression, predictor=predictor,
    )  # fmt: skip


def level_count_for(height: int, width: int, tile: int = 256) -> int:
    """Number of levels `write_pyramidal_tiff` writes by default (for tests and logs)."""
    return default_n_levels(height, width, tile)


__all__ = [
    "write_pyramidal_tiff",
    "write_pyramidal_tiff_array",
    "default_n_levels",
    "level_count_for",
]
