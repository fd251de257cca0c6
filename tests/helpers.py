"""Helpers shared by the test files (imported as `from helpers import ...`; fixtures live in
conftest.py and are never imported): the repository paths, the Snakemake runner, the parser of
Snakemake's job table, and the writer of small synthetic HEST folders the fixtures build on."""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mint.data.tiles import TileWriter
from mint.hest.layout import METADATA_CSV, sample_file
from mint.synth.hest import SynthConfig, generate_sample

REPO = Path(__file__).resolve().parents[1]

#: The training settings every toy run shares: the tiny ViT and a DINO head small enough that a
#: few steps run in seconds on one CPU core. Tests add their steps, crops and schedules.
TINY_MODEL = {
    "backbone": "tiny-vit",
    "batch_size": 4,
    "dino_prototypes": 16,
    "dino_hidden_dim": 16,
    "dino_bottleneck_dim": 8,
}


def snakemake_env() -> dict[str, str]:
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    env["MINT_NO_PROGRESS"] = "1"
    env["HF_HUB_OFFLINE"] = "1"
    env.pop("HF_TOKEN", None)
    return env


def run_snakemake(
    args: list[str], workdir: Path, check: bool = True, timeout: float = 1800
) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        *args,
    ]
    proc = subprocess.run(
        cmd, cwd=workdir, env=snakemake_env(), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        logs = ""
        log_dir = workdir / "logs"
        if log_dir.exists():
            for f in sorted(log_dir.rglob("*.log")):
                text = f.read_text(errors="replace")
                if "rror" in text:
                    logs += f"\n--- {f}\n{text[-3000:]}"
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({proc.returncode})\n"
            f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}{logs}"
        )
    return proc


def job_counts(stdout: str) -> dict[str, int]:
    """Parse Snakemake's 'Job stats' table into {rule: count}."""
    counts: dict[str, int] = {}
    in_table = False
    for line in stdout.splitlines():
        if line.startswith("Job stats:"):
            in_table = True
            continue
        if in_table:
            m = re.match(r"^(\S+)\s+(\d+)\s*$", line.strip())
            if m and m.group(1) != "total":
                counts[m.group(1)] = int(m.group(2))
            elif line.strip().startswith("total"):
                break
    return counts


# One Visium and one Xenium sample (SYNV000, SYNX000), small enough to write in seconds.
SMALL_HEST = SynthConfig(seed=0, n_visium=1, n_st=0, n_xenium=1, slide_size_um=500.0, n_genes=60)


@dataclass(frozen=True)
class HestFolder:
    """A HEST-1k folder written by the synthetic writer, and its metadata CSV."""

    root: Path
    metadata: Path
    sample_ids: tuple[str, ...]


def write_hest(
    root: Path, sample_ids: tuple[str, ...], cfg: SynthConfig = SMALL_HEST
) -> HestFolder:
    """Write `sample_ids` in HEST layout under `root` with the synthetic writer, and the
    metadata CSV of those samples (from their metadata JSON files) as `root/HEST_metadata.csv`."""
    # Quiet: a handler an earlier CLI call left on the mint logger may hold a closed stream.
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)
    try:
        for sid in sample_ids:
            generate_sample(sid, root, cfg)
    finally:
        logging.disable(previous)
    rows = [json.loads(Path(sample_file("meta", sid, root)).read_text()) for sid in sample_ids]
    metadata = root / METADATA_CSV
    pd.DataFrame(rows).to_csv(metadata, index=False)
    return HestFolder(root, metadata, tuple(sample_ids))


def render_eva_config(tmp_path: Path, task: str, stage: str, **options) -> dict:
    """The eva config `mint eva render` writes for `task` and `stage`, for a tiny ViT
    (64-dim, no ST token) with data, runs and embeddings under tmp_path."""
    from mint.eva import render

    info = render.ModelInfo(
        embed_dim=64, has_st=False, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), img_size=224
    )
    opts = render.RenderOptions(
        task=task,
        model="tiny-vit",
        model_name="tiny-vit",
        stage=stage,
        output_root=str(tmp_path / "runs" / task),
        embeddings_root=str(tmp_path / "emb" / task),
        data_root=str(tmp_path / "data"),
        **options,
    )
    return render.render_config(opts, info)


