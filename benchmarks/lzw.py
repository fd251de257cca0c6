"""LZW tile decoding: mint's decoder (mint.data._lzw) against imagecodecs and libtiff.

    .venv/bin/python benchmarks/lzw.py [--slides V050,V100,X0212] [--repeats 5] [TIFF ...]

HEST stores its slides as LZW tiles with the horizontal predictor (``hest.utils.tiff_save``),
and decoding them was 65-80% of ``mint tile``'s cost a patch with imagecodecs. Each decoder
gets the level-0 tiles of the same slides, one thread, and must undo the predictor:

* ``mint``: ``mint.data._lzw.decode`` into a reused tile buffer (what the direct reader runs);
* ``imagecodecs``: ``lzw_decode`` + ``delta_decode`` into the same buffer (tifffile's codecs,
  what mint ran before, and the fallback when the extension is not built);
* ``libtiff``: Pillow's ``Image.load()`` of the whole level-0 page (libtiff decodes every tile
  and undoes the predictor; Pillow copies each tile into place), per tile.

Every tile mint decodes is compared with imagecodecs' bytes and with Pillow's (libtiff's) page.
Slides: ``benchmarks/tiling.py``'s full-size LZW slides (written there first when missing,
under ``--out-dir``), or the TIFF paths given (a real HEST ``wsis/*.tif`` for instance).
Figures are microseconds a 256 px RGB tile (process CPU time, best of ``--repeats``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]


def _tiles(path: Path):
    """(tiles' raw bytes, tile shape, predictor) of level 0."""
    import tifffile

    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        if int(page.compression) != 5 or int(page.samplesperpixel) != 3:
            raise SystemExit(f"{path}: level 0 is not LZW RGB (compression {page.compression})")
        fh = tf.filehandle
        raw = []
        for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
            fh.seek(offset)
            raw.append(fh.read(count))
        return raw, (int(page.tilelength), int(page.tilewidth), 3), int(page.predictor) == 2


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        c0 = time.process_time()
        fn()
        best = min(best, time.process_time() - c0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tiffs", nargs="*", type=Path, help="LZW TIFFs (default: --slides)")
    ap.add_argument("--slides", default="V050,V100,X0212", help="benchmarks/tiling.py slides")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out-dir", type=Path, default=Path("/tmp/mint-bench-tiling-hest"))
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    import imagecodecs
    from PIL import Image, features

    from mint.data import tiff_tiles

    if tiff_tiles._lzw is None:
        raise SystemExit(f"nothing to compare: {tiff_tiles._NO_LZW}")
    paths = list(args.tiffs)
    if not paths:
        from tiling import EXTENT_UM, make_slide, slide_path, slide_spec

        d = args.out_dir / "lzw" / "full"
        for sid in (s.strip() for s in args.slides.split(",") if s.strip()):
            make_slide(d, sid, slide_spec(sid)[0], *EXTENT_UM["full"], "lzw")
            paths.append(slide_path(d, sid))
    Image.MAX_IMAGE_PIXELS = None
    print(
        f"one thread, us a tile (process CPU), best of {args.repeats}; imagecodecs "
        f"{imagecodecs.__version__}, libtiff {features.version('libtiff')} (Pillow "
        f"{Image.__version__})"
    )
    print(f"{'slide':28} {'tiles':>5} {'kB/tile':>7} {'mint':>7} {'imagecodecs':>11} "
          f"{'libtiff':>7} {'imagecodecs/mint':>16} {'libtiff/mint':>12}")  # fmt: skip
    for path in paths:
        _measure(path, args.repeats)


def _measure(path: Path, repeats: int) -> None:
    """One row: mint, imagecodecs and libtiff on the level-0 tiles of `path`, equal bytes."""
    import imagecodecs
    from PIL import Image

    from mint.data import tiff_tiles

    raw, shape, predictor = _tiles(path)
    out, ref = np.empty(shape, np.uint8), np.empty(shape, np.uint8)
    flat = out.reshape(-1)
    for data in raw:  # same bytes as imagecodecs, tile by tile
        n = tiff_tiles._lzw.decode(data, flat, shape[1], 3, predictor)
        imagecodecs.lzw_decode(data, out=ref.reshape(-1))
        if predictor:
            imagecodecs.delta_decode(ref, axis=-2, out=ref)
        if n != flat.size or not np.array_equal(out, ref):
            raise SystemExit(f"{path}: mint's decoder differs from imagecodecs")

    def mint() -> None:
        for data in raw:
            tiff_tiles._lzw.decode(data, flat, shape[1], 3, predictor)

    def codecs() -> None:
        for data in raw:
            imagecodecs.lzw_decode(data, out=ref.reshape(-1))
            if predictor:
                imagecodecs.delta_decode(ref, axis=-2, out=ref)

    def libtiff() -> None:
        with Image.open(path) as im:
            im.load()

    per = 1e6 / len(raw)
    t_mint, t_codecs = _best(mint, repeats) * per, _best(codecs, repeats) * per
    t_libtiff = _best(libtiff, repeats) * per
    with Image.open(path) as im:  # libtiff's page equals mint's tiles
        page = np.asarray(im)
    th, tw = shape[:2]
    for k, data in enumerate(raw):
        ty, tx = divmod(k, -(-page.shape[1] // tw))
        tiff_tiles._lzw.decode(data, flat, tw, 3, predictor)
        part = page[ty * th : (ty + 1) * th, tx * tw : (tx + 1) * tw]
        if not np.array_equal(out[: part.shape[0], : part.shape[1]], part):
            raise SystemExit(f"{path}: mint's decoder differs from libtiff at tile {k}")
    kb = np.mean([len(d) for d in raw]) / 1024
    print(
        f"{path.name[-28:]:28} {len(raw):5d} {kb:7.1f} {t_mint:7.0f} {t_codecs:11.0f} "
        f"{t_libtiff:7.0f} {t_codecs / t_mint:15.2f}x {t_libtiff / t_mint:11.2f}x"
    )


if __name__ == "__main__":
    main()
