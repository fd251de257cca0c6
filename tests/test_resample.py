"""mint's bilinear resampler (mint/data/_resample.c) against an exact float64 bilinear reference
written here, against OpenCV's warp (the path it replaced, still the fallback), and its vector
path against its plain C path; out-of-bounds reads against a guard page."""

from __future__ import annotations

import ctypes
import mmap
import platform
import sys

import cv2
import numpy as np
import pytest
from alignment import BILINEAR_BOUND as BOUND
from alignment import bilinear_exact as exact

from mint.data import wsi as wsi_mod

_resample = pytest.importorskip("mint.data._resample", reason="mint.data._resample is not built")

#: Largest |resampler - OpenCV's warp|. OpenCV 5's warp interpolates at float precision (within
#: 0.51 of the exact value); older ones quantise positions to 1/32 px, up to ~6 grey levels off
#: the exact value on noise (much less on tissue, whose neighbours differ little).
WARP_TOL = 1 if int(cv2.__version__.split(".")[0]) >= 5 else 8


def run(src, oh, ow, x, y, sx, sy, simd=True):
    dst = np.empty((oh, ow, *src.shape[2:]), np.uint8)
    assert _resample.bilinear(src, dst, x, y, sx, sy, simd=simd) is dst
    return dst


def cases(n: int, seed: int = 0):
    """Random noise images (the worst case: neighbours differ by up to 255) with random
    channels, sizes, scales from 0.3x to 1.99x, offsets inside, across and outside the image."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        ch = int(rng.integers(1, 5))
        h, w = (int(v) for v in rng.integers(1, 90, 2))
        shape = (h, w) if ch == 1 and rng.random() < 0.5 else (h, w, ch)
        img = rng.integers(0, 256, shape, np.uint8)
        oh, ow = (int(v) for v in rng.integers(1, 120, 2))
        sx, sy = (float(v) for v in rng.uniform(0.3, 1.99, 2))
        x, y = (float(v) for v in rng.uniform(-8, [w + 4, h + 4]))
        yield img, oh, ow, x, y, sx, sy


def test_equals_exact_bilinear_within_rounding():
    """Every output within BOUND of the float64 value on noise, whatever the channels, scale
    and offset (weights are quantised to 1/8192 of a pixel horizontally, 1/32768 vertically): a
    sampling point off by 1/500 pixel, a swapped weight or a wrong border shows here."""
    worst = 0.0
    for img, oh, ow, x, y, sx, sy in cases(300):
        ref = exact(img, x, y, sx, sy, oh, ow)
        got = run(img, oh, ow, x, y, sx, sy).reshape(ref.shape).astype(np.float64)
        err = float(np.abs(got - ref).max())
        assert err <= BOUND, (img.shape, oh, ow, x, y, sx, sy, err)
        worst = max(worst, err)
    assert worst > 0.49  # the comparison saw rounding, it did not compare a copy with itself


def test_vector_path_equals_plain_c_path():
    """The SSSE3 path and the plain C path compute the same integers (bit-identical), so a
    machine without SSSE3 (or OpenCV's fallback aside) makes the same patches."""
    if not _resample.SIMD:
        pytest.skip("no vector path on this machine")
    for img, oh, ow, x, y, sx, sy in cases(300, seed=1):
        np.testing.assert_array_equal(
            run(img, oh, ow, x, y, sx, sy), run(img, oh, ow, x, y, sx, sy, simd=False)
        )


def _cpu_has_ssse3() -> bool:
    """What the kernel says this CPU can do (Linux x86 only; elsewhere unknown, False)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686") or sys.platform != "linux":
        return False
    with open("/proc/cpuinfo") as f:
        return any(line.startswith("flags") and " ssse3" in line for line in f)


@pytest.mark.skipif(not _cpu_has_ssse3(), reason="not a Linux x86 CPU with SSSE3")
def test_vector_path_is_built_and_used_on_x86():
    """The vector path is the reason the extension exists (the plain path is slower than
    OpenCV's warp): on an x86 CPU with SSSE3 it must be compiled in and chosen, and the slide
    reader must use the extension. Losing it would only cost speed, so nothing else fails."""
    assert _resample.SIMD
    assert wsi_mod._RESAMPLER


@pytest.mark.skipif(not _resample.SIMD, reason="no vector path on this machine")
def test_vector_path_serves_every_call_of_the_slide_reader(monkeypatch):
    """Every bilinear call wsi.resample makes for boxes inside the image, at shrink factors
    0.3x-12x (whole blocks are averaged first, so the pass itself never shrinks by 2) and 1-4
    channels, is served by the vector path (the plan bilinear() makes: `vector_path`). A
    planner that fell back to the plain path, 7-9x slower, would change no pixel. (A box that
    starts less than one block before the image's far side is not averaged and may take the
    plain path; a spot's patch never does, its centre being on the slide.)"""
    calls = []

    class Recorder:
        SIMD = _resample.SIMD

        @staticmethod
        def bilinear(src, dst, x, y, sx, sy):
            calls.append((src.shape[1], dst.shape[1], src.shape[2] if src.ndim == 3 else 1, x, sx))
            return _resample.bilinear(src, dst, x, y, sx, sy)

    monkeypatch.setattr(wsi_mod, "_resample", Recorder)
    monkeypatch.setattr(wsi_mod, "_RESAMPLER", True)
    rng = np.random.default_rng(8)
    for ch in (1, 2, 3, 4):
        img = rng.integers(0, 256, (300, 3000, ch), np.uint8).squeeze()
        for factor in np.geomspace(0.3, 12.0, 40):
            side = 224 * factor
            fx, fy = rng.uniform(0, 3000 - side - 12), rng.uniform(0, 300 - min(side, 250))
            out = wsi_mod.resample(img, fx + 0.37, fy + 0.61, side, min(side, 250.0), 224, 10)
            assert out.shape[:2] == (10, 224)
    assert len(calls) == 4 * 40
    for sw, ow, ch, x, step in calls:
        assert step < 2.0
        assert _resample.vector_path(sw, ow, ch, x, step), (sw, ow, ch, x, step)
    # the query itself can say no: a row shrunk 4.5x on RGB spans more than the vector window
    assert not _resample.vector_path(3000, 224, 3, 10.3, 4.5)
    for bad in ((3000, 224, 5, 10.3, 1.0), (3000, 2**62, 3, 0.0, 1.0), (0, 224, 3, 0.0, 1.0)):
        with pytest.raises(ValueError):
            _resample.vector_path(*bad)  # 2**62 would wrap the size of the plan's tables


def test_close_to_opencv_warp():
    """Within 1 of OpenCV 5's warpAffine (bilinear, inverse map, border replicated), the path
    it replaced and the fallback where it is not built (WARP_TOL for older OpenCV)."""
    for img, oh, ow, x, y, sx, sy in cases(100, seed=2):
        if img.ndim == 3 and img.shape[2] == 2:
            continue  # OpenCV's 2-channel warp rounds differently (up to 4 off); RGB is 3
        m = np.array([[sx, 0.0, x], [0.0, sy, y]])
        ref = cv2.warpAffine(
            img, m, (ow, oh), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        )  # fmt: skip
        got = run(img, oh, ow, x, y, sx, sy)
        assert np.abs(got.astype(int) - ref.reshape(got.shape)).max() <= WARP_TOL


def test_shrinks_up_to_and_past_the_vector_window_stay_exact():
    """The samples of 8 outputs must lie within a vector group's 32-byte window; from about
    3.3x on RGB (4.3x grey, 6x RGBA) some groups do not, and the call takes the plain C path
    (mint.data.wsi averages whole blocks first, so its calls never do). Steps swept finely
    across that limit for every channel count, at many offsets: exact either way, and the
    vector path equal to the plain one (a group allowed one byte too many reads garbage)."""
    rng = np.random.default_rng(3)
    for ch in (1, 2, 3, 4):
        img = rng.integers(0, 256, (60, 260, ch), np.uint8)
        for s in np.arange(1.9, 7.0, 0.037):
            x = float(rng.uniform(-2, 8))
            got = run(img, 3, 36, x, 0.4, float(s), 1.3)
            assert np.abs(got - exact(img, x, 0.4, s, 1.3, 3, 36)).max() <= BOUND, (ch, s, x)
            np.testing.assert_array_equal(got, run(img, 3, 36, x, 0.4, float(s), 1.3, False))


def test_strided_views_in_and_out():
    """A source that is a view of part of a larger image (a cached tile) and a destination
    that is one (a band of a larger output): only the view's pixels are read and written."""
    rng = np.random.default_rng(4)
    big = rng.integers(0, 256, (120, 140, 3), np.uint8)
    src = big[10:70, 20:90]
    canvas = np.zeros((90, 100, 3), np.uint8)
    dst = canvas[5:65, 7:87]
    assert _resample.bilinear(src, dst, 1.3, 2.6, 0.7, 0.8) is dst
    ref = exact(np.ascontiguousarray(src), 1.3, 2.6, 0.7, 0.8, 60, 80)
    assert np.abs(dst - ref).max() <= BOUND
    outside = canvas.copy()
    outside[5:65, 7:87] = 0
    assert not outside.any()  # nothing written around the view
    # the view's pixels alone: the rest of `big` does not leak in through the border
    big2 = big.copy()
    big2[:10], big2[70:], big2[:, :20], big2[:, 90:] = 0, 255, 0, 255
    np.testing.assert_array_equal(
        run(big2[10:70, 20:90], 60, 80, -3.0, -2.0, 1.2, 1.1),
        run(np.ascontiguousarray(src), 60, 80, -3.0, -2.0, 1.2, 1.1),
    )


@pytest.mark.skipif(sys.platform != "linux", reason="guard page via mmap and mprotect")
def test_never_reads_past_the_source():
    """The vector path loads 32 bytes per group; rows whose loads would pass the source's last
    byte are read from a padded copy. A source ending right before a page that cannot be read
    (PROT_NONE) would crash the process otherwise: contiguous, and a view of the last columns
    of a wider image (rows apart), with offsets swept so that the loads of the last group end
    anywhere from a few to 31 bytes past the source."""
    libc = ctypes.CDLL(None, use_errno=True)
    page = mmap.PAGESIZE
    mem = mmap.mmap(-1, 4 * page, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    anchor = ctypes.c_char.from_buffer(mem)
    base = ctypes.addressof(anchor)
    assert libc.mprotect(ctypes.c_void_p(base + 3 * page), page, 0) == 0  # PROT_NONE
    arena = src = parent = None
    try:
        rng = np.random.default_rng(5)
        arena = np.frombuffer(mem, np.uint8, 3 * page)
        shapes = [(10, 37, 3), (5, 200, 4), (1, 9, 1), (3, 1, 3), (40, 50, 2), (4, 60, 3)]
        for h, w, ch in shapes + [(3, 70, 1), (2, 45, 1)]:
            for extra in (0, 7):  # 7: a view of the last w columns of a (h, w + 7) image
                n = h * (w + extra) * ch
                parent = arena[3 * page - n :].reshape(h, w + extra, ch)  # ends at the page
                parent[...] = rng.integers(0, 256, parent.shape, np.uint8)
                src = parent[:, extra:]
                # whole-pixel steps of x at step 1 move the last group's loads one pixel at a
                # time, so that with one channel they end exactly 1, 2, ... bytes past the end
                sweeps = [(1.0, np.arange(w - 45, w + 2) + 0.3)]
                sweeps += [(sx, np.arange(w - 40 * sx, w + 2, 0.61)) for sx in (0.5, 1.7, 2.9)]
                for sx, xs in sweeps:
                    for x in xs:
                        for ow in (8, 9, 40, 41):
                            got = run(src, 2, ow, float(x), h - 1.5, sx, 0.9)
                            ref = exact(src.copy(), float(x), h - 1.5, sx, 0.9, 2, ow)
                            assert np.abs(got - ref.reshape(got.shape)).max() <= BOUND
    finally:
        libc.mprotect(ctypes.c_void_p(base + 3 * page), page, mmap.PROT_READ | mmap.PROT_WRITE)
        del anchor, arena, src, parent
        mem.close()


@pytest.mark.parametrize(
    "src, dst, args, match",
    [
        (np.zeros((4, 4, 3), np.float32), np.zeros((2, 2, 3), np.uint8), (0, 0, 1, 1), "uint8"),
        (np.zeros((4, 4, 3), np.uint8), np.zeros((2, 2, 4), np.uint8), (0, 0, 1, 1), "channels"),
        (np.zeros((4, 4, 5), np.uint8), np.zeros((2, 2, 5), np.uint8), (0, 0, 1, 1), "channels"),
        (np.zeros((4, 8, 3), np.uint8)[:, ::2], np.zeros((2, 2, 3), np.uint8), (0, 0, 1, 1),
         "packed"),
        (np.zeros((0, 4, 3), np.uint8), np.zeros((2, 2, 3), np.uint8), (0, 0, 1, 1), "empty"),
        (np.zeros((4, 4, 3), np.uint8), np.zeros((2, 2, 3), np.uint8), (0, 0, 0, 1), "positive"),
        (np.zeros((4, 4, 3), np.uint8), np.zeros((2, 2, 3), np.uint8), (np.nan, 0, 1, 1),
         "finite"),
        (np.zeros((4, 4, 3), np.uint8), np.zeros((2, 2, 3), np.uint8), (1e308, 0, 1e308, 1),
         "finite"),
        (np.zeros((4, 4, 3), np.uint8), np.zeros((2, 2, 3), np.uint8)[::-1], (0, 0, 1, 1),
         "packed"),
    ],
)  # fmt: skip
def test_refuses_what_it_cannot_resample(src, dst, args, match):
    with pytest.raises(ValueError, match=match):
        _resample.bilinear(src, dst, *args)


def test_overlapping_source_and_destination_are_refused():
    """The rows of `src` are read while `dst` is written: writing into the source would
    change what later rows read (OpenCV's warp copies its input in that case)."""
    img = np.zeros((40, 40, 3), np.uint8)
    with pytest.raises(ValueError, match="overlap"):
        _resample.bilinear(img, img, 0, 0, 1, 1)
    with pytest.raises(ValueError, match="overlap"):
        _resample.bilinear(img[:20], img[10:30], 0, 0, 1, 1)
    _resample.bilinear(img[:20], img[20:], 0, 0, 1, 1)  # apart: fine


def test_read_only_destination_is_refused():
    dst = np.zeros((2, 2, 3), np.uint8)
    dst.flags.writeable = False
    with pytest.raises((ValueError, BufferError)):
        _resample.bilinear(np.zeros((4, 4, 3), np.uint8), dst, 0, 0, 1, 1)


def test_fallback_makes_the_same_patches_within_one(monkeypatch):
    """mint.data.wsi.resample with the resampler and with OpenCV's warp (its fallback: not
    built, or no vector path) gives patches within 1 of each other on RGB (OpenCV 5; WARP_TOL
    before), the shrink paths included (whole blocks averaged first)."""
    rng = np.random.default_rng(6)
    img = rng.integers(0, 256, (400, 420, 3), np.uint8)
    boxes = [(10.3, 20.6, 100.0, 100.0, 224, 224), (5.5, 3.25, 263.5, 263.5, 224, 224),
             (0.7, 1.2, 300.9, 300.9, 100, 100), (-3.5, 390.2, 140.0, 140.0, 224, 224)]  # fmt: skip
    for box in boxes:
        assert wsi_mod._RESAMPLER == _resample.SIMD
        mine = wsi_mod.resample(img, *box)
        monkeypatch.setattr(wsi_mod, "_RESAMPLER", False)
        theirs = wsi_mod.resample(img, *box)
        monkeypatch.undo()
        assert mine.shape == theirs.shape == (box[5], box[4], 3)
        assert np.abs(mine.astype(int) - theirs).max() <= WARP_TOL, box


def test_is_thread_safe():
    """Reader threads resample at once (the GIL is released); results do not depend on the
    thread."""
    from concurrent.futures import ThreadPoolExecutor

    work = list(cases(40, seed=7))
    one = [run(*c) for c in work]
    with ThreadPoolExecutor(4) as pool:
        many = list(pool.map(lambda c: run(*c), work))
    for a, b in zip(one, many, strict=True):
        np.testing.assert_array_equal(a, b)


def test_warns_once_when_not_built(monkeypatch, caplog, tmp_path):
    """Without the extension (no C compiler at install) OpenCV's warp resamples, and the log
    says why once per process; the patches are within 1 of the resampler's."""
    from mint.synth.tiff import write_pyramidal_tiff_array

    img = np.random.default_rng(8).integers(0, 256, (300, 320, 3), np.uint8)
    path = write_pyramidal_tiff_array(tmp_path / "s.tif", img, pixel_size_um=0.5)
    box = (20.3, 30.6, 140.0, 140.0, 224, 224)
    with wsi_mod.WSI(path, 0.5, "S") as wsi:
        mine = wsi.read_box(*box)
    monkeypatch.setattr(wsi_mod, "_resample", None)
    monkeypatch.setattr(wsi_mod, "_RESAMPLER", False)
    monkeypatch.setattr(wsi_mod, "_warned_no_resampler", False)
    with caplog.at_level("WARNING", logger="mint.data.wsi"):
        with wsi_mod.WSI(path, 0.5, "S") as a, wsi_mod.WSI(path, 0.5, "S"):
            theirs = a.read_box(*box)
    said = [r.getMessage() for r in caplog.records if "_resample is not built" in r.getMessage()]
    assert len(said) == 1 and "OpenCV's warp" in said[0]
    assert np.abs(mine.astype(int) - theirs).max() <= WARP_TOL


def test_resample_takes_any_layout_and_type():
    """mint.data.wsi.resample takes what OpenCV's warp took: views that are not packed
    (flipped, every other column, Fortran order) are copied for the resampler; types the
    resampler does not take (float64, float32, uint16) go to OpenCV's warp, 3 channels included;
    a `dst` of another type is not written but replaced."""
    rng = np.random.default_rng(9)
    img = rng.integers(0, 256, (80, 90, 3), np.uint8)
    box = (3.3, 4.6, 50.0, 40.0, 70, 60)
    want = wsi_mod.resample(np.ascontiguousarray(img[::-1]), *box)
    np.testing.assert_array_equal(wsi_mod.resample(img[::-1], *box), want)
    for view in (img[:, ::2], img[..., ::-1], np.asfortranarray(img)):
        np.testing.assert_array_equal(
            wsi_mod.resample(view, *box), wsi_mod.resample(np.ascontiguousarray(view), *box)
        )
    for dtype in (np.float64, np.float32, np.uint16):
        other = (img // 2).astype(dtype)
        out = wsi_mod.resample(other, *box)
        assert out.dtype == dtype and out.shape == (60, 70, 3)
        # OpenCV's warp quantises positions to 1/32 px on these types (up to ~4 off here)
        assert np.abs(out.astype(float) - wsi_mod.resample(img // 2, *box)).max() <= 8
    wrong = np.zeros((60, 70, 3), np.float32)
    out = wsi_mod.resample(img, *box, wrong)
    assert out is not wrong and out.dtype == np.uint8 and not wrong.any()
