"""mint's LZW tile decoder (mint.data._lzw, a C extension) against imagecodecs and libtiff.

The decoder must give the bytes libtiff gives for every stream a TIFF writer produces, refuse
what libtiff refuses, stop where the tile is full, and turn any damaged stream into a
ValueError or a short count, never a read or write outside its buffers (checked under
AddressSanitizer and UBSan by tests/test_sanitizers.py; here guard bytes after the output catch
writes past it).
"""

from __future__ import annotations

import importlib
import mmap
import random
import shutil
import sysconfig
from pathlib import Path

import imagecodecs
import numpy as np
import pytest

from mint.data import tiff_tiles

lzw = tiff_tiles._lzw
needs_lzw = pytest.mark.skipif(lzw is None, reason="mint.data._lzw is not built")


def _can_build() -> str:
    """Why this Python cannot build C extensions ("" when it can): no compiler, or no
    Python.h (a system Python without its -dev package)."""
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if not (shutil.which(cc) or shutil.which("cc") or shutil.which("gcc")):
        return "no C compiler"
    if not Path(sysconfig.get_paths()["include"], "Python.h").is_file():
        return "no Python.h (install the Python development headers)"
    return ""


@pytest.mark.parametrize("module", ["_lzw", "_resample"])
def test_the_extensions_are_built_where_they_can_be(module):
    """`pip install -e .` builds mint.data._lzw and mint.data._resample (setup.py) wherever a
    C compiler and Python's headers exist; the fallbacks (imagecodecs, OpenCV's warp) are for
    machines without them, not a silent slowdown elsewhere (and the resampler's tests, skipped
    when it is missing, run)."""
    why = _can_build()
    if why:
        pytest.skip(f"{why}: the install falls back to imagecodecs and OpenCV")
    try:
        importlib.import_module(f"mint.data.{module}")
    except ImportError:
        pytest.fail(f"mint.data.{module} is not built: run pip install -e . again")


def _streams(rng: random.Random) -> dict[str, bytes]:
    """Data that exercise every branch: byte codes, short and long strings (past the 8-byte
    moves), the code that adds itself (runs), table resets (noise), and tiny outputs."""
    return {
        "h&e-like": bytes(rng.randrange(4) for _ in range(6000)),
        "run": bytes([7]) * 30000,
        "noise": bytes(rng.randrange(256) for _ in range(40000)),
        "pattern": b"ab" * 5000 + bytes(range(256)) * 20,
        **{f"tiny{n}": bytes(rng.randrange(3) for _ in range(n)) for n in (1, 2, 7, 8, 9, 17)},
    }


@needs_lzw
def test_decodes_what_imagecodecs_encodes_into_any_buffer_size():
    rng = random.Random(1)
    for name, raw in _streams(rng).items():
        data = imagecodecs.lzw_encode(raw)
        for size in (len(raw), len(raw) + 1, len(raw) + 100, *range(min(len(raw), 24))):
            out = bytearray(size)
            got = lzw.decode(data, out)
            assert got == min(size, len(raw)), (name, size)
            assert bytes(out[:got]) == raw[:got], (name, size)


def _pack(codes: list[int]) -> bytes:
    """The MSB-first bit stream of LZW `codes`, each as wide as a new-style decoder reads it
    (9 bits after CLEAR, one more at 511, 1023 and 2047 table entries: "early change")."""
    acc = nbits = 0
    width, table, first = 9, 258, True
    for code in codes:
        acc, nbits = (acc << width) | code, nbits + width
        if code == 256:
            width, table, first = 9, 258, True
            continue
        if code == 257:
            continue
        table += 0 if first else 1
        first = False
        width = 12 if table >= 2047 else 11 if table >= 1023 else 10 if table >= 511 else 9
    pad = -nbits % 8
    return (acc << pad).to_bytes((nbits + pad) // 8, "big")


def _libtiff_decodes(tmp_path: Path, stream: bytes, side: int) -> bytes | None:
    """What libtiff (through Pillow) makes of `stream` as the one LZW tile of a side x side RGB
    image: the pixels, or None when it reports an error."""
    import tifffile
    from PIL import Image, features

    if not features.check("libtiff"):
        pytest.skip("Pillow without libtiff")
    path = tmp_path / f"tile{len(list(tmp_path.iterdir()))}.tif"
    tifffile.imwrite(path, iter([stream]), shape=(side, side, 3), dtype=np.uint8,
                     tile=(side, side), compression="lzw", photometric="rgb")  # fmt: skip
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im).tobytes()
    except OSError:
        return None


