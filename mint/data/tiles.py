"""The per-sample tile file `results/tiles/{sample}.h5`: writer and reader.

Layout (HEST's own patch files plus targets, so HEST tooling reads the images as usual):

* ``img``      uint8 (N, P, P, 3)   patches at the target pixel size
* ``coords``   int64 (N, 2)         level-0 top-left (x, y) of each patch
* ``barcode``  bytes (N, 1)         spot barcode, or ``{row:03d}x{col:03d}`` for Xenium patches
* ``expr``     float32 (N, G)       raw counts on the sample's own genes
* ``genes``    bytes (G,)
* ``n_cells``  int32 (N,)           cells per patch (patch level only; -1 = unknown)
* attributes: sample_id, pixel_size_um, target_pixel_size_um, patch_size_px, technology, level,
  modality, organ, oncotree_code, n_spots_total, n_dropped_outside, n_dropped_tissue,
  xenium_target, plus diagnostics.

Images are stored uncompressed in one chunk per patch, so the shard writer's random access
reads exactly one patch; expression is gzip-compressed in small row chunks (mostly zeros).

`Targets` is what a tiling mode (:mod:`mint.data.spots`, :mod:`mint.data.xenium`) hands to the
writer: everything but the pixels, which `mint.data.tiling.tile_sample` reads afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from mint.data.genes import as_str
from mint.errors import MintError

EXPR_CHUNK_ROWS = 16


@dataclass
class Targets:
    """Everything the writer needs except pixels."""

    tops: np.ndarray  # (N, 2) int64 level-0 top-left x, y (the `coords` of the tile file)
    barcodes: list[str]
    genes: list[str]
    expr_rows: Callable[[int, int], np.ndarray]  # (start, stop) -> float32 (n, G)
    n_cells: np.ndarray | None
    stats: dict
    #: (N, 2) float64 exact level-0 top-left of the box to read, and its side; the pixels come
    #: from this box, not from `tops`, so the patch centre is exact (None: read `tops`).
    boxes: np.ndarray | None = None
    box_size: float | None = None


class TileWriter:
    """Creates the datasets at their final size; images and targets are written in slices."""

    def __init__(
        self,
        path: str | os.PathLike,
        n: int,
        patch_size: int,
        genes: Sequence[str],
        barcodes: Sequence[str],
        coords: np.ndarray,
        attrs: dict,
        n_cells: np.ndarray | None = None,
    ):
        self.f = h5py.File(path, "w")
        f = self.f
        g = len(genes)
        f.create_dataset(
            "img",
            shape=(n, patch_size, patch_size, 3),
            dtype=np.uint8,
            chunks=(1, patch_size, patch_size, 3) if n else None,
        )
        f.create_dataset("coords", data=np.asarray(coords, np.int64).reshape(n, 2))
        bc = np.array([b.encode() for b in barcodes], dtype=f"S{max([1, *map(len, barcodes)])}")
        f.create_dataset("barcode", data=bc.reshape(n, 1))
        f.create_dataset(
            "expr",
            shape=(n, g),
            dtype=np.float32,
            chunks=(min(n, EXPR_CHUNK_ROWS), g) if n and g else None,
            compression="gzip" if n and g else None,
            compression_opts=4 if n and g else None,
        )
        gn = np.array([s.encode() for s in genes], dtype=f"S{max([1, *map(len, genes)])}")
        f.create_dataset("genes", data=gn)
        if n_cells is not None:
            f.create_dataset("n_cells", data=np.asarray(n_cells, np.int32))
        for k, v in attrs.items():
            f.attrs[k] = "" if v is None else v

    def write_img(self, start: int, imgs: np.ndarray) -> None:
        self.f["img"][start : start + len(imgs)] = imgs

    def write_expr(self, start: int, rows: np.ndarray) -> None:
        self.f["expr"][start : start + len(rows)] = rows

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> TileWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class TileInfo:
    """What the vocabulary and shard stages need to know about one tile file, without pixels."""

    path: Path
    sample_id: str
    n: int
    genes: list[str]
    technology: str
    level: str
    modality: str
    organ: str
    oncotree_code: str
    attrs: dict = field(default_factory=dict)


def _attr(attrs, key: str, default=""):
    v = attrs.get(key, default)
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, np.generic):
        v = v.item()
    return v


def read_info(path: str | os.PathLike) -> TileInfo:
    """Header of a tile file; MintError if it is not one."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("img", "coords", "barcode", "expr", "genes") if k not in f]
            if missing:
                raise MintError(f"{path.stem} {path}: not a tile file (missing {missing})")
            attrs = {k: _attr(f.attrs, k) for k in f.attrs}
            genes = [as_str(g) for g in f["genes"][()]]
            n = int(f["img"].shape[0])
    except OSError as exc:
        raise MintError(f"{path.stem} {path}: cannot read tile file: {exc}") from None
    return TileInfo(
        path=path,
        sample_id=str(attrs.get("sample_id") or path.stem),
        n=n,
        genes=genes,
        technology=str(attrs.get("technology", "")),
        level=str(attrs.get("level", "")),
        modality=str(attrs.get("modality", "")),
        organ=str(attrs.get("organ", "")),
        oncotree_code=str(attrs.get("oncotree_code", "")),
        attrs=attrs,
    )
