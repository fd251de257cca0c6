"""Spot/grid patch extraction: `mint tile`'s reader against hestcore's patcher, side by side.

    .venv/bin/python benchmarks/tiling.py [--quick] [--threads 1,2] [--repeats 3] [--rss]
        [--slides V025,...] [--compression lzw|deflate|deflate-no-predictor] [--out-dir DIR]

hestcore (``pip install --no-deps hestcore`` plus geopandas, which its ``wsi`` module imports) is
a benchmark-only dependency: the comparison is skipped with a message when it is missing.

Slides: the same physical texture (``tests/alignment.py``: plane waves defined in micrometres)
written as pyramidal TIFFs (``mint.synth.tiff``, 256 px tiles, /2 levels) at 0.25, 0.5,
0.65, 0.8 and 1.0 um/px with Visium-like spots (hexagonal, 100 um pitch, fractional centres as
real Visium), and a Xenium-like slide at 0.2125 um/px tiled as a grid of 527 px boxes (the grid
``mint tile`` and HEST's patcher both use for 224 px at 0.5 um/px). Every patch is 224 px at
0.5 um/px. Tiles are stored as HEST stores its slides (``hest.utils.tiff_save``, libvips
``tiffsave``): LZW with the horizontal predictor (``--compression lzw``, the default), or
deflate with it (HEST's writer before HEST-lib 1.1.0); ``deflate-no-predictor`` is the format
this benchmark wrote before 2026-11-30 (mint's reader decoded only that directly, so its
figures were not those of a HEST slide). Each format has its own folder under ``--out-dir``.

Methods, each in a fresh process per run (so peak RSS, VmHWM, is per method), same spots:

* ``hestcore``: ``OpenSlideWSIPatcher`` exactly as HEST's ``HESTData.dump_patches`` builds it
  (top-left ``(centre - size // 2).astype(int)``, best pyramid level, ``read_region``,
  ``cv2.resize``), iterated patch by patch; tissue masking off for both.
* ``mint``: ``mint.data.tiling.read_patches`` (the reader ``mint tile`` streams into its h5
  file) with the exact fractional boxes ``mint tile`` computes (``--threads`` reader threads).

Speed is patches per CPU-second (= per core; robust to other jobs on a shared box) and patches
per wall-second of the extraction: opening the slide and reading every patch. Module imports (for mint
including ``openslide`` and ``tifffile``, which the reader imports on first use) are timed
separately and left out of the ratio (hestcore's ``wsi`` module imports geopandas, ~0.5
CPU-s, which on these small slides would weigh as much as the extraction itself; on a real slide
with thousands of spots it is noise). Each (slide, method) runs ``--repeats`` times in
alternating order, the best counts. ``--threads 1,2`` runs mint once per thread count (hestcore's
patcher has no threads); the ratio uses the first count. The centring error is measured outside the timed loop on 12 patches per slide
spread over the slide: the sub-pixel shift (tests/alignment.py ``offset_xy``) between the patch and
the ideal patch rendered from the texture at the box centre the method was asked for. The last
line is ``min ratio vs hestcore: X.XX`` (mint / hestcore patches per CPU-second, smallest slide).

Memory (full run, or ``--rss``): peak RSS of one run of each method on the 0.25 um/px slide at
three extents, with the decoded size of the level mint reads (its tile cache keeps up to 128 MiB).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

PATCH = 224
TARGET_UM = 0.5
SPOT_PITCH_UM = 100.0
N_CHECK = 12
#: patches per batch, as `mint tile` reads them (TileConfig.batch)
BATCH = 32
#: name -> (pixel size um/px, layout)
SLIDES = {
    "V025": (0.25, "spot"),
    "V050": (0.5, "spot"),
    "V065": (0.65, "spot"),
    "V080": (0.8, "spot"),
    "V100": (1.0, "spot"),
    "X0212": (0.2125, "grid"),
}
#: slide extent (um): full run, --quick
EXTENT_UM = {"full": (3000.0, 2400.0), "mid": (2000.0, 1600.0), "quick": (1000.0, 800.0)}
#: the memory check: slide and extents (mint reads level 1: 10, 38 and 86 MB of RGB)
RSS_SLIDE, RSS_EXTENTS = "V025", ("quick", "mid", "full")
#: --compression: the tiles' codec and predictor (write_pyramidal_tiff's compression, predictor)
CODECS = {
    "lzw": ("lzw", True),  # HEST's writer since HEST-lib 1.1.0 (libvips, default predictor)
    "deflate": ("deflate", True),  # HEST's writer before
    "deflate-no-predictor": ("deflate", False),  # this benchmark's slides until 2026-11-30
}


def slide_spec(sid: str) -> tuple[float, str]:
    """(pixel size, layout) of a slide name: one of SLIDES, or ``V`` and three digits for a
    spot slide at digits / 100 um/px (``V090``: 0.9 um/px), to place a ratio between two rows."""
    if sid in SLIDES:
        return SLIDES[sid]
    m = re.fullmatch(r"V(\d{3})", sid)
    if m and int(m.group(1)) > 0:
        return int(m.group(1)) / 100, "spot"
    raise SystemExit(f"--slides: unknown slide {sid!r} (one of {', '.join(SLIDES)}, or V and "
                     "three digits: a spot slide at that many hundredths of a um/px)")  # fmt: skip


def slide_path(d: Path, sid: str) -> Path:
    return d / f"{sid}.tif"


def make_slide(d: Path, sid: str, ps: float, w_um: float, h_um: float, codec: str) -> None:
    """The texture sampled at level-0 pixel centres, written once (kept in `d` between runs)."""
    from alignment import render_um

    from mint.synth.tiff import write_pyramidal_tiff

    path = slide_path(d, sid)
    if path.exists():
        return

    def tile_fn(y0: int, x0: int, h: int, w: int) -> np.ndarray:
        return render_um((np.arange(y0, y0 + h) + 0.5) * ps, (np.arange(x0, x0 + w) + 0.5) * ps)

    d.mkdir(parents=True, exist_ok=True)
    compression, predictor = CODECS[codec]
    write_pyramidal_tiff(
        path, int(h_um / ps), int(w_um / ps), tile_fn, ps,
        compression=compression, predictor=predictor,
    )  # fmt: skip


def layout(sid: str, w_um: float, h_um: float) -> dict:
    """Boxes both methods are asked for (level-0 px) and the centre (um) each should have."""
    ps, kind = slide_spec(sid)
    side = PATCH * TARGET_UM / ps
    if kind == "spot":
        rng = np.random.default_rng(7)
        pitch_y = SPOT_PITCH_UM * np.sqrt(3) / 2
        m = 60.0  # margin (um): every patch inside the slide
        rows = np.arange(m + 3.3, h_um - m, pitch_y)
        pts = [
            (x, y)
            for i, y in enumerate(rows)
            for x in np.arange(m + 1.7 + (SPOT_PITCH_UM / 2) * (i % 2), w_um - m, SPOT_PITCH_UM)
        ]
        c_um = np.array(pts) + rng.uniform(-2, 2, (len(pts), 2))  # registration: off-grid
        c_px = c_um / ps
        return {
            "kind": kind,
            "centre_um": c_um,
            "mint_boxes": c_px - side / 2,  # exact, as mint tile's spot path
            "mint_side": side,
            # HEST dump_patches: coords_center - patch_size_src // 2, then astype(int)
            "hest_tops": (c_px - side // 2).astype(int),
        }
    s = int(round(side))  # the integer grid step both tilers use
    nx, ny = int(w_um / ps) // s, int(h_um / ps) // s
    gx, gy = np.meshgrid(np.arange(nx), np.arange(ny))
    tops = np.column_stack([gx.ravel() * s, gy.ravel() * s]).astype(np.int64)
    return {
        "kind": kind,
        "centre_um": (tops + s / 2) * ps,
        "mint_boxes": tops,
        "mint_side": float(s),
        "hest_tops": tops,
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; ru_maxrss would include the parent's)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(method: str, d: Path, sid: str, threads: int, extent: str) -> dict:
    """Extract every patch of `sid` with `method` in this process; return the figures."""
    from alignment import offset_xy, truth_patch

    ps, _ = slide_spec(sid)
    lay = layout(sid, *EXTENT_UM[extent])
    path = slide_path(d, sid)
    n = len(lay["centre_um"])
    check = set(np.linspace(0, n - 1, N_CHECK).round().astype(int).tolist())
    kept: dict[int, np.ndarray] = {}
    with open(path, "rb") as fh:  # warm the page cache the same way for every method
        while fh.read(1 << 24):
            pass
    c_imp = time.process_time()
    if method == "hestcore":
        import openslide
        from hestcore.wsi import OpenSlideWSI, OpenSlideWSIPatcher
    elif method == "mint":
        import openslide  # noqa: F401  (imported by the reader on first use)
        import tifffile  # noqa: F401  (idem)

        from mint.data.tiling import read_patches
        from mint.data.wsi import WSI
    else:
        raise SystemExit(f"unknown method {method}")
    c0, t0 = time.process_time(), time.perf_counter()
    import_cpu = c0 - c_imp
    if method == "hestcore":
        wsi = OpenSlideWSI(openslide.OpenSlide(str(path)))
        patcher = OpenSlideWSIPatcher(
            wsi, PATCH, src_pixel_size=ps, dst_pixel_size=TARGET_UM, custom_coords=lay["hest_tops"]
        )
        for i, (tile, _, _) in enumerate(patcher):
            if i in check:
                kept[i] = tile.copy()
        wsi.img.close()
    else:
        with WSI(path, ps, sid) as wsi:
            for start, imgs in read_patches(
                wsi, lay["mint_boxes"], lay["mint_side"], PATCH, threads, BATCH, progress=False
            ):
                for i in check.intersection(range(start, start + len(imgs))):
                    kept[i] = imgs[i - start].copy()
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    rss = peak_rss_mb()
    errs = []
    for i, patch in sorted(kept.items()):
        dx, dy = offset_xy(truth_patch(*lay["centre_um"][i]), patch, upsample=100)
        errs.append(float(np.hypot(dx, dy)))
    return {
        "method": method,
        "sample": sid,
        "n": n,
        "wall_s": wall,
        "cpu_s": cpu,
        "import_cpu_s": import_cpu,
        "peak_rss_mb": rss,
        "centre_err_max": max(errs),
        "centre_err_mean": float(np.mean(errs)),
    }


def _run_child(base: Path, method: str, sid: str, threads: int, extent: str) -> dict:
    cmd = [sys.executable, __file__, "--out-dir", str(base / extent), "--child", method, sid,
           str(threads), extent]  # fmt: skip
    env = {**os.environ, "MINT_NO_PROGRESS": "1"}
    if threads == 1:  # one core: no hidden BLAS/OpenCV helper threads in either method
        env.update(OMP_NUM_THREADS="1", OPENCV_FOR_THREADS_NUM="1")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _rss_check(base: Path, threads: int, codec: str) -> None:
    """Peak RSS of one run per method on RSS_SLIDE at each of RSS_EXTENTS (memory vs slide size).

    "read MB": the decoded (RGB) size of the pyramid level mint reads the patches from; mint keeps
    decoded tiles, as RGB, up to its 128 MiB cache, so its peak grows with this until the cap,
    then stays.
    """
    from mint.data.wsi import WSI

    ps = SLIDES[RSS_SLIDE][0]
    print(
        f"peak RSS vs slide size ({RSS_SLIDE}, {ps} um/px, one run each; mint's tile cache: 128 MiB)"
    )
    print(f"{'extent um':>11} {'level-0 px':>12} {'read MB':>8} {'hestcore MB':>12} {'mint MB':>8}")
    for ext in RSS_EXTENTS:
        w_um, h_um = EXTENT_UM[ext]
        make_slide(base / ext, RSS_SLIDE, ps, w_um, h_um, codec)
        with WSI(slide_path(base / ext, RSS_SLIDE), ps, RSS_SLIDE) as wsi:
            lw, lh = wsi.level_dimensions[wsi.best_level(PATCH * TARGET_UM / ps / PATCH)]
            w, h = wsi.dimensions
        r = {m: _run_child(base, m, RSS_SLIDE, threads, ext) for m in ("hestcore", "mint")}
        print(
            f"{w_um:5g}x{h_um:<5g} {w:>5d}x{h:<6d} {lw * lh * 3 / 1e6:8.0f} "
            f"{r['hestcore']['peak_rss_mb']:12.1f} {r['mint']['peak_rss_mb']:8.1f}"
        )


def _resample_costs(d: Path, sids: list[str], n: int = 2000) -> None:
    """Microseconds a patch of the resampling step alone, one thread, warm data: mint's exact
    sub-pixel bilinear pass (`mint.data.wsi.resample` on the RGB region, into the patch, as
    read_box) against hestcore's `cv2.resize` of its integer RGB box (called even when the
    size does not change, as its patcher does), on the same pixels. The resize cannot shift
    the patch by a fraction of a pixel; mint's pass places it exactly."""
    import cv2
    import openslide

    from mint.data.wsi import WSI, resample

    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)
    print("resampling alone, us a patch (one thread; mint: the level it reads, hestcore: its own)")
    for sid in sids:
        ps, kind = slide_spec(sid)
        if kind != "spot":
            continue
        side = PATCH * TARGET_UM / ps
        # the box side at the level each method reads from this slide: mint's best_level,
        # hestcore's OpenSlide best level for its downsample, its integer side there
        with WSI(slide_path(d, sid), ps, sid) as wsi:
            m_side = side / wsi.level_scales[wsi.best_level(side / PATCH)][0]
        with openslide.OpenSlide(str(slide_path(d, sid))) as slide:
            h_src = round(PATCH * TARGET_UM / ps)
            level = slide.get_best_level_for_downsample(TARGET_UM / ps)
            h_side = round(h_src / slide.level_downsamples[level])
        region = rng.integers(
            0, 256, (int(np.ceil(m_side)) + 3, int(np.ceil(m_side)) + 3, 3), np.uint8
        )
        out = np.empty((PATCH, PATCH, 3), np.uint8)
        box = np.ascontiguousarray(region[:h_side, :h_side])  # hestcore's RGB read_region

        t = {}
        for name in ("mint", "hestcore", "mint", "hestcore"):  # warm-up round, then timed
            c = time.process_time()
            for _ in range(n):
                if name == "mint":
                    resample(region, 1.37, 1.61, m_side, m_side, PATCH, PATCH, out)
                else:
                    cv2.resize(box, (PATCH, PATCH))[:, :, :3]
            t[name] = (time.process_time() - c) / n * 1e6
        print(f"{sid:6} {ps:6.4g} um/px  mint {t['mint']:6.1f}  hestcore {t['hestcore']:6.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small slides (about 1 minute)")
    ap.add_argument(
        "--threads", default="1", help="mint reader threads, comma list (1,2): one row each"
    )
    ap.add_argument(
        "--repeats", type=int, default=None, help="runs per method, best counts (3; --quick 2)"
    )
    ap.add_argument(
        "--slides",
        default=",".join(SLIDES),
        help="comma list of "
        + ",".join(SLIDES)
        + " or V and three digits (V090: spot slide at 0.9 um/px)",
    )
    ap.add_argument(
        "--rss", action="store_true", help="memory vs slide size check (always in a full run)"
    )
    ap.add_argument(
        "--compression",
        choices=list(CODECS),
        default="lzw",
        help="how the slides' tiles are stored: lzw (HEST's format, default), deflate (HEST's "
        "before HEST-lib 1.1.0), deflate-no-predictor (this benchmark's before 2026-11-30)",
    )
    ap.add_argument("--out-dir", type=Path, default=Path("/tmp/mint-bench-tiling-hest"))
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        method, sid, threads, extent = args.child
        print(json.dumps(child(method, args.out_dir, sid, int(threads), extent)))
        return
    try:
        import hestcore.wsi  # noqa: F401
    except ImportError as exc:
        print(
            f"hestcore's patcher is not importable ({exc}); install it for the benchmark only: "
            "pip install --no-deps hestcore geopandas. Skipping the comparison."
        )
        return
    threads = [int(t) for t in args.threads.split(",") if t.strip()]
    if not threads or min(threads) < 1:
        raise SystemExit(f"--threads: positive integers, got {args.threads!r}")
    extent = "quick" if args.quick else "full"
    args.repeats = args.repeats or (2 if args.quick else 3)
    w_um, h_um = EXTENT_UM[extent]
    sids = [s.strip() for s in args.slides.split(",") if s.strip()]
    base = args.out_dir / args.compression
    t_make = time.perf_counter()
    for sid in sids:
        make_slide(base / extent, sid, slide_spec(sid)[0], w_um, h_um, args.compression)
    t_make = time.perf_counter() - t_make
    methods = [("hestcore", 1)] + [("mint", t) for t in threads]
    best: dict[tuple[str, str, int], dict] = {}
    for rep in range(args.repeats):
        order = methods if rep % 2 == 0 else methods[::-1]
        for sid in sids:
            for method, t in order:
                r = _run_child(base, method, sid, t, extent)
                old = best.setdefault((sid, method, t), r)
                for k in ("wall_s", "cpu_s", "import_cpu_s"):
                    old[k] = min(old[k], r[k])
                old["peak_rss_mb"] = max(old["peak_rss_mb"], r["peak_rss_mb"])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"slides {w_um:g} x {h_um:g} um; patch {PATCH} px @ {TARGET_UM} um/px; mint threads="
        f"{','.join(map(str, threads))}; best of {args.repeats} alternating runs; "
        f"cpus={os.cpu_count()}; load(1 min)={load:.1f}; slides written in {t_make:.0f} s"
    )
    compression, predictor = CODECS[args.compression]
    print(
        f"tiles: 256 px, {compression}, {'horizontal' if predictor else 'no'} predictor"
        f"{' (as HEST writes its slides)' if args.compression == 'lzw' else ''}"
    )
    if compression == "lzw":
        from mint.data import tiff_tiles

        print(
            "mint's LZW decoder: "
            + ("mint.data._lzw" if tiff_tiles._lzw else f"imagecodecs ({tiff_tiles._NO_LZW})")
        )
    from mint.data import wsi as wsi_mod

    print(
        "mint's bilinear pass: "
        + ("mint.data._resample" if wsi_mod._RESAMPLER else "OpenCV's warpAffine (fallback)")
    )
    print("per CPU-s, wall /s: patches per CPU-second and per wall-second of opening the slide and")
    print("reading every patch; import CPU-s: the method's module imports, not in the ratios")
    print(
        f"{'slide':6} {'um/px':>6} {'layout':6} {'patches':>7} {'method':9} {'per CPU-s':>10} "
        f"{'wall /s':>9} {'import CPU-s':>12} {'peak RSS MB':>11} {'centre err px (max/mean)':>25}"
    )
    ratios = {}
    for sid in sids:
        ps, kind = slide_spec(sid)
        for method, t in methods:
            r = best[(sid, method, t)]
            name = method if method == "hestcore" else f"mint t={t}"
            print(
                f"{sid:6} {ps:6.4g} {kind:6} {r['n']:7d} {name:9} {r['n'] / r['cpu_s']:10.1f} "
                f"{r['n'] / r['wall_s']:9.1f} {r['import_cpu_s']:12.2f} {r['peak_rss_mb']:11.1f} "
                f"{r['centre_err_max']:15.3f} / {r['centre_err_mean']:.3f}"
            )
        h = best[(sid, "hestcore", 1)]
        for t in threads:
            m = best[(sid, "mint", t)]
            if t == threads[0]:
                ratios[sid] = h["cpu_s"] / m["cpu_s"]
            with_imports = (h["cpu_s"] + h["import_cpu_s"]) / (m["cpu_s"] + m["import_cpu_s"])
            print(
                f"{sid:6} mint t={t} / hestcore: {h['cpu_s'] / m['cpu_s']:.2f}x per CPU-s, "
                f"{h['wall_s'] / m['wall_s']:.2f}x wall ({with_imports:.2f}x per CPU-s with imports)"
            )
    if len(threads) > 1:
        print(f"threads: mint wall-clock patches/s relative to {threads[0]} thread(s), per slide")
        for sid in sids:
            w0 = best[(sid, "mint", threads[0])]["wall_s"]
            gains = ", ".join(
                f"t={t}: {w0 / best[(sid, 'mint', t)]['wall_s']:.2f}x" for t in threads
            )
            print(f"{sid:6} {gains}")
    _resample_costs(base / extent, sids)
    if args.rss or not args.quick:
        _rss_check(base, threads[0], args.compression)
    print(f"min ratio vs hestcore: {min(ratios.values()):.2f}")


if __name__ == "__main__":
    main()