@needs_lzw
def test_malformed_streams_are_refused_where_libtiff_refuses_them(tmp_path):
    """libtiff's limits, each checked against libtiff itself (Pillow): a stream must start with
    CLEAR; the table holds at most 5119 entries (4861 additions after CLEAR decode, 4862 do
    not); the code right after CLEAR must be a byte. And a stream that ends without EOI exactly
    on a byte boundary still gives its last code."""
    side = 48  # 6912 bytes of RGB
    fill = [256] + [65] * 2050 + [257]  # after a second CLEAR: the rest of the tile

    def decode(codes: list[int]) -> bytes | None:
        out = bytearray(side * side * 3)
        try:
            got = lzw.decode(_pack(codes), out)
        except ValueError:
            return None
        return bytes(out) if got == len(out) else None

    runs = list(range(258, 258 + 117))  # "AA", "AAA", ...: 7021 bytes, no table overflow
    cases = {
        "no leading CLEAR": [65, *runs, 257],
        "4861 additions": [256] + [66] * 4862 + fill,
        "4862 additions": [256] + [66] * 4863 + fill,
        "258 after CLEAR": [256, 258] + [65] * 6912,
    }
    expected = {"no leading CLEAR": None, "4861 additions": b"B" * 4862 + b"A" * 2050,
                "4862 additions": None, "258 after CLEAR": None}  # fmt: skip
    for name, codes in cases.items():
        mine, theirs = decode(codes), _libtiff_decodes(tmp_path, _pack(codes), side)
        assert mine == theirs, name
        assert (mine[:6912] if mine else None) == expected[name], name
    with pytest.raises(ValueError, match="table full"):
        lzw.decode(_pack(cases["4862 additions"]), bytearray(6912))
    assert decode([256, 65, *runs, 257]) == b"A" * 6912  # the same after CLEAR
    with pytest.raises(ValueError, match="corrupt \\(a code outside the table\\)"):
        lzw.decode(_pack(cases["no leading CLEAR"]), bytearray(6912))
    # CLEAR and 7 bytes: 72 bits, no EOI, no padding
    data = _pack([256, *b"abcdefg"])
    assert len(data) == 9
    out = bytearray(7)
    assert lzw.decode(data, out) == 7 and out == b"abcdefg"
    assert lzw.decode(data, bytearray(20)) == 7
    # CLEAR, "ab" and 5 bits of padding: two bytes, not a third code from past the stream
    assert lzw.decode(_pack([256, *b"ab"]), bytearray(10)) == 2


@needs_lzw
def test_outputs_of_4gib_are_refused():
    """Table entries keep 32-bit offsets: a buffer of 4 GiB or more is an error, not a wrap."""
    try:
        big = mmap.mmap(-1, 2**32)  # virtual memory only: nothing is written
    except (OSError, OverflowError, ValueError):
        pytest.skip("cannot map 4 GiB of address space")
    with big, pytest.raises(ValueError, match="4 GiB"):
        lzw.decode(imagecodecs.lzw_encode(b"abc"), big)


@needs_lzw
@pytest.mark.parametrize("width,samples", [(256, 3), (17, 3), (5, 1), (9, 4), (1, 3)])
def test_predictor_is_undone_as_imagecodecs_does(width, samples):
    img = np.random.default_rng(width).integers(0, 256, (7, width, samples), np.uint8)
    ref = img.copy()
    imagecodecs.delta_decode(ref, axis=-2, out=ref)
    out = np.empty_like(img)
    assert lzw.decode(imagecodecs.lzw_encode(img.tobytes()), out.reshape(-1), width, samples, True)
    np.testing.assert_array_equal(out, ref)
    with pytest.raises(ValueError, match="whole rows"):  # rows that do not fit the buffer
        lzw.decode(b"\x80\x00", out.reshape(-1), out.size + 1, 1, True)
    with pytest.raises(ValueError, match="whole rows"):  # width x samples past 2**63
        lzw.decode(b"\x80\x00", out.reshape(-1), 6148914691236517206, 3, True)


@needs_lzw
def test_libtiff_written_tiles_decode_as_imagecodecs_decodes_them(tmp_path):
    """libtiff's own encoder (through libvips, HEST's writer) on noise (the table fills and
    CLEAR comes often), flat glass (long strings) and texture, with and without the
    predictor, in 240, 256 and 512 px tiles: every tile of every level equals imagecodecs, and
    level 0 assembled from mint's tiles (predictor undone) equals libtiff's page (Pillow)."""
    pyvips = pytest.importorskip("pyvips")
    import tifffile
    from PIL import Image, features

    rng = np.random.default_rng(3)
    images = {
        "noise": rng.integers(0, 256, (300, 520, 3), np.uint8),
        "glass": np.full((300, 300, 3), 236, np.uint8),
        "texture": (128 + rng.integers(-3, 4, (400, 380, 3))).astype(np.uint8),
    }
    n = 0
    for name, img in images.items():
        for predictor in ("horizontal", "none"):
            for tile in (240, 256, 512):
                path = tmp_path / f"{name}-{predictor}-{tile}.tif"
                pyvips.Image.new_from_array(img).tiffsave(
                    str(path), tile=True, tile_width=tile, tile_height=tile, pyramid=True,
                    compression="lzw", predictor=predictor,
                )  # fmt: skip
                with tifffile.TiffFile(path) as tf:
                    for page in tf.pages:
                        for data in _raw_tiles(tf, page):
                            ref = np.empty((page.tilelength, page.tilewidth, 3), np.uint8)
                            imagecodecs.lzw_decode(data, out=ref.reshape(-1))
                            out = np.empty_like(ref)
                            assert lzw.decode(data, out.reshape(-1)) == out.size
                            np.testing.assert_array_equal(out, ref, err_msg=str(path))
                            n += 1
                    level0 = _level0(tf, predictor == "horizontal")
                if features.check("libtiff"):
                    with Image.open(path) as im:
                        np.testing.assert_array_equal(level0, np.asarray(im), err_msg=str(path))
    assert n > 50


