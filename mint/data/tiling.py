"""`mint tile`: cut one HEST sample into 224 px patches at 0.5 um/px with expression targets.

Two ways to pair pixels with expression, by technology (`mint.hest.metadata.level_of`), each
in its own module that returns the patches' boxes and targets (:class:`mint.data.tiles.Targets`):

* **spot level** (Visium, legacy ST, Visium HD pooled spots), :mod:`mint.data.spots`: one
  patch centred exactly on each spot; target = the spot's raw counts.
* **patch level** (Xenium), :mod:`mint.data.xenium`: a grid of non-overlapping patches over
  the transcripts' capture area and the tissue; target = the counts of the cells whose
  centroid lies in the patch (``cells``) or of the transcripts inside it (``transcripts``).

Patch pixels are read through :class:`mint.data.wsi.WSI` (best pyramid level, one handle shared
by ``--threads`` reader threads, raster order for tile-cache hits) and streamed into the output
file batch by batch, so memory does not depend on the number of patches.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from mint.data.spots import spot_targets
from mint.data.tiles import TileWriter
from mint.data.tissue import tissue_mask
from mint.data.wsi import WSI, check_pixel_size
from mint.data.xenium import xenium_targets
from mint.errors import MintError
from mint.io import atomic_path

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# configuration and inputs
# --------------------------------------------------------------------------------------------
@dataclass
class TileConfig:
    patch_size: int = 224
    pixel_size_um: float = 0.5
    min_tissue: float = 0.15
    xenium_target: str = "cells"  # or "transcripts"
    min_qv: float = 20.0
    keep_controls: bool = False
    threads: int = 1
    batch: int = 32
    progress: bool = True


@dataclass
class SampleInfo:
    sample_id: str
    technology: str
    pixel_size_um: float
    level: str  # "spot" | "patch"
    modality: str  # "visium" | "xenium"
    organ: str = ""
    oncotree_code: str = ""


@dataclass
class SamplePaths:
    """HEST-1k file layout of one sample (optional files may not exist)."""

    wsi: Path
    st: Path
    contours: Path
    transcripts: Path
    cell_seg: Path

    @classmethod
    def from_hest_dir(cls, hest_dir: str | os.PathLike, sample_id: str) -> SamplePaths:
        """The paths of `mint.hest.layout` (the one place that names HEST's files)."""
        from mint.hest.layout import sample_file

        def path(key: str) -> Path:
            return Path(sample_file(key, sample_id, hest_dir))

        return cls(
            wsi=path("wsi"),
            st=path("st"),
            contours=path("contours"),
            transcripts=path("transcripts"),
            cell_seg=path("cell_seg"),
        )


# --------------------------------------------------------------------------------------------
# pixels and output
# --------------------------------------------------------------------------------------------
def read_patches(
    wsi: WSI,
    tops: np.ndarray,
    size_src: float,
    out_size: int,
    threads: int,
    batch: int,
    progress: bool = True,
    desc: str = "patches",
):
    """Yield (start, uint8 (b, out, out, 3)) batches of patches in `tops` order.

    `tops` (level-0 top-left x, y) and `size_src` (level-0 side) may be fractional: the box
    is resampled exactly (:meth:`WSI.read_box`), so a spot patch is centred on the spot to a
    small fraction of an output pixel. Whole-pixel boxes take the reader's crop/resize path.
    Batch arrays are reused: a batch stays valid until the next-but-one is requested.
    With `threads` > 1 the next two batches are read while this one is with the caller.
    After each batch the reader drops the decoded tiles above every patch still to come
    (:meth:`WSI.forget_above`): in raster order (``mint tile``'s) memory holds a band of
    tiles across the slide, not the slide; in any other order nothing is read twice either.

    Parallelism is the `threads` reader threads only: OpenCV's own thread pool is set to one
    thread while patches are read (and restored after), because splitting one 224 px resize over
    all cores costs more CPU than it saves and would make ``--threads 1`` use every core.
    """
    n = len(tops)
    pool = ThreadPoolExecutor(max_workers=threads) if threads > 1 else None
    bar = tqdm(total=n, desc=desc, unit="patch", disable=not progress)
    cv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)

    side = float(size_src)
    xy = np.asarray(tops, np.float64).tolist()  # Python floats once, not per patch
    n_batches = -(-n // batch)
    # The smallest top of the patches after batch k: once batch k is read, the reader may drop
    # the decoded tiles above it (raster order: memory holds a band of the slide, not the slide)
    later_top = [math.inf] * n_batches
    for k in range(n_batches - 2, -1, -1):
        later_top[k] = min(
            later_top[k + 1], min(y for _, y in xy[(k + 1) * batch : (k + 2) * batch])
        )

    def done_with(k: int) -> None:
        if later_top[k] < math.inf:
            wsi.forget_above(later_top[k], side, side, out_size, out_size)

    # Buffers used in turn, each patch written straight into its slot: the caller may still be
    # writing the previous batch (in a thread) while this one is read. Reader threads keep
    # `ahead` batches queued, so that none idles at the end of a batch waiting for the others
    # (two more buffers).
    ahead = 2 if pool else 0
    bufs = [np.empty((min(batch, n), out_size, out_size, 3), np.uint8) for _ in range(2 + ahead)]

    def fill_run(ids, buf: np.ndarray) -> None:
        for i in ids:
            x, y = xy[i]
            wsi.read_box(x, y, side, side, out_size, out_size, out=buf[i % batch])

    def start_batch(k: int) -> list:
        """Queue batch k as one task per thread, not one per patch (a task costs about as much
        as a 1 um/px patch): the batch cut into vertical strips, each thread's patches in the
        given order. A batch spans a few rows of spots; strips side by side need the same
        tile only at their border, where rows cut in halves would share every tile (a tile is
        decoded once: the other thread waits for it)."""
        lo, hi = k * batch, min(n, (k + 1) * batch)
        by_x = sorted(range(lo, hi), key=lambda i: xy[i][0])
        step = -(-(hi - lo) // threads)
        return [pool.submit(fill_run, sorted(by_x[a : a + step]), bufs[k % len(bufs)])
                for a in range(0, hi - lo, step)]  # fmt: skip

    try:
        queued = [start_batch(k) for k in range(min(ahead, n_batches))]
        for k in range(n_batches):
            lo, hi = k * batch, min(n, (k + 1) * batch)
            buf = bufs[k % len(bufs)]
            if pool:
                for run in queued.pop(0):
                    run.result()
                done_with(k)  # batch k + 1 (queued), k + 2 (next) start at later_top[k] or below
                if k + ahead < n_batches:  # into the buffer of batch k - 2, released now
                    queued.append(start_batch(k + ahead))
            else:
                fill_run(range(lo, hi), buf)
                done_with(k)
            yield lo, buf[: hi - lo]
            bar.update(hi - lo)
    finally:
        bar.close()
        if pool:
            pool.shutdown(cancel_futures=True)  # waits for runs already reading
        cv2.setNumThreads(cv_threads)


def tile_sample(info: SampleInfo, paths: SamplePaths, out: Path, cfg: TileConfig) -> dict:
    """Write the tile file of one sample atomically; returns its attributes."""
    check_pixel_size(info.pixel_size_um, info.sample_id, "metadata")
    if info.level not in ("spot", "patch"):
        raise MintError(f"{info.sample_id}: unknown tiling level {info.level!r}")
    wsi = WSI(paths.wsi, info.pixel_size_um, info.sample_id)
    with wsi:
        mask = tissue_mask(wsi, paths.contours)
        make = spot_targets if info.level == "spot" else xenium_targets
        t = make(info, paths, wsi, mask, cfg)
        n = len(t.barcodes)
        attrs = dict(
            sample_id=info.sample_id,
            pixel_size_um=float(wsi.pixel_size_um),
            target_pixel_size_um=float(cfg.pixel_size_um),
            patch_size_px=int(cfg.patch_size),
            technology=info.technology,
            level=info.level,
            modality=info.modality,
            organ=info.organ or "",
            oncotree_code=info.oncotree_code or "",
            xenium_target=cfg.xenium_target if info.level == "patch" else "",
            min_tissue=float(cfg.min_tissue),
            min_qv=float(cfg.min_qv) if info.level == "patch" else -1.0,
            tissue_source=mask.source,
            n_patches=n,
            **t.stats,
        )
        size_src = int(t.stats["size_src_px"])
        boxes = t.tops if t.boxes is None else t.boxes
        side = float(size_src if t.box_size is None else t.box_size)
        log.info(
            "%s: %d patches (%s level, %d level-0 px -> %d px), %d genes; pixels from %s",
            info.sample_id,
            n,
            info.level,
            size_src,
            cfg.patch_size,
            len(t.genes),
            wsi.pixel_source,
        )
        with (
            ThreadPoolExecutor(max_workers=1) as writer,
            atomic_path(out) as tmp,
            TileWriter(tmp, n, cfg.patch_size, t.genes, t.barcodes, t.tops, attrs, t.n_cells) as w,
        ):
            step = 256
            for start in range(0, n, step):
                w.write_expr(start, t.expr_rows(start, min(n, start + step)))
            pending = None
            try:
                for start, imgs in read_patches(
                    wsi,
                    boxes,
                    side,
                    cfg.patch_size,
                    max(1, cfg.threads),
                    cfg.batch,
                    cfg.progress,
                    desc=info.sample_id,
                ):
                    # Write in a thread while the next batch is read (one write in flight).
                    if pending is not None:
                        pending.result()
                    pending = writer.submit(w.write_img, start, imgs)
                if pending is not None:
                    pending.result()
            finally:
                if pending is not None:  # never close the file under a running write
                    wait([pending])
    return attrs


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    from mint.settings import add_options

    p.add_argument("--sample", required=True, help="HEST sample id")
    p.add_argument("--hest-dir", required=True, type=Path, help="HEST-1k folder (wsis/, st/, ...)")
    p.add_argument("--metadata", required=True, type=Path, help="HEST metadata CSV")
    p.add_argument("--out", required=True, type=Path, help="output tile file (.h5)")
    # --patch-size, --pixel-size, ...: TileConfig's fields and defaults (mint.settings)
    add_options(p, "tile")


def run(args: argparse.Namespace) -> int:
    from mint.hest.metadata import level_of, modality_of, read_metadata, sample_row
    from mint.logging_utils import progress_enabled
    from mint.settings import from_args

    df = read_metadata(args.metadata)
    row = sample_row(df, args.sample)
    tech = str(row.get("st_technology", ""))
    info = SampleInfo(
        sample_id=args.sample,
        technology=tech,
        pixel_size_um=check_pixel_size(
            row.get("pixel_size_um_estimated"), args.sample, str(args.metadata)
        ),
        level=level_of(tech),
        modality=modality_of(tech),
        organ=_clean(row.get("organ")),
        oncotree_code=_clean(row.get("oncotree_code")),
    )
    cfg = from_args("tile", args, progress=progress_enabled())
    if cfg.patch_size < 1 or cfg.pixel_size_um <= 0:
        raise MintError(f"{args.sample}: --patch-size and --pixel-size must be positive")
    tile_sample(info, SamplePaths.from_hest_dir(args.hest_dir, args.sample), args.out, cfg)
    return 0


def _clean(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return str(v)