# ------------------------------------------------------------- a fake hub (download tests)
# what the hub repository holds (relative paths), for the fake snapshot_download
HUB_FILES = [
    "wsis/TENX95.tif",
    "wsis/TENX9.tif",
    "st/TENX95.h5ad",
    "metadata/TENX95.json",
    "tissue_seg/TENX95_contours.geojson",
    "tissue_seg/TENX95_vis.jpg",
    "transcripts/TENX95_transcripts.parquet",
    "xenium_seg/TENX95_xenium_cell_seg.parquet",
    "xenium_seg/TENX95_xenium_nucleus_seg.parquet",
    "cellvit_seg/TENX95_cellvit_seg.zip",
    "patches/TENX95.h5",
    "wsis/MEND139.tif",
    "st/MEND139.h5ad",
    "metadata/MEND139.json",
    "tissue_seg/MEND139_contours.geojson",
]


class FakeHub:
    """Stands in for huggingface_hub.snapshot_download: records calls, writes matching files."""

    def __init__(
        self, files=HUB_FILES, fail_times: int = 0, exc: Exception | None = None, empty=()
    ):
        self.files, self.fail_times, self.exc, self.empty = files, fail_times, exc, set(empty)
        self.calls: list[dict] = []

    def __call__(self, **kw):
        self.calls.append(kw)
        if len(self.calls) <= self.fail_times:
            raise self.exc or ConnectionError("network down")
        out = Path(kw["local_dir"])
        for rel in self.files:
            if any(fnmatch.fnmatch(rel, p) for p in kw["allow_patterns"]):
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                (out / rel).write_bytes(b"" if rel in self.empty else b"data")
        return str(out)


# ------------------------------------------------------ small tile files (vocab/shards tests)
P = 32  # small patches keep the test fast; the shard code does not care about the size


def smooth_images(rng, n: int) -> np.ndarray:
    """Smooth random RGB images (JPEG-friendly, like tissue at 0.5 um/px)."""
    import cv2

    out = np.empty((n, P, P, 3), np.uint8)
    for i in range(n):
        small = rng.integers(30, 230, (6, 6, 3)).astype(np.uint8)
        out[i] = cv2.resize(small, (P, P), interpolation=cv2.INTER_CUBIC)
    return out


def write_tile(
    path: Path,
    sid: str,
    genes: list[str],
    counts: np.ndarray,
    level: str = "spot",
    imgs: np.ndarray | None = None,
    rng=None,
) -> dict:
    n = len(counts)
    rng = rng or np.random.default_rng(0)
    imgs = smooth_images(rng, n) if imgs is None else imgs
    barcodes = [
        f"{sid[-2:]}{i:05d}-1" if level == "spot" else f"{i // 10:03d}x{i % 10:03d}"
        for i in range(n)
    ]
    coords = rng.integers(0, 10000, (n, 2))
    tech, mod = ("Visium", "visium") if level == "spot" else ("Xenium", "xenium")
    attrs = dict(
        sample_id=sid,
        pixel_size_um=0.5,
        target_pixel_size_um=0.5,
        patch_size_px=P,
        technology=tech,
        level=level,
        modality=mod,
        organ="Bowel",
        oncotree_code="COAD",
        n_spots_total=n,
        n_dropped_outside=0,
        n_dropped_tissue=0,
        xenium_target="",
    )
    n_cells = rng.integers(0, 50, n) if level == "patch" else None
    with TileWriter(path, n, P, genes, barcodes, coords, attrs, n_cells) as w:
        w.write_img(0, imgs)
        w.write_expr(0, counts.astype(np.float32))
    return dict(
        sid=sid,
        genes=genes,
        counts=counts,
        imgs=imgs,
        barcodes=barcodes,
        coords=coords,
        n_cells=n_cells,
        level=level,
    )