def _level0(tf, predictor: bool) -> np.ndarray:
    """Level 0 of `tf` from its tiles, decoded by mint (predictor undone)."""
    page = tf.pages[0]
    th, tw = int(page.tilelength), int(page.tilewidth)
    h, w = int(page.imagelength), int(page.imagewidth)
    across = -(-w // tw)
    img = np.empty((-(-h // th) * th, across * tw, 3), np.uint8)
    tile = np.empty((th, tw, 3), np.uint8)
    for i, data in enumerate(_raw_tiles(tf, page)):
        assert lzw.decode(data, tile.reshape(-1), tw, 3, predictor) == tile.size
        ty, tx = divmod(i, across)
        img[ty * th : (ty + 1) * th, tx * tw : (tx + 1) * tw] = tile
    return img[:h, :w]


def _raw_tiles(tf, page):
    fh = tf.filehandle
    for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
        fh.seek(offset)
        yield fh.read(count)


@needs_lzw
def test_damaged_streams_give_errors_or_short_counts():
    """Bit flips, cuts, insertions and garbage: a ValueError or a count within the buffer,
    for buffers smaller and larger than the data (no crash, no write past `out`: the guard
    bytes after it stay untouched)."""
    rng = random.Random(4)
    raw = bytes(rng.randrange(6) for _ in range(5000))
    data = imagecodecs.lzw_encode(raw)
    errors = counts = 0
    for _ in range(1500):
        m = bytearray(data)
        kind = rng.randrange(4)
        if kind == 0:
            for _ in range(rng.randrange(1, 5)):
                m[rng.randrange(len(m))] ^= 1 << rng.randrange(8)
        elif kind == 1:
            m = m[: rng.randrange(len(m) + 1)]
        elif kind == 2:
            m = bytearray(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        else:
            at = rng.randrange(len(m))
            m[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 20)))
        for size in (len(raw), rng.randrange(1, 64), 3 * len(raw)):
            buf = bytearray(size + 16)
            buf[size:] = b"\xa5" * 16
            out = memoryview(buf)[:size]
            try:
                got = lzw.decode(bytes(m), out)
            except ValueError as exc:
                assert "LZW stream is corrupt" in str(exc)
                errors += 1
            else:
                assert 0 <= got <= size
                counts += 1
            assert buf[size:] == b"\xa5" * 16
    assert errors and counts


def test_old_style_streams_go_to_imagecodecs(monkeypatch):
    """Old-style (LSB first, pre-TIFF 6) LZW starts with bytes 0x00 0x01, which libtiff and
    imagecodecs read as such; mint's decoder takes new-style streams only, so those go to
    imagecodecs, and the rest to mint's decoder."""
    assert tiff_tiles._old_style_lzw(b"\x00\x01\x02")
    assert not tiff_tiles._old_style_lzw(imagecodecs.lzw_encode(b"abc"))
    assert not tiff_tiles._old_style_lzw(b"\x00")

    calls = []

    class Decoder:  # stands in for mint.data._lzw
        @staticmethod
        def decode(*args):
            calls.append(args)
            raise AssertionError("mint's decoder called")

    monkeypatch.setattr(tiff_tiles, "_lzw", Decoder)
    # CLEAR, "abcdef", EOI as 9-bit codes, least significant bit first
    acc = sum(code << (9 * i) for i, code in enumerate([256, *b"abcdef", 257]))
    old_style = acc.to_bytes(9, "little")
    out = np.zeros((1, 2, 3), np.uint8)
    tiff_tiles._decode_into(tiff_tiles._LZW, False, old_style, out)
    assert out.tobytes() == b"abcdef" and not calls
    with pytest.raises(AssertionError, match="mint's decoder called"):
        tiff_tiles._decode_into(tiff_tiles._LZW, False, imagecodecs.lzw_encode(b"abcdef"), out)
