"""The eva tasks MINT runs, with eva's leaderboard protocol for each.

One `TaskSpec` per task holds everything that differs between tasks and is not part of the YAML
template: where the data lives under the data root, whether eva can download it, how to check that
it is there (so a missing dataset is reported by name instead of failing deep inside eva), which
metric and split give the headline number, and the protocol defaults (runs, steps, batch size, lr).
The numbers follow kaiko-eva's leaderboard protocol (docs/leaderboards.md, eva 0.4.x): frozen
backbone; linear head, AdamW 3e-4, batch 256, 12,500 steps, 5 runs for patch tasks; ABMIL, AdamW
1e-3, batch 32, 100 epochs (no step limit, no lr schedule), 20 runs for slide tasks;
ConvDecoderWithImage with Dice loss, AdamW 2e-3, batch 64, 2,000 steps, 5 runs for segmentation
(online). Early-stopping patience is the value written in each eva config (`patience`); only a
task without an eva config (the synthetic demo) derives it, as 20% of its epochs (the rule eva's
patch-task values follow).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Literal

from mint.errors import MintError

Kind = Literal["patch", "slide", "segmentation"]

# Leaderboard order (kaiko-ai/eva tools/data/leaderboards/pathology.csv).
LEADERBOARD_TASKS: tuple[str, ...] = (
    "bach",
    "breakhis",
    "crc",
    "gleason_arvaniti",
    "mhist",
    "patch_camelyon",
    "camelyon16_small",
    "panda_small",
    "consep",
    "monusac",
)
# BACH is left out of the headline average (its 2048 x 1536 images are not comparable).
AVERAGE_EXCLUDED: frozenset[str] = frozenset({"bach"})


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """What MINT needs to know about one eva task besides its YAML template."""

    name: str
    title: str
    kind: Kind
    data_subdir: str  # default folder of the dataset under the eva data root
    auto_download: bool  # eva's dataset class can download it (DOWNLOAD_DATA)
    required: tuple[str, ...]  # paths under the dataset folder that must exist (no download)
    download_help: str  # what the user must do when the data is missing
    metric: str  # eva metric name in results.json (without the split prefix)
    headline_split: Literal["val", "test"]
    n_train: int  # training samples (patches, slides or segmentation crops): sets patience
    n_runs: int
    max_steps: int | None  # None: eva's config sets no step limit (slide tasks run max_epochs)
    batch_size: int
    lr: float
    max_epochs: int | None = None  # slide tasks: number of epochs
    patience: int | None = None  # eva config's EarlyStopping patience (None: 20% of the epochs)
    n_patches: int | None = None  # slide tasks: patches per slide
    predict_batch_size: int = 64
    disk_gb: float = 0.0  # approximate size on disk of the dataset (README / messages)
    note: str = ""

    @property
    def offline(self) -> bool:
        """Offline tasks: `eva predict` writes embeddings, then `eva fit` trains the head."""
        return self.kind in ("patch", "slide")

    @property
    def template(self) -> str:
        return f"{self.name}.yaml"

    def protocol(self) -> dict[str, float | int | None]:
        """Protocol defaults as a dict of the keys that `--overrides` may change."""
        return {
            "n_runs": self.n_runs,
            "max_steps": self.max_steps,
            "max_epochs": self.max_epochs,
            "batch_size": self.batch_size,
            "predict_batch_size": self.predict_batch_size,
            "lr": self.lr,
            "n_patches": self.n_patches,
            "patience": self.patience,  # None = 20% of the epochs the run will take
        }


def early_stopping_patience(
    n_train: int, batch_size: int, max_steps: int | None, max_epochs: int | None
) -> int:
    """20% of the maximum number of epochs (validation runs each epoch): the rule behind eva's
    patch-task patience values, used only for tasks without an eva config (synthetic)."""
    steps_per_epoch = max(1, math.ceil(n_train / max(1, batch_size)))
    epochs = math.ceil(max_steps / steps_per_epoch) if max_steps is not None else None
    if max_epochs is not None:
        epochs = max_epochs if epochs is None else min(epochs, max_epochs)
    if epochs is None:
        raise MintError("early stopping: neither max_steps nor max_epochs is set")
    return max(1, math.ceil(0.2 * epochs))


_PATCH = dict(kind="patch", n_runs=5, max_steps=12_500, batch_size=256, lr=3e-4)
_SLIDE = dict(kind="slide", n_runs=20, max_steps=None, max_epochs=100, batch_size=32, lr=1e-3)
_SEG = dict(kind="segmentation", n_runs=5, max_steps=2_000, batch_size=64, lr=2e-3)

TASKS: dict[str, TaskSpec] = {
    "bach": TaskSpec(
        name="bach",
        title="BACH (breast, 4 classes)",
        data_subdir="bach",
        auto_download=True,
        required=("ICIAR2018_BACH_Challenge/Photos",),
        download_help=(
            "set eva.download: true (eva fetches ICIAR2018_BACH_Challenge.zip from "
            "zenodo.org/records/3632035), or unzip it into the folder yourself"
        ),
        metric="MulticlassAccuracy",
        headline_split="val",
        n_train=268,
        disk_gb=10.4,
        note="not in the headline average (large 2048 x 1536 images)",
        patience=1250,  # eva configs/vision/pathology/offline/classification/bach.yaml
        **_PATCH,
    ),
    "breakhis": TaskSpec(
        name="breakhis",
        title="BreakHis (breast, 4 classes, 40x)",
        data_subdir="breakhis",
        auto_download=True,
        required=("BreaKHis_v1",),
        download_help=(
            "set eva.download: true (eva fetches BreaKHis_v1.tar.gz from "
            "www.inf.ufpr.br/vri/databases), or extract it into the folder yourself"
        ),
        metric="MulticlassAccuracy",
        headline_split="val",
        n_train=1132,
        disk_gb=4.0,
        patience=500,  # eva configs/vision/pathology/offline/classification/breakhis.yaml
        **_PATCH,
    ),
    "crc": TaskSpec(
        name="crc",
        title="CRC NCT-CRC-HE (colorectal, 9 classes)",
        data_subdir="crc",
        auto_download=True,
        required=("NCT-CRC-HE-100K", "CRC-VAL-HE-7K"),
        download_help=(
            "set eva.download: true (eva fetches NCT-CRC-HE-100K.zip and CRC-VAL-HE-7K.zip from "
            "zenodo.org/records/1214456), or unzip both into the folder yourself"
        ),
        metric="MulticlassAccuracy",
        headline_split="val",
        n_train=100_000,
        disk_gb=12.5,
        patience=7,  # eva configs/vision/pathology/offline/classification/crc.yaml
        **_PATCH,
    ),
    "gleason_arvaniti": TaskSpec(
        name="gleason_arvaniti",
        title="Gleason (Arvaniti; prostate TMA, 4 classes)",
        data_subdir="arvaniti_gleason_patches",
        auto_download=False,
        required=("train_validation_patches_750", "test_patches_750", "train.csv", "test.csv"),
        download_help=(
            "manual: download the archives from dataverse.harvard.edu (doi:10.7910/DVN/OCYCMP), "
            "unpack them into the folder and run create_patches.py from "
            "github.com/eiriniar/gleason_CNN to get train_validation_patches_750/ and "
            "test_patches_750/ next to train.csv and test.csv"
        ),
        metric="MulticlassAccuracy",
        headline_split="val",
        n_train=15_303,
        disk_gb=4.0,
        patience=42,  # eva configs/vision/pathology/offline/classification/gleason_arvaniti.yaml
        **_PATCH,
    ),
    "mhist": TaskSpec(
        name="mhist",
        title="MHIST (colorectal polyps, 2 classes)",
        data_subdir="mhist",
        auto_download=False,
        required=("images", "annotations.csv"),
        download_help=(
            "manual: request MHIST at bmirds.github.io/MHIST (data-use form), then put "
            "images/ (from images.zip) and annotations.csv in the folder"
        ),
        metric="BinaryBalancedAccuracy",
        headline_split="val",
        n_train=2175,
        disk_gb=0.4,
        note="eva's val split is MHIST's official test split",
        patience=278,  # eva configs/vision/pathology/offline/classification/mhist.yaml
        **_PATCH,
    ),
    "patch_camelyon": TaskSpec(
        name="patch_camelyon",
        title="PatchCamelyon (lymph node, 2 classes)",
        data_subdir="patch_camelyon",
        auto_download=True,
        required=(
            "camelyonpatch_level_2_split_train_x.h5",
            "camelyonpatch_level_2_split_train_y.h5",
            "camelyonpatch_level_2_split_valid_x.h5",
            "camelyonpatch_level_2_split_valid_y.h5",
            "camelyonpatch_level_2_split_test_x.h5",
            "camelyonpatch_level_2_split_test_y.h5",
        ),
        download_help=(
            "set eva.download: true (eva fetches the six camelyonpatch_level_2_split_*.h5 files "
            "from zenodo.org/records/2546921), or gunzip them into the folder yourself"
        ),
        metric="BinaryBalancedAccuracy",
        headline_split="test",
        n_train=262_144,
        disk_gb=7.7,
        patience=3,  # eva configs/vision/pathology/offline/classification/patch_camelyon.yaml
        **_PATCH,
    ),
    "camelyon16_small": TaskSpec(
        name="camelyon16_small",
        title="Camelyon16 (lymph node slides, 2 classes; 1,000 patches per slide)",
        data_subdir="camelyon16",
        auto_download=False,
        required=("training/normal", "training/tumor", "testing/images", "testing/reference.csv"),
        download_help=(
            "manual (~700 GB): download CAMELYON16 (camelyon17.grand-challenge.org/Data, e.g. "
            "the AWS or GigaDB mirror) so the folder holds training/normal/*.tif, "
            "training/tumor/*.tif, testing/images/*.tif and testing/reference.csv"
        ),
        metric="BinaryBalancedAccuracy",
        headline_split="test",
        n_train=216,
        n_patches=1000,
        disk_gb=700.0,
        patience=20,  # eva configs/vision/pathology/offline/classification/camelyon16_small.yaml
        **_SLIDE,
    ),
    "panda_small": TaskSpec(
        name="panda_small",
        title="PANDA small (prostate slides, 6 ISUP grades; 200 patches per slide)",
        data_subdir="panda/prostate-cancer-grade-assessment",
        auto_download=False,
        required=("train_images", "../train_with_noisy_labels.csv"),
        download_help=(
            "manual (~410 GB): `kaggle competitions download -c prostate-cancer-grade-assessment` "
            "and unzip so the folder holds train_images/*.tiff; eva also needs "
            "train_with_noisy_labels.csv (github.com/analokmaus/kaggle-panda-challenge-public, "
            "train.csv) one folder up (it fetches it itself when online)"
        ),
        metric="MulticlassAccuracy",
        headline_split="test",
        n_train=1909 * 10 // 20,  # PANDASmall: 10% of the non-noisy slides for training
        n_patches=200,
        disk_gb=410.0,
        patience=20,  # eva configs/vision/pathology/offline/classification/panda_small.yaml
        **_SLIDE,
    ),
    "consep": TaskSpec(
        name="consep",
        title="CoNSeP (colorectal nuclei segmentation, 5 classes)",
        data_subdir="consep",
        auto_download=False,
        required=("Train", "Test"),
        download_help=(
            "manual: the official warwick.ac.uk link is down; get consep_dataset.zip from a "
            "mirror (see eva's docs/datasets/consep.md) and unzip so the folder holds Train/ "
            "and Test/"
        ),
        metric="MonaiDiceScore",
        headline_split="val",
        n_train=27 * 16,  # 27 images, 16 crops of 250 px each
        disk_gb=0.8,
        patience=200,  # eva configs/vision/pathology/online/segmentation/consep.yaml
        **_SEG,
    ),
    "monusac": TaskSpec(
        name="monusac",
        title="MoNuSAC (multi-organ nuclei segmentation, 4 classes + background)",
        data_subdir="monusac",
        auto_download=True,
        required=("MoNuSAC_images_and_annotations", "MoNuSAC Testing Data and Annotations"),
        download_help=(
            "set eva.download: true (eva fetches both zips from Google Drive with gdown), or "
            "download them from monusac-2020.grand-challenge.org/Data and unzip into the folder"
        ),
        metric="MonaiDiceScore",
        headline_split="val",
        n_train=209,
        disk_gb=1.0,
        note="eva's val split is MoNuSAC's official test split",
        patience=100,  # eva configs/vision/pathology/online/segmentation/monusac.yaml
        **_SEG,
    ),
    "synthetic": TaskSpec(
        name="synthetic",
        title="Synthetic tissue types (MINT demo; classes differ in morphology)",
        data_subdir="synthetic",
        auto_download=False,
        required=("classes.json", "train", "val", "test"),
        download_help="generate it: `mint eva make-synthetic --out <data_root>/synthetic`",
        metric="MulticlassAccuracy",
        headline_split="test",
        n_train=0,  # counted from the data at render time
        disk_gb=0.01,
        note="demo only; not an eva leaderboard task",
        **_PATCH,
    ),
}


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise MintError(f"eva task {name!r}: unknown (known: {', '.join(sorted(TASKS))})") from None


def task_data_dir(
    task: TaskSpec, data_root: str | Path | None, data_dir: str | None = None
) -> Path:
    """The dataset folder: `data_dir` when given, else `<data_root>/<task.data_subdir>`."""
    if data_dir:
        return Path(data_dir).resolve()
    if not data_root:
        raise MintError(
            f"eva task {task.name}: no data root given (set eva.data_root, or pass --data-root)"
        )
    return (Path(data_root) / task.data_subdir).resolve()


def missing_data(task: TaskSpec, data_dir: Path, download: bool) -> str | None:
    """A one-line message naming the task and what to fetch, or None when the data is usable.

    With `download` and a task eva can download, nothing is checked: eva fetches it during
    predict (offline tasks) or fit (segmentation).
    """
    if download and task.auto_download:
        return None
    absent = [rel for rel in task.required if not (data_dir / rel).exists()]
    if not absent:
        return None
    hint = task.download_help
    if task.auto_download and not download:
        hint = f"{hint} (eva.download is off)"
    return (
        f"eva task {task.name}: data missing in {data_dir} (no {absent[0]}"
        f"{f' and {len(absent) - 1} more' if len(absent) > 1 else ''}); {hint}"
    )
