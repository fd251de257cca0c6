"""Child process of tests/test_sanitizers.py: drives the C extensions built with AddressSanitizer
and UBSan (in the folder given as argv[1]) with random, odd-shaped and damaged input.

Every buffer is a NumPy array of its own exact-size allocation (bytes and bytearray objects
carry a spare NUL byte after their data, which would hide a read or write one byte too far), so
any access past it aborts this process with a report. The results are checked as well, so a
sanitized build that computes something else also fails.
"""

from __future__ import annotations

import random
import sys

import imagecodecs
import numpy as np

sys.path.insert(0, sys.argv[1])
import _lzw  # noqa: E402  (the sanitized builds, not mint.data's)
import _resample  # noqa: E402
from alignment import BILINEAR_BOUND, bilinear_exact  # noqa: E402


def exact(data: bytes) -> np.ndarray:
    """`data` in an allocation of exactly its size."""
    return np.frombuffer(data, np.uint8).copy()


def resampler(trials: int) -> int:
    rng = np.random.default_rng(11)
    checked = 0
    for trial in range(trials):
        ch = int(rng.integers(1, 5))
        h, w = (int(v) for v in rng.integers(1, 70, 2))
        src = rng.integers(0, 256, (h, w, ch), np.uint8)  # its own allocation
        if rng.random() < 0.3:  # rows apart: a view of a larger image
            big = rng.integers(0, 256, (h + 3, w + 5, ch), np.uint8)
            y0, x0 = int(rng.integers(0, 4)), int(rng.integers(0, 6))
            src = big[y0 : y0 + h, x0 : x0 + w]
        oh, ow = (int(v) for v in rng.integers(1, 90, 2))
        sx, sy = (float(v) for v in rng.uniform(0.05, 6.0, 2))
        x, y = (float(v) for v in rng.uniform(-50, [w + 50, h + 50]))
        if rng.random() < 0.05:  # far outside: every sample clamped to the border
            x = float(rng.choice([1e300, -1e300, 1e18]))
        dst = np.empty((oh, ow, ch), np.uint8)
        assert isinstance(_resample.vector_path(w, ow, ch, x, sx), bool)  # plans and frees
        for simd in (True, False):
            _resample.bilinear(src, dst, x, y, sx, sy, simd=simd)
            if abs(x) < 1e6:
                ref = bilinear_exact(np.ascontiguousarray(src), x, y, sx, sy, oh, ow)
                err = float(np.abs(dst - ref).max())
                assert err <= BILINEAR_BOUND, (trial, simd, src.shape, oh, ow, x, y, sx, sy, err)
                checked += 1
    return checked


def lzw(trials: int) -> tuple[int, int]:
    rng = random.Random(1)
    raws = [
        bytes(rng.randrange(4) for _ in range(5000)),  # H&E-like: few values, long strings
        bytes([7]) * 20000,  # one run: the code that adds itself
        bytes(rng.randrange(256) for _ in range(30000)),  # noise: table resets
        b"ab" * 5000 + bytes(range(256)) * 20,
        *(bytes(rng.randrange(3) for _ in range(n)) for n in (1, 2, 3, 7, 8, 9, 15, 16, 17, 100)),
    ]
    decoded = refused = 0
    for raw in raws:
        enc = exact(imagecodecs.lzw_encode(raw))
        for size in (len(raw), len(raw) + 1, len(raw) + 100, *range(min(len(raw), 40))):
            out = np.empty(size, np.uint8)
            got = _lzw.decode(enc, out)
            n = min(size, len(raw))
            assert got == n and out[:n].tobytes() == raw[:n], (len(raw), size, got)
        for _ in range(trials):
            m = bytearray(enc.tobytes())
            kind = rng.randrange(4)
            if kind == 0:  # flipped bits
                for _ in range(rng.randrange(1, 5)):
                    m[rng.randrange(len(m))] ^= 1 << rng.randrange(8)
            elif kind == 1:  # cut short
                m = m[: rng.randrange(len(m) + 1)]
            elif kind == 2:  # garbage
                m = bytearray(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
            else:  # bytes inserted
                i = rng.randrange(len(m))
                m[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 20)))
            for size in (len(raw), rng.randrange(1, 64), len(raw) * 3):
                out = np.empty(size, np.uint8)
                try:
                    got = _lzw.decode(exact(bytes(m)), out)
                except ValueError:
                    refused += 1
                    continue
                assert 0 <= got <= size
                decoded += 1
    for w, s in ((256, 3), (17, 3), (5, 1), (9, 4), (1, 3)):  # TIFF's horizontal predictor
        a = np.random.default_rng(0).integers(0, 256, (7, w, s), np.uint8)
        ref = a.copy()
        imagecodecs.delta_decode(ref, axis=-2, out=ref)
        out = np.empty_like(a)
        enc = exact(imagecodecs.lzw_encode(a.tobytes()))
        assert _lzw.decode(enc, out.reshape(-1), w, s, True) == a.size
        np.testing.assert_array_equal(out, ref)
    return decoded, refused


if __name__ == "__main__":
    trials = int(sys.argv[2])
    print("resampler calls checked:", resampler(trials))
    decoded, refused = lzw(trials // 4)
    print(f"lzw streams decoded, refused: {decoded}, {refused}")
