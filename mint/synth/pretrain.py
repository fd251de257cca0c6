"""`mint pretrain`: the demo's foundation model, pretrained self-supervised on synthetic tissue.

Why: MINT claims to keep what the base model knows. With a randomly initialised base there is
nothing to keep, so the demo first pretrains its tiny ViT the way pathology foundation models
are made (DINO self-distillation, no labels), with the project's own trainer:
`st_token: false, w_visium: 0, w_xenium: 0, w_anchor: 0, w_dino: 1`.

The tiles come from tissue that is neither a MINT training sample nor a bench sample: every tile
is rendered from its own random tissue (`mint.synth.morphology.pretrain_patch`, seeded from
`--seed` in a stream of its own), with random cell-type mixes, stains and nuclear variants, so
that the base model learns the nuclear morphology the demo's morphology task asks about.

Output: one plain timm state dict (`.safetensors`), loaded like any user's own weights through
`<arch>@<file>` (`mint.models.backbones.parse_spec`). The work folder (tiles, shards, the run)
is kept next to it for inspection; only the checkpoint is the stage's contract.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mint.errors import MintError
from mint.io import atomic_path, write_json

log = logging.getLogger(__name__)

# What makes a run "self-supervised pretraining": forced whatever --params says.
PRETRAIN_FIXED = {"st_token": False, "w_visium": 0.0, "w_xenium": 0.0, "w_anchor": 0.0}
# The vocabulary the shard writer needs; no head reads it (both expression weights are 0).
_NO_GENE = "PRETRAIN_NO_GENE"
_SEED_STREAM = 0x9E7A  # keeps these tiles apart from every other synthetic stream


def write_pretrain_tiles(
    out_dir: Path, n_tiles: int, seed: int, n_files: int = 4, size_px: int = 224
) -> list[Path]:
    """Render `n_tiles` tissue patches at 0.5 um/px into `n_files` tile files (HEST layout)."""
    from mint.data.tiles import TileWriter
    from mint.synth.morphology import pretrain_patch

    if n_tiles < 2:
        raise MintError(f"pretrain {out_dir}: --n-tiles must be >= 2, not {n_tiles}")
    n_files = max(1, min(n_files, n_tiles))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for f_idx, rows in enumerate(np.array_split(np.arange(n_tiles), n_files)):
        sid = f"PRETRAIN{f_idx:03d}"
        attrs = {
            "sample_id": sid,
            "pixel_size_um": 0.5,
            "target_pixel_size_um": 0.5,
            "patch_size_px": size_px,
            "technology": "synthetic pretraining tiles",
            "level": "spot",
            "modality": "visium",
            "organ": "synthetic",
            "oncotree_code": "",
        }
        n = len(rows)
        coords = np.stack([rows * size_px, np.zeros(n, np.int64)], 1)
        barcodes = [f"tile{int(i):06d}" for i in rows]
        path = out_dir / f"{sid}.h5"
        with (
            atomic_path(path) as tmp,
            TileWriter(tmp, n, size_px, [_NO_GENE], barcodes, coords, attrs) as w,
        ):
            w.write_expr(0, np.zeros((n, 1), np.float32))
            for k, i in enumerate(rows):
                rng = np.random.default_rng([int(seed), _SEED_STREAM, int(i)])
                w.write_img(k, pretrain_patch(size_px, 0.5, rng)[None])
        paths.append(path)
    return paths


def pretrain_config(params: dict, arch: str, source: str = "pretrain --params"):
    """The TrainConfig of the pretraining run: the user's params, then the fixed SSL keys.

    The workflow calls it at parse time too (`source` names the config key), so a typo in
    pretrain.params stops the dry run instead of the job."""
    from mint.train.config import TrainConfig

    clash = {k: params[k] for k in PRETRAIN_FIXED if k in params and params[k] != PRETRAIN_FIXED[k]}
    if clash:
        raise MintError(
            f"{source}: {', '.join(clash)} are fixed for self-supervised pretraining "
            f"({json.dumps(PRETRAIN_FIXED)})"
        )
    w_dino = params.get("w_dino", 1.0)
    if not isinstance(w_dino, int | float) or w_dino <= 0:
        raise MintError(f"{source}: w_dino must be > 0 (DINO is the only loss)")
    merged = {"backbone": arch, "w_dino": 1.0, **params, **PRETRAIN_FIXED}
    return TrainConfig.from_dict(merged, source=source)


def pretrain(
    out: Path,
    arch: str,
    params: dict,
    n_tiles: int,
    seed: int,
    work_dir: Path,
    device: str = "auto",
) -> dict:
    from mint.data.shards import write_shards
    from mint.logging_utils import progress_enabled
    from mint.models.backbones import BACKBONES
    from mint.train.trainer import train

    if arch not in BACKBONES:
        raise MintError(
            f"pretrain --arch {arch!r}: not a registered backbone ({', '.join(BACKBONES)})"
        )
    cfg = pretrain_config(params, arch)
    t0 = time.perf_counter()
    tiles = write_pretrain_tiles(work_dir / "tiles", n_tiles, seed)
    vocab = work_dir / "genes"
    vocab.mkdir(parents=True, exist_ok=True)
    (vocab / "visium.txt").write_text(_NO_GENE + "\n")
    (vocab / "xenium.txt").write_text("")
    shards = work_dir / "shards"
    write_shards(
        tiles,
        vocab,
        shards,
        samples_per_shard=max(64, n_tiles),
        val_fraction=0.0,
        seed=seed,
        jpeg_quality=95,
        progress=progress_enabled(),
    )
    t_data = time.perf_counter() - t0
    run_dir = work_dir / "run"
    # DINO's convention: the EMA teacher's backbone is the pretrained model
    train(cfg, shards / "index.json", run_dir, device=device, timm_out=out)
    record = {
        "checkpoint": str(out),
        "backbone_spec": f"{arch}@{out}",
        "arch": arch,
        "n_tiles": n_tiles,
        "seed": seed,
        "train": cfg.to_dict(),
        "data_seconds": round(t_data, 1),
        "seconds": round(time.perf_counter() - t0, 1),
        "metrics": str(run_dir / "metrics.csv"),
    }
    write_json(out.with_suffix(".json"), record, indent=2)
    log.info(
        "pretrained %s on %d synthetic tiles in %.0f s -> %s", arch, n_tiles, record["seconds"], out
    )
    return record


@dataclass(frozen=True)
class PretrainSettings:
    """`mint pretrain` options and their defaults; config `pretrain:` maps onto them
    (mint.settings)."""

    n_tiles: int = 512
    seed: int = 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    from mint.settings import add_options

    p.add_argument("--out", required=True, type=Path, help="checkpoint to write (.safetensors)")
    p.add_argument("--arch", default="tiny-vit", help="registered backbone to pretrain")
    add_options(p, "pretrain")  # --n-tiles, --seed
    p.add_argument(
        "--params",
        default="{}",
        help="JSON object of TrainConfig fields for the run (st_token, w_visium, w_xenium and "
        "w_anchor are fixed to self-supervised values)",
    )
    p.add_argument(
        "--work-dir", type=Path, default=None, help="tiles, shards and run (default: OUT's stem)"
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])


def run(args: argparse.Namespace) -> int:
    if args.out.suffix != ".safetensors":
        raise MintError(f"pretrain --out {args.out}: must end in .safetensors")
    try:
        params = json.loads(args.params) if args.params.strip() else {}
    except json.JSONDecodeError as exc:
        raise MintError(f"pretrain --params: not valid JSON ({exc})") from None
    if not isinstance(params, dict):
        raise MintError("pretrain --params: expected a JSON object")
    work = args.work_dir or args.out.parent / f"{args.out.stem}_work"
    pretrain(args.out, args.arch, params, args.n_tiles, args.seed, work, args.device)
    return 0
