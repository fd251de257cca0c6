"""Direct reads of a tiled pyramidal TIFF's tiles for :class:`mint.data.wsi.WSI` (its fast path).

Pixels come straight from the TIFF tiles when the slide is a plain tiled pyramidal TIFF (HEST's
format): :class:`TiffTiles` decodes each tile once, keeps the decoded tiles (RGB, as stored) in
a byte-bounded LRU cache shared by every patch and reader thread (from which the caller drops
the rows of tiles it is done with: :meth:`TiffTiles.keep_only_below`), and hands out the
requested box as a view of its tile when one tile holds it, else assembled in a buffer each
reader thread reuses. OpenSlide's ``read_region`` costs about as much per pixel for a cached
tile as decoding it (it composites through cairo into premultiplied ARGB, then converts), and
on levels whose reported downsample is not an integer (any odd-sized slide) it takes a
sub-pixel compositing path that is several times slower still and blurs.

Codecs: what HEST's own writer produces and what other plain pyramids use. HEST writes its
``wsis/*.tif`` with libvips ``tiffsave`` (``hest.utils.tiff_save``): LZW since HEST-lib 1.1.0,
deflate before, both with libvips' default horizontal predictor, 256 px tiles. Those, deflate
without a predictor, JPEG (RGB or YCbCr) and uncompressed tiles are decoded here: LZW by mint's
own decoder (:mod:`mint.data._lzw`, a C extension: 2.5-3.8x imagecodecs' speed, and LZW
decoding was 65-80% of a patch's cost), or by imagecodecs when that was not built (no C
compiler at install; a warning says so); deflate by imagecodecs (libdeflate); the predictor
undone in C or by imagecodecs ``delta_decode``; JPEG by OpenCV. All release the GIL, so
reader threads decode in parallel. Before LZW and the predictor were handled, every HEST slide
went to OpenSlide.

The direct path is checked against OpenSlide on part of a level before its first direct read
(level 0 when the slide is opened, others when first used, so a slide read only at level 0
decodes nothing else) and is not used when they differ or the file is anything else (a vendor
format such as SVS, another compression or predictor, planar layout): OpenSlide then reads, as
before.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
import zlib
from collections import OrderedDict
from typing import TYPE_CHECKING

import cv2
import imagecodecs
import numpy as np

from mint.errors import MintError

try:
    from mint.data import _lzw
except ImportError:  # installed without a C compiler (setup.py): imagecodecs decodes LZW tiles
    _lzw = None
#: Why LZW tiles decode at half speed, for the log.
_NO_LZW = "mint.data._lzw is not built (reinstall with a C compiler: pip install -e .)"
_warned_no_lzw = False

if TYPE_CHECKING:
    from mint.data.wsi import WSI

log = logging.getLogger(__name__)

#: TIFF compression codes the direct reader decodes: none, LZW, JPEG, Adobe deflate, old deflate.
_RAW, _LZW, _JPEG, _DEFLATE = 1, 5, 7, (8, 32946)
#: TIFF predictors: none, horizontal differencing (libvips' default for LZW and deflate).
_NO_PREDICTOR, _HORIZONTAL = 1, 2
#: Largest region (bytes of RGB) assembled in a reader thread's reused buffer rather than a new
#: array: a few patches' worth (a 224 px patch read at up to 2x is ~0.6 MB), small enough that
#: whole-slide bands (:meth:`WSI.downscaled`) never pin their size per thread.
_SCRATCH_BYTES = 4 << 20
#: Largest mean |direct - OpenSlide| (uint8) accepted by the self-check (JPEG decoders may
#: round a few pixels differently; a wrong colour space or layout is off by tens).
_CHECK_MAD = 1.0
#: Where the level-0 check looks (fractions of width and height; the tile there, first the
#: central one), and the per-channel standard deviation from which a block counts as showing
#: something rather than blank glass.
_CHECK_AT = ((0.5, 0.5), (0.25, 0.25), (0.75, 0.75), (0.25, 0.75), (0.75, 0.25),
             (0.5, 0.25), (0.5, 0.75), (0.25, 0.5), (0.75, 0.5))  # fmt: skip
_CHECK_TEXTURE = 2.0
#: Decoded tiles live in slabs of this many bytes (see :class:`_Slabs`). At least 4 MiB, the
#: size from which numpy asks Linux for transparent huge pages.
_SLAB_BYTES = 8 << 20


class _Slabs:
    """Memory for decoded tiles, handed out tile by tile from large arrays ("slabs").

    Why: a tile written into fresh memory from ``np.empty`` page-faults on every 4 KiB page,
    and on a virtual machine that cost about as much as inflating the tile (110 us per 256 px
    tile, measured). A slab of at least 4 MiB gets transparent huge pages from numpy's allocator
    (one fault per 2 MiB): 2.5% (1 um/px) to 4% (0.8 um/px) fewer CPU-seconds per patch in
    ``benchmarks/tiling.py``'s fresh processes. A tile is a view of its slab, so a
    slab lives exactly as long as one of its tiles is cached or still being read by a thread;
    tiles are decoded and evicted roughly in order (patches come in raster order), so whole
    slabs fall out of the cache together and are freed. Live slab memory is capped at twice
    the cache: past that (an access pattern that keeps one tile of many slabs alive) tiles
    get their own arrays, as before, within the cache's budget, so decoded tiles never take
    more than three times the cache. Thread safe; the lock is re-entrant because a slab can
    be freed (and :meth:`_freed` run) by a garbage collection inside :meth:`take`.
    """

    def __init__(self, limit_bytes: int):
        self.limit = int(limit_bytes)
        self.live = 0  # bytes of slabs not yet freed
        self._lock = threading.RLock()
        self._free: dict[tuple[int, ...], tuple[np.ndarray, int]] = {}

    def take(self, shape: tuple[int, ...]) -> np.ndarray:
        """An uninitialised C-contiguous uint8 array of `shape` (a view of a slab when allowed)."""
        size = int(np.prod(shape))
        per = _SLAB_BYTES // size
        if per < 2:
            return np.empty(shape, np.uint8)
        with self._lock:
            slab, used = self._free.pop(shape, (None, 0))
            if slab is None:
                if self.live + per * size > self.limit:
                    return np.empty(shape, np.uint8)
                slab = np.empty((per, *shape), np.uint8)
                self.live += slab.nbytes
                weakref.finalize(slab, self._freed, slab.nbytes)
            if used + 1 < per:
                self._free[shape] = (slab, used + 1)
        return slab[used]

    def _freed(self, nbytes: int) -> None:
        with self._lock:
            self.live -= nbytes

    def close(self) -> None:
        with self._lock:
            self._free.clear()


def _decode_into(compression: int, predictor: bool, data: bytes, out: np.ndarray) -> None:
    """Fill the C-contiguous uint8 (h, w, 3) `out` with the decoded LZW or deflate `data`,
    the horizontal predictor undone when `predictor`.

    LZW: mint's decoder (:mod:`mint.data._lzw`, 2.5-3.8x imagecodecs' speed on HEST-format
    tiles, benchmarks/RESULTS.md); imagecodecs when that was not built, and for old-style
    (pre-TIFF 6) streams. Deflate: imagecodecs (libdeflate). All release the GIL and write
    straight into the tile buffer. ValueError, or imagecodecs' LzwError, when the stream is
    corrupt or shorter than the tile (LZW has no checksum: a damaged LZW stream can also
    decode to wrong pixels, in libtiff as here).
    """
    flat = out.reshape(-1)
    undo_predictor = predictor
    if compression == _LZW and _lzw is not None and not _old_style_lzw(data):
        # undoes the predictor itself, once the tile is full
        got = _lzw.decode(data, flat, out.shape[1], out.shape[2], predictor)
        undo_predictor = False
    elif compression == _LZW:
        got = imagecodecs.lzw_decode(data, out=flat).size
    else:
        try:
            got = imagecodecs.deflate_decode(data, out=flat).size
        except imagecodecs.DeflateError:
            # A stream that inflates to more than the tile (libtiff, and the LZW decoders,
            # keep the first tile's worth) makes libdeflate stop: zlib decides, as far as the
            # tile goes; a corrupt stream fails there too.
            try:
                raw = zlib.decompressobj().decompress(data, flat.size)
            except zlib.error as exc:
                raise ValueError(f"deflate stream: {exc}") from None
            got = len(raw)
            flat[:got] = np.frombuffer(raw, np.uint8)
    if got != flat.size:
        raise ValueError(f"tile decodes to {got} of {flat.size} bytes")
    if undo_predictor:  # each sample was stored less its left neighbour's
        imagecodecs.delta_decode(out, axis=-2, out=out)


def _warn_if_no_lzw(levels: list[_Level]) -> None:
    """Warn once per process when LZW tiles (HEST's format) must go to imagecodecs."""
    global _warned_no_lzw
    if _lzw is None and not _warned_no_lzw and any(lv.compression == _LZW for lv in levels):
        _warned_no_lzw = True
        log.warning("LZW slide tiles decode at about half speed: %s", _NO_LZW)


def _old_style_lzw(data: bytes) -> bool:
    """An old-style (LSB-first, pre-TIFF 6) LZW stream, as libtiff and imagecodecs tell it:
    its first code, CLEAR, read LSB first, starts with bytes 0x00, 0x01."""
    return len(data) > 1 and data[0] == 0 and data[1] & 1 == 1


class _Level:
    """Where the tiles of one pyramid level are in the file and how to decode them."""

    def __init__(self, page, width: int, height: int):
        self.width, self.height = width, height
        self.tw, self.th = int(page.tilewidth), int(page.tilelength)
        self.ntx = -(-width // self.tw)
        self.offsets = np.asarray(page.dataoffsets, np.int64)
        self.counts = np.asarray(page.databytecounts, np.int64)
        self.compression = int(page.compression)
        self.predictor = int(page.predictor)
        tables = getattr(page, "jpegtables", None)
        self.jpeg_tables = bytes(tables) if tables else b""


class _Decoding:
    """A tile one reader thread is decoding; the others wait for its tile or its error."""

    __slots__ = ("done", "tile", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.tile: np.ndarray | None = None
        self.error: BaseException | None = None

    def result(self) -> np.ndarray | None:
        self.done.wait()
        if self.error is None:
            return self.tile
        try:
            raise self.error
        finally:
            self = None  # noqa: PLW0642 - no cycle error -> traceback -> this frame -> self


class UseOpenSlide(Exception):
    """A level's direct reads disagree with OpenSlide (raised by the lazy self-check)."""


class TiffTiles:
    """Decoded-tile reader for tiled pyramidal TIFFs (see the module docstring).

    Thread safe: tiles are read with ``os.pread`` and decoded outside the cache lock
    (imagecodecs, OpenCV and ``pread`` release the GIL), each tile by one thread while others
    wait for it.
    """

    def __init__(self, wsi: WSI, levels: list[_Level], cache_bytes: int):
        self.sample_id, self.path = wsi.sample_id, wsi.path
        self.levels = levels
        self.cache_bytes = max(int(cache_bytes), 1 << 20)
        self._cache: OrderedDict[tuple[int, int, int], np.ndarray | None] = OrderedDict()
        self._cached = 0
        self._pending: dict[tuple[int, int, int], _Decoding] = {}
        self._slabs = _Slabs(2 * self.cache_bytes)
        self._lock = threading.Lock()
        self._fd = os.open(self.path, os.O_RDONLY)
        self._file_bytes = os.fstat(self._fd).st_size
        self._slide, self._downsamples = wsi._slide, wsi.level_downsamples
        self._checked: set[int] = set()
        self._check_lock = threading.Lock()
        self._local = threading.local()
        self.failed = ""

    @classmethod
    def open(cls, wsi: WSI, cache_bytes: int) -> tuple[TiffTiles | None, str]:
        """The direct reader for `wsi` and "", or None and why OpenSlide must read."""
        try:
            levels = cls._levels(wsi)
            if isinstance(levels, str):
                return None, levels
            tiles = cls(wsi, levels, cache_bytes)
            why = tiles._check_level(0)
            if not why:
                _warn_if_no_lzw(levels)
                return tiles, ""
            tiles.close()
            return None, why
        except Exception as exc:  # unreadable header, odd tags: OpenSlide decides
            return None, f"{type(exc).__name__}: {exc}"

    def describe(self) -> str:
        """How level 0's tiles are stored, for the log ("LZW 256x256 tiles, horizontal
        predictor"), and for LZW without mint's decoder, that imagecodecs decodes them."""
        lv = self.levels[0]
        codec = {_RAW: "uncompressed", _LZW: "LZW", _JPEG: "JPEG"}.get(lv.compression, "deflate")
        predictor = ", horizontal predictor" if lv.predictor == _HORIZONTAL else ""
        slow = f", decoded by imagecodecs: {_NO_LZW}" if lv.compression == _LZW and not _lzw else ""
        return f"{codec} {lv.tw}x{lv.th} tiles{predictor}{slow}"

    @staticmethod
    def _levels(wsi: WSI) -> list[_Level] | str:
        import tifffile

        # Only plain pyramidal TIFFs (HEST's format): vendor TIFFs (Aperio, Ventana, Philips,
        # ...) can place tiles in ways a plain grid does not describe; OpenSlide knows them.
        vendor = wsi._slide.properties.get("openslide.vendor", "")
        if vendor != "generic-tiff":
            return f"OpenSlide vendor {vendor or 'unknown'!r}, not a plain pyramidal TIFF"
        with tifffile.TiffFile(wsi.path) as tf:
            pages = {}
            for page in tf.pages:
                if page.is_tiled:
                    pages.setdefault((int(page.imagewidth), int(page.imagelength)), page)
            levels = []
            for w, h in wsi.level_dimensions:
                page = pages.get((w, h))
                if page is None:
                    return f"no tiled TIFF page of {w}x{h}"
                comp, photo = int(page.compression), int(page.photometric)
                pred = int(page.predictor)
                ok = (
                    int(page.planarconfig) == 1
                    and int(page.samplesperpixel) == 3
                    and int(page.bitspersample) == 8
                    and int(getattr(page, "tiledepth", 1)) == 1
                    and (
                        comp in (_LZW, *_DEFLATE)
                        and photo == 2
                        and pred in (_NO_PREDICTOR, _HORIZONTAL)
                        or comp == _RAW
                        and photo == 2
                        and pred == _NO_PREDICTOR
                        or comp == _JPEG
                        and photo in (2, 6)
                        and pred == _NO_PREDICTOR
                    )
                )
                if not ok:
                    return (
                        f"level {w}x{h}: compression {comp}, photometric {photo}, "
                        f"predictor {pred} not handled"
                    )
                levels.append(_Level(page, w, h))
        return levels

    def _check_level(self, level: int) -> str:
        """Compare direct reads of `level` with OpenSlide's ("" when equal, else why not).
        Runs once per level, before the level's first direct read.

        Level 0 (checked whenever a slide is opened): the last 32 x 32 pixels of a central
        tile, which a wrong tile size, tile index or colour space gets wrong wherever the
        slide shows something; a small block because OpenSlide's compositing of a whole tile
        cost as much as the rest of opening the slide. Blank glass would pass any reader, so
        while the block compared is uniform the check goes on to the blocks of up to eight
        more tiles spread over the slide. Other levels: their whole first tile (their level
        coordinates must be integers in level-0 pixels, or OpenSlide would resample)."""
        with self._check_lock:
            if level in self._checked or self.failed:
                return self.failed
            lv = self.levels[level]
            if level == 0:
                blocks = []
                for fx, fy in _CHECK_AT:
                    tx = int(lv.width * fx) // lv.tw * lv.tw
                    ty = int(lv.height * fy) // lv.th * lv.th
                    x1, y1 = min(tx + lv.tw, lv.width), min(ty + lv.th, lv.height)
                    block = (max(tx, x1 - 32), max(ty, y1 - 32), x1, y1)
                    if block not in blocks:
                        blocks.append(block)
            else:
                blocks = [(0, 0, min(lv.tw, lv.width), min(lv.th, lv.height))]
            for x, y, x1, y1 in blocks:
                w, h = x1 - x, y1 - y
                mine = np.ascontiguousarray(self._read(level, x, y, w, h))
                ds = self._downsamples[level]
                loc = (int(round(x * ds)), int(round(y * ds)))
                # (alpha: 255 inside the level)
                ref = cv2.cvtColor(
                    np.asarray(self._slide.read_region(loc, level, (w, h))), cv2.COLOR_RGBA2RGB
                )
                mad = sum(cv2.sumElems(cv2.absdiff(mine, ref))[:3]) / (w * h * 3)
                if mad > _CHECK_MAD:
                    self.failed = (
                        f"direct tile read differs from OpenSlide at level {level} (mad {mad:.2f})"
                    )
                    return self.failed
                if max(cv2.meanStdDev(ref)[1][:3].ravel()) >= _CHECK_TEXTURE:
                    break  # a block with content agreed
            self._checked.add(level)
            return ""

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._cache.clear()
        self._slabs.close()

    # -- tiles --------------------------------------------------------------------------------
    def _tile(self, level: int, ty: int, tx: int) -> np.ndarray | None:
        """The decoded tile (cached), decoding it once however many threads ask at a time.

        Reader threads work on neighbouring patches, which need the same new tiles at the
        same moment; decoding in each of them was measured at +50% CPU a patch with two
        threads at 1 um/px (the second thread's decode thrown away). A thread that finds the
        tile being decoded waits for that decode (and gets its error, if it fails)."""
        key = (level, ty, tx)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            pending = self._pending.get(key)
            if pending is None:
                pending = self._pending[key] = _Decoding()
                decoder = True
            else:
                decoder = False
        if not decoder:
            return pending.result()
        try:
            tile = pending.tile = self._decode(level, ty, tx)
            with self._lock:
                self._cache[key] = tile
                self._cached += 0 if tile is None else tile.nbytes
                while self._cached > self.cache_bytes and len(self._cache) > 1:
                    _, old = self._cache.popitem(last=False)
                    self._cached -= 0 if old is None else old.nbytes
        except BaseException as exc:
            pending.error = exc
            raise
        finally:
            # Whatever happened, waiting threads are released and the next asker decodes
            # again (a failed tile is not cached).
            with self._lock:
                self._pending.pop(key, None)
            pending.done.set()
            pending = None  # no cycle error -> traceback -> this frame -> pending -> error
        return tile

    def forget_all(self) -> None:
        """Drop every cached tile: the reader is no longer used (a level failed its
        self-check), but stays open for threads still inside a read, which keep their arrays."""
        with self._lock:
            self._cache.clear()
            self._cached = 0

    def keep_only_below(self, level: int, row: int) -> None:
        """Drop the cached tiles that reads of `level` from level pixel row `row` down cannot
        need: that level's tiles ending at or above `row`, and every tile of the other levels
        (a tissue mask's thumbnail decodes a coarse level that patches never read again). The
        caller knows this (:meth:`WSI.forget_above`). A thread still reading a dropped tile
        keeps its array; the slab goes when its last tile does."""
        below = row // self.levels[level].th  # tiles ty < below end at row `row` or above
        with self._lock:
            done = [key for key in self._cache if key[0] != level or key[1] < below]
            for key in done:
                tile = self._cache.pop(key)
                self._cached -= 0 if tile is None else tile.nbytes

    def _decode(self, level: int, ty: int, tx: int) -> np.ndarray | None:
        """RGB tile (th, tw, 3), read-only; None for a tile the file does not store (white).

        Kept as RGB, as stored, and never copied when one tile holds a region (:meth:`_read`)."""
        lv = self.levels[level]
        idx = ty * lv.ntx + tx
        n = int(lv.counts[idx]) if idx < len(lv.counts) else 0
        if n <= 0:
            return None
        try:
            offset = int(lv.offsets[idx])
            if offset < 0 or n > self._file_bytes - offset:  # a damaged IFD: never allocate n
                raise ValueError(f"tile of {n} bytes at {offset} ends past the file's end")
            data = os.pread(self._fd, n, offset)
            if len(data) != n:
                raise ValueError(f"file ends early ({len(data)} of {n} bytes)")
            if lv.compression == _JPEG:
                stream = lv.jpeg_tables[:-2] + data[2:] if lv.jpeg_tables else data
                bgr = cv2.imdecode(np.frombuffer(stream, np.uint8), cv2.IMREAD_COLOR)
                if bgr is None or bgr.shape[:2] != (lv.th, lv.tw):
                    raise ValueError("JPEG tile does not decode to the tile size")
                rgb = self._slabs.take((lv.th, lv.tw, 3))
                if cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=rgb) is not rgb:
                    raise RuntimeError("cv2.cvtColor did not write into the tile")
            elif lv.compression == _LZW or lv.compression in _DEFLATE:
                rgb = self._slabs.take((lv.th, lv.tw, 3))
                _decode_into(lv.compression, lv.predictor == _HORIZONTAL, data, rgb)
            else:
                need = lv.th * lv.tw * 3
                if len(data) < need:
                    raise ValueError(f"tile has {len(data)} of {need} bytes")
                rgb = np.frombuffer(data, np.uint8, need).reshape(lv.th, lv.tw, 3)
        except (
            OSError,
            ValueError,
            imagecodecs.LzwError,
            imagecodecs.DeltaError,
            cv2.error,
        ) as exc:
            raise MintError(
                f"{self.sample_id} {self.path}: cannot read pixels (corrupt slide?): level "
                f"{level} tile ({tx}, {ty}): {' '.join(str(exc).split())}"
            ) from None
        rgb.flags.writeable = False
        return rgb

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """RGB (h, w, 3) of level pixels [x, x + w) x [y, y + h); outside the level is white.

        Never write into the array: it is a read-only view of a cached tile when one tile
        holds the region, else this thread's scratch buffer when the region is small (at most
        :data:`_SCRATCH_BYTES`), valid until the thread's next read; so use it before reading
        again and copy what must be kept. Raises UseOpenSlide when the level fails its
        self-check (run before its first read).
        """
        if level not in self._checked and self._check_level(level):
            raise UseOpenSlide(self.failed)
        return self._read(level, x, y, w, h)

    def _region(self, h: int, w: int) -> np.ndarray:
        """An uninitialised C-contiguous (h, w, 3) uint8 array: a view of this thread's reused
        buffer for small regions (already-touched memory, warm in cache), else a new array."""
        need = h * w * 3
        if need > _SCRATCH_BYTES:
            return np.empty((h, w, 3), np.uint8)
        buf = getattr(self._local, "buf", None)
        if buf is None or buf.size < need:
            buf = self._local.buf = np.empty(max(need, 1 << 18), np.uint8)
        return buf[:need].reshape(h, w, 3)

    def _read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        lv = self.levels[level]
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, lv.width), min(y + h, lv.height)
        tw, th = lv.tw, lv.th
        inside = x0 < x1 and y0 < y1 and (x0, y0, x1, y1) == (x, y, x + w, y + h)
        ty, tx = y0 // th, x0 // tw
        if inside and (y1 - 1) // th == ty and (x1 - 1) // tw == tx:
            # one tile holds the region: a view of it, no copy (the resampler takes strided rows)
            tile = self._tile(level, ty, tx)
            if tile is not None:
                return tile[y0 - ty * th : y1 - ty * th, x0 - tx * tw : x1 - tx * tw]
        out = self._region(h, w)
        if not inside:  # inside the level every pixel comes from a tile: no white fill first
            out.fill(255)
        if x0 >= x1 or y0 >= y1:
            return out
        for ty in range(y0 // th, (y1 - 1) // th + 1):
            ay0, ay1 = max(y0, ty * th), min(y1, (ty + 1) * th)
            for tx in range(x0 // tw, (x1 - 1) // tw + 1):
                ax0, ax1 = max(x0, tx * tw), min(x1, (tx + 1) * tw)
                tile = self._tile(level, ty, tx)
                dst = out[ay0 - y : ay1 - y, ax0 - x : ax1 - x]
                if tile is None:
                    dst.fill(255)
                    continue
                dst[...] = tile[ay0 - ty * th : ay1 - ty * th, ax0 - tx * tw : ax1 - tx * tw]
        return out
