"""eva dataset class of the synthetic demo task (`mint eva make-synthetic` writes the data).

Kept apart from `mint.eva.synthetic` so that writing the data does not import eva.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Literal

import torch
from eva.vision.data.datasets import vision
from eva.vision.utils import io

from mint.eva.synthetic import MANIFEST, SPLITS, _folder_name


class SyntheticTissuePatches(vision.VisionDataset):
    """eva dataset of the synthetic tissue patches (image-folder layout described in
    `mint.eva.synthetic`).

    Args:
        root: folder written by `mint eva make-synthetic`.
        split: train, val or test.
        transforms: eva/torchvision v2 transforms applied to (image, target).
    """

    def __init__(
        self,
        root: str,
        split: Literal["train", "val", "test"],
        transforms: Callable | None = None,
    ) -> None:
        super().__init__(transforms=transforms)
        if split not in SPLITS:
            raise ValueError(f"split {split!r}: use one of {', '.join(SPLITS)}")
        self._root = str(root)
        self._split = split
        self._samples: list[tuple[str, int]] = []
        self._manifest: dict | None = None

    @property
    def classes(self) -> list[str]:
        return list(self._read_manifest()["classes"])

    @property
    def class_to_idx(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.classes)}

    def _read_manifest(self) -> dict:
        if self._manifest is None:
            path = os.path.join(self._root, MANIFEST)
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"Synthetic eva dataset not found at '{self._root}' (no {MANIFEST}); "
                    f"run `mint eva make-synthetic --out {self._root}`."
                )
            with open(path) as fh:
                self._manifest = json.load(fh)
        return self._manifest

    def prepare_data(self) -> None:
        self._read_manifest()
        split_dir = os.path.join(self._root, self._split)
        if not os.path.isdir(split_dir):
            raise FileNotFoundError(f"Split folder '{split_dir}' not found.")

    def configure(self) -> None:
        manifest = self._read_manifest()
        folders = manifest.get("folders") or [_folder_name(c) for c in manifest["classes"]]
        samples = []
        for idx, folder in enumerate(folders):
            class_dir = os.path.join(self._root, self._split, folder)
            if not os.path.isdir(class_dir):
                continue
            for name in sorted(os.listdir(class_dir)):
                if name.lower().endswith((".png", ".jpg", ".jpeg", ".tif", ".tiff")):
                    samples.append((os.path.join(class_dir, name), idx))
        self._samples = samples

    def validate(self) -> None:
        """Checks against classes.json instead of eva's fixed sizes: every class present in the
        split and the split as large as recorded."""
        manifest = self._read_manifest()
        expected = manifest.get("splits", {}).get(self._split)
        if expected is not None and len(self._samples) != int(expected):
            raise ValueError(
                f"Synthetic eva dataset '{self._root}' split '{self._split}' has "
                f"{len(self._samples)} images, {MANIFEST} records {expected}."
            )
        present = {target for _, target in self._samples}
        if len(present) != len(manifest["classes"]):
            raise ValueError(
                f"Synthetic eva dataset '{self._root}' split '{self._split}' has "
                f"{len(present)} of {len(manifest['classes'])} classes."
            )

    def filename(self, index: int) -> str:
        # Relative to the root and including the split, so names are unique across splits
        # (eva's embeddings writer names the .pt files after it).
        path, _ = self._samples[index]
        return os.path.relpath(path, self._root)

    def load_data(self, index: int):
        path, _ = self._samples[index]
        return io.read_image_as_tensor(path)

    def load_target(self, index: int):
        _, target = self._samples[index]
        return torch.tensor(target, dtype=torch.long)

    def __len__(self) -> int:
        return len(self._samples)
