"""The HEST-1k and HEST-Bench file layout: the one module that names their files.

Why one module: download (hub patterns, checks), tiling (`SamplePaths`), the workflow's input
functions, the synthetic writer and the tests must agree on every name, and adding or renaming a
file should be one edit. Names are those of the hub repositories as of HEST v1.1.0.

HEST-1k (`MahmoodLab/hest`), per sample id, relative to the HEST folder:

    wsis/{id}.tif                                  pyramidal TIFF (every sample)
    st/{id}.h5ad                                   expression (every sample)
    metadata/{id}.json                             the metadata row (every sample)
    tissue_seg/{id}_contours.geojson               tissue contours (every sample)
    transcripts/{id}_transcripts.parquet           Xenium only
    xenium_seg/{id}_xenium_cell_seg.parquet        Xenium only (cell targets need it)

The hub holds more per sample (nucleus segmentation, CellViT, `patches/`, zipped GeoJSON copies;
several GB per Xenium sample) that the pipeline never reads: only the files above are fetched.

HEST-Bench (`MahmoodLab/hest-bench`), per task, relative to the task folder:

    adata/{id}.h5ad          expression (barcodes in obs_names)
    patches/{id}.h5          img, coords, barcode
    splits/{train,test}_{k}.csv
    var_50genes.json         {"genes": [...]}

Paths come back as `str` (Snakemake takes them as they are); `root` may be a Snakemake pattern
folder and `sample_id` a wildcard such as "{sample}": the id is inserted literally.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mint.errors import MintError
from mint.hest.metadata import level_of

#: Every file of a HEST-1k sample the pipeline reads, by key (the keys name them everywhere:
#: rule outputs, tile inputs, `SamplePaths` fields). Order: the order of the hub patterns.
SAMPLE_FILES: dict[str, str] = {
    "wsi": "wsis/{id}.tif",
    "st": "st/{id}.h5ad",
    "meta": "metadata/{id}.json",
    "contours": "tissue_seg/{id}_contours.geojson",
    "transcripts": "transcripts/{id}_transcripts.parquet",
    "cell_seg": "xenium_seg/{id}_xenium_cell_seg.parquet",
}
#: Files every sample has; patch-level (Xenium) samples add `XENIUM_KEYS`.
COMMON_KEYS: tuple[str, ...] = ("wsi", "st", "meta", "contours")
XENIUM_KEYS: tuple[str, ...] = ("transcripts", "cell_seg")

#: The metadata table of a HEST folder (the synthetic source writes it; real runs pin a copy).
METADATA_CSV = "HEST_metadata.csv"

#: HEST-Bench: sub-folders of a task, the gene list, and the file names inside.
BENCH_SPLITS_DIR = "splits"
BENCH_DIRS: tuple[str, ...] = ("adata", "patches", BENCH_SPLITS_DIR)
BENCH_GENES = "var_50genes.json"
BENCH_SPLIT_KINDS: tuple[str, ...] = ("train", "test")
#: Columns every split CSV must have (HEST's bench reads these three).
BENCH_SPLIT_COLUMNS = ("sample_id", "patches_path", "expr_path")


def _join(root: str | os.PathLike | None, rel: str) -> str:
    return rel if root in (None, "") else f"{os.fspath(root)}/{rel}"


def sample_file(key: str, sample_id: str, root: str | os.PathLike | None = None) -> str:
    """The path of one file of a sample (`key` from `SAMPLE_FILES`), under `root` if given."""
    return _join(root, SAMPLE_FILES[key].format(id=sample_id))


def is_patch_level(technology: str) -> bool:
    """Xenium-like samples (patch level) carry transcripts and a cell segmentation."""
    return level_of(technology) == "patch"


def sample_keys(patch_level: bool, cell_seg: bool = True) -> list[str]:
    """Keys of the files a sample must have: the tile job reads each of them.

    Patch-level (Xenium) samples add the transcripts and, unless `cell_seg` is False
    (transcript targets), the cell segmentation.
    """
    keys = list(COMMON_KEYS)
    if patch_level:
        keys += [k for k in XENIUM_KEYS if cell_seg or k != "cell_seg"]
    return keys


def required_keys(technology: str, cell_seg: bool = True) -> list[str]:
    """`sample_keys` of a technology (MintError for an unknown one)."""
    return sample_keys(is_patch_level(technology), cell_seg)


def optional_keys(technology: str, cell_seg: bool = True) -> list[str]:
    """Keys of files used when present (the segmentation when transcript targets make it optional)."""
    return ["cell_seg"] if is_patch_level(technology) and not cell_seg else []


def sample_files(
    sample_id: str, technology: str, root: str | os.PathLike | None = None, cell_seg: bool = True
) -> dict[str, str]:
    """{key: path} of the files a sample must have (see `required_keys`)."""
    return {k: sample_file(k, sample_id, root) for k in required_keys(technology, cell_seg)}


# --------------------------------------------------------------------------- HEST-Bench
#: The files of one bench sample, relative to its task folder (as the split CSVs name them).
BENCH_SAMPLE_FILES: dict[str, str] = {
    "adata": "adata/{id}.h5ad",
    "patches": "patches/{id}.h5",
}


def bench_adata(sample_id: str) -> str:
    """A bench sample's expression file, relative to its task folder."""
    return BENCH_SAMPLE_FILES["adata"].format(id=sample_id)


