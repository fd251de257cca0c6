"""The demo's eva task: patches of synthetic tissue, one class per nuclear variant.

The images come from the same procedural tissue generator as the synthetic HEST slides, but the
class is a nuclear variant (nucleus size and chromatin texture, `mint.synth.morphology.VARIANTS`)
drawn independently of the tissue's cell-type mix. The synthetic expression depends on that mix
only, so this task measures morphology that expression cannot explain: what a fine-tune on
expression keeps of the base model's morphology, not what it learnt from the expression.

On disk the task uses the image-folder layout of eva's patch datasets (CRC, BACH):

    <root>/classes.json                    {"classes": [...], "splits": {"train": n, ...}, ...}
    <root>/<split>/<class>/<index>.png     split in train, val, test

`mint.eva.dataset.SyntheticTissuePatches` subclasses eva's `VisionDataset` like eva's own
datasets do; instead of their fixed split sizes and class names it checks the data against
`classes.json`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mint.errors import MintError
from mint.io import atomic_dir
from mint.logging_utils import progress_enabled

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
MANIFEST = "classes.json"


def _folder_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "class"


def make_synthetic(
    out: str | os.PathLike,
    patches_per_class: int,
    seed: int = 0,
    size_px: int = 224,
    pixel_size_um: float = 0.5,
) -> dict:
    """Write the synthetic eva task to `out` (atomically) and return its manifest.

    `patches_per_class` images per class in each of train, val and test; every patch has its
    own random stream derived from (seed, split, class, index), so the output does not depend
    on the order of generation.
    """
    from PIL import Image

    from mint.synth.morphology import VARIANTS, morphology_patch

    if patches_per_class < 1:
        raise MintError(f"synthetic eva task {out}: --patches-per-class must be >= 1")
    classes = [str(c) for c in VARIANTS]
    folders = [_folder_name(c) for c in classes]
    if len(set(folders)) != len(folders):
        folders = [f"{i:02d}_{f}" for i, f in enumerate(folders)]
    manifest = {
        "version": 1,
        "classes": classes,
        "folders": folders,
        "splits": {s: patches_per_class * len(classes) for s in SPLITS},
        "patches_per_class": patches_per_class,
        "seed": seed,
        "size_px": size_px,
        "pixel_size_um": pixel_size_um,
        "labels": "nuclear variant, independent of the cell-type mix that drives expression",
    }
    bar = tqdm(
        total=len(SPLITS) * len(classes) * patches_per_class,
        desc="synthetic eva task",
        disable=not progress_enabled(),
    )
    with atomic_dir(out) as tmp:
        for s_idx, split in enumerate(SPLITS):
            for c_idx, folder in enumerate(folders):
                class_dir = tmp / split / folder
                class_dir.mkdir(parents=True)
                for i in range(patches_per_class):
                    rng = np.random.default_rng([seed, s_idx, c_idx, i])
                    img, _ = morphology_patch(c_idx, size_px, pixel_size_um, rng)
                    img = np.asarray(img)
                    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
                        raise MintError(
                            f"synthetic eva task: morphology_patch returned {img.dtype} "
                            f"{img.shape}, expected uint8 (H, W, 3)"
                        )
                    Image.fromarray(img).save(class_dir / f"{i:05d}.png")
                    bar.update()
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    bar.close()
    log.info(
        "synthetic eva task: %d classes x %d patches x %d splits in %s",
        len(classes),
        patches_per_class,
        len(SPLITS),
        out,
    )
    return manifest


def read_manifest(root: str | os.PathLike) -> dict:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise MintError(
            f"synthetic eva task {root}: no {MANIFEST} (run `mint eva make-synthetic --out {root}`)"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MintError(f"synthetic eva task {path}: not valid JSON ({exc})") from None
