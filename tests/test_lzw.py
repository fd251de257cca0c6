"""mint's LZW tile decoder (mint.data._lzw, a C extension) against imagecodecs and libtiff.

The decoder must give the bytes libtiff gives for every stream a TIFF writer produces, stop
where the tile is full, and turn any damaged stream into a ValueError or a short count, never
a read or write outside its buffers (checked under AddressSanitizer when it was written; here
the fuzz cases at least run every error path).
"""

from __future__ import annotations

import random
import shutil
import sysconfig

import imagecodecs
import numpy as np
import pytest

from mint.data import tiff_tiles

lzw = tiff_tiles._lzw
needs_lzw = pytest.mark.skipif(lzw is None, reason="mint.data._lzw is not built")


def _compiler() -> str | None:
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc) or shutil.which("cc") or shutil.which("gcc")


def test_the_decoder_is_built_where_a_compiler_is():
    """`pip install -e .` builds mint.data._lzw (setup.py) wherever a C compiler exists; the
    imagecodecs fallback is for machines without one, not a silent slowdown elsewhere."""
    if _compiler() is None:
        pytest.skip("no C compiler: the install falls back to imagecodecs")
    assert lzw is not None, "mint.data._lzw is not built: run pip install -e . again"


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


@needs_lzw
def test_a_stream_without_its_leading_clear_code_decodes():
    """libtiff decodes a new-style stream that does not start with CLEAR (imagecodecs
    refuses it); so does mint's decoder."""
    raw = bytes(random.Random(2).randrange(5) for _ in range(3000))
    data = imagecodecs.lzw_encode(raw)
    assert data[0] == 0x80 and data[1] & 0x80 == 0  # CLEAR, 9 bits, MSB first
    bits = len(data) * 8
    stripped = ((int.from_bytes(data, "big") << 9) & ((1 << bits) - 1)).to_bytes(len(data), "big")
    out = bytearray(len(raw))
    assert lzw.decode(stripped, out) == len(raw) and bytes(out) == raw


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


@needs_lzw
def test_libtiff_written_tiles_decode_as_imagecodecs_decodes_them(tmp_path):
    """libtiff's own encoder (through libvips, HEST's writer) on noise (the table fills and
    CLEAR comes often), flat glass (long strings) and texture, with and without the
    predictor, in 240, 256 and 512 px tiles: every tile of every level equals imagecodecs."""
    pyvips = pytest.importorskip("pyvips")
    import tifffile

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
    assert n > 50


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


def test_old_style_streams_go_to_imagecodecs():
    """Old-style (LSB first, pre-TIFF 6) LZW starts with bytes 0x00 0x01, which libtiff and
    imagecodecs read as such; mint's decoder takes new-style streams only."""
    assert tiff_tiles._old_style_lzw(b"\x00\x01\x02")
    assert not tiff_tiles._old_style_lzw(imagecodecs.lzw_encode(b"abc"))
    assert not tiff_tiles._old_style_lzw(b"\x00")