def bench_patches(sample_id: str) -> str:
    """A bench sample's patch file, relative to its task folder."""
    return BENCH_SAMPLE_FILES["patches"].format(id=sample_id)


def bench_task_sample_ids(task_dir: str | os.PathLike) -> set[str]:
    """Ids of the samples whose expression or patch file lies in a task folder."""
    ids: set[str] = set()
    for pattern in BENCH_SAMPLE_FILES.values():
        sub, name = pattern.split("/")
        prefix, suffix = name.split("{id}")
        for p in Path(task_dir, sub).glob(f"{prefix}*{suffix}"):
            ids.add(p.name[len(prefix) : len(p.name) - len(suffix)])
    return ids


def bench_split(kind: str, fold: int) -> str:
    """`splits/{train,test}_{k}.csv`, relative to the task folder."""
    return f"{BENCH_SPLITS_DIR}/{kind}_{fold}.csv"


#: Names `splits/` may hold: HEST counts its files to get the number of folds.
BENCH_SPLIT_RE = r"^(train|test)_(\d+)\.csv$"


def bench_fold_count(task_dir: str | os.PathLike, task: str) -> int:
    """Number of folds of a bench task, after checking that `splits/` holds exactly the
    train_k/test_k pairs for k = 0..n-1: HEST takes the fold count from the number of files
    there, so any other file would silently change it. The one check the download and the probe
    both use."""
    split_dir = Path(task_dir, BENCH_SPLITS_DIR)
    if not split_dir.is_dir():
        raise MintError(f"{task} {split_dir}: splits folder not found")
    names = sorted(p.name for p in split_dir.iterdir())
    if not names:
        raise MintError(f"{task} {split_dir}: no split files")
    pattern = re.compile(BENCH_SPLIT_RE)
    for name in names:
        if not pattern.match(name):
            raise MintError(
                f"{task} {split_dir / name}: unexpected file in splits/ (HEST counts every file "
                "there as half a fold; only train_k.csv and test_k.csv may live there)"
            )
    if len(names) % 2:
        raise MintError(f"{task} {split_dir}: odd number of split files ({len(names)})")
    n = len(names) // 2
    expected = {Path(bench_split(kind, k)).name for k in range(n) for kind in BENCH_SPLIT_KINDS}
    missing = sorted(expected - set(names))
    if missing:
        raise MintError(f"{task} {split_dir / missing[0]}: missing (folds must be 0..{n - 1})")
    return n


def bench_hub_patterns(task: str) -> list[str]:
    """`allow_patterns` of one task: the hub holds each task at its top level."""
    return [f"{task}/*"]
