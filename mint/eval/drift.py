"""`mint drift`: how much of its base model a fine-tuned run kept (forgetting, measured).

MINT claims that DINO self-distillation and feature anchoring keep the pretrained
representation. This stage measures it for every trained run, on slides no run trained on:

* **linear CKA** (Kornblith et al. 2019) between the base model's and the run's CLS embeddings
  of the same HEST-Bench patches (bench samples are excluded from training by the shard
  stage's leakage guard). 1 = the same representation up to rotation and isotropic scale; it is
  insensitive to the embedding's orientation, so it measures what a linear probe can still read.
* **mean cosine** between the two CLS vectors of each patch: sensitive to any rotation, so it
  says whether the run's features stayed where the base put them (what anchoring enforces).
* **morphology score**: a fast linear probe (logistic regression on standardised CLS, fitted on
  the train split, balanced accuracy on the test split) on the synthetic morphology task
  (`mint.synth.morphology`: nuclear variants that the synthetic expression does not depend on),
  for the run and for its base, when the task's data is given. This is a probe of our own, not
  eva's score; eva's number for the same task is in the eva summary.

The CLS embeddings come from the bench stage's cache (`results/bench/embeddings/{model}/{task}`),
so nothing is re-embedded for CKA; rows are matched by barcode.

    mint drift --base-embeddings results/bench/embeddings/BASE/T1 ... \
        --run-embeddings results/bench/embeddings/RUN/T1 ... \
        --base-model tiny-vit --run-model results/models/mint \
        --morphology resources/eva/synthetic --out results/models/mint/drift.json
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mint.errors import MintError
from mint.io import write_json

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- similarity
def _as_2d(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise MintError(f"drift: {name} must be 2-d (samples x features), got shape {x.shape}")
    return x


def linear_cka(a: np.ndarray, b: np.ndarray) -> float:
    """Linear CKA of two representations of the same n samples (rows), in [0, 1].

    ||B_c^T A_c||_F^2 / (||A_c^T A_c||_F ||B_c^T B_c||_F) with column-centred A_c, B_c.
    Invariant to orthogonal transforms and isotropic scaling of either side, and to
    feature counts that differ. Computed in float64 with the n x n Gram form when n is small.
    """
    a, b = _as_2d(a, "a"), _as_2d(b, "b")
    if a.shape[0] != b.shape[0]:
        raise MintError(
            f"drift: CKA needs the same samples on both sides ({a.shape[0]} vs {b.shape[0]})"
        )
    if a.shape[0] < 2:
        raise MintError("drift: CKA needs at least 2 samples")
    a = a - a.mean(0, keepdims=True)
    b = b - b.mean(0, keepdims=True)
    if a.shape[0] < max(a.shape[1], b.shape[1]):
        ka, kb = a @ a.T, b @ b.T
        num = float((ka * kb).sum())
        den = float(np.sqrt((ka * ka).sum() * (kb * kb).sum()))
    else:
        num = float(np.square(b.T @ a).sum())
        den = float(np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b))
    if den <= 0:
        raise MintError("drift: CKA of a constant representation is undefined")
    return num / den


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over samples of cos(a_i, b_i); needs the same feature space on both sides."""
    a, b = _as_2d(a, "a"), _as_2d(b, "b")
    if a.shape != b.shape:
        raise MintError(f"drift: cosine needs equal shapes ({a.shape} vs {b.shape})")
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    cos = (a * b).sum(1) / np.maximum(na * nb, 1e-12)
    return float(cos.mean())


# --------------------------------------------------------------------------- embeddings
def read_cls(emb_dir: Path) -> dict[str, np.ndarray]:
    """{sample/barcode: CLS vector} from one bench embedding cache folder."""
    import h5py

    manifest_path = emb_dir / "manifest.json"
    if not manifest_path.is_file():
        raise MintError(f"drift {emb_dir}: no manifest.json (run `mint embed` first)")
    manifest = json.loads(manifest_path.read_text())
    out: dict[str, np.ndarray] = {}
    for sid, meta in sorted(manifest.get("samples", {}).items()):
        with h5py.File(emb_dir / meta["file"], "r") as f:
            cls = np.asarray(f["cls"], dtype=np.float32)
            codes = [
                (b.decode() if isinstance(b, bytes) else str(b))
                for b in np.asarray(f["barcodes"]).reshape(-1)
            ]
        for code, vec in zip(codes, cls, strict=True):
            out[f"{sid}/{code}"] = vec
    return out


def paired_cls(
    base_dirs: list[Path], run_dirs: list[Path], max_rows: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Base and run CLS of the same patches (pooled over tasks), at most `max_rows` of them."""
    if len(base_dirs) != len(run_dirs) or not base_dirs:
        raise MintError("drift: give one run embedding folder per base embedding folder")
    a_rows, b_rows = [], []
    for bd, rd in zip(base_dirs, run_dirs, strict=True):
        base, run = read_cls(bd), read_cls(rd)
        keys = sorted(set(base) & set(run))
        if not keys:
            raise MintError(f"drift {rd}: no patch in common with {bd}")
        a_rows.append(np.stack([base[k] for k in keys]))
        b_rows.append(np.stack([run[k] for k in keys]))
    a, b = np.concatenate(a_rows), np.concatenate(b_rows)
    if len(a) > max_rows:
        keep = np.sort(np.random.default_rng(seed).choice(len(a), max_rows, replace=False))
        a, b = a[keep], b[keep]
    return a, b


# --------------------------------------------------------------------------- morphology
def _embed_images(spec: str, paths: list[Path], batch_size: int) -> np.ndarray:
    import torch
    from PIL import Image

    from mint.models.encoder import build_encoder

    enc = build_encoder(spec, device="cpu")
    tf = enc.transform()
    out = []
    with torch.inference_mode():
        for i in range(0, len(paths), batch_size):
            x = torch.stack([tf(Image.open(p)) for p in paths[i : i + batch_size]])
            out.append(enc(x)["cls"].float().numpy())
    return np.concatenate(out) if out else np.zeros((0, enc.embed_dim), np.float32)


def _split_files(root: Path, split: str) -> tuple[list[Path], np.ndarray]:
    from mint.eva.synthetic import read_manifest

    manifest = read_manifest(root)
    paths, labels = [], []
    for idx, folder in enumerate(manifest["folders"]):
        files = sorted((root / split / folder).glob("*.png"))
        paths += files
        labels += [idx] * len(files)
    if not paths:
        raise MintError(f"drift {root}: no images in split {split!r}")
    return paths, np.asarray(labels)


def morphology_probe(spec: str, root: Path, batch_size: int = 32, seed: int = 0) -> dict:
    """Balanced test accuracy of a logistic-regression probe on CLS (train split -> test split)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_p, train_y = _split_files(root, "train")
    test_p, test_y = _split_files(root, "test")
    x_train = _embed_images(spec, train_p, batch_size)
    x_test = _embed_images(spec, test_p, batch_size)
    clf = make_pipeline(
        StandardScaler(), LogisticRegression(C=1.0, max_iter=2000, random_state=seed)
    )
    clf.fit(x_train, train_y)
    score = balanced_accuracy_score(test_y, clf.predict(x_test))
    return {
        "balanced_accuracy": float(score),
        "n_train": len(train_y),
        "n_test": len(test_y),
        "n_classes": int(len(np.unique(train_y))),
    }


# --------------------------------------------------------------------------- the stage
def drift(
    base_dirs: list[Path],
    run_dirs: list[Path],
    base_model: str,
    run_model: str,
    morphology: Path | None,
    max_rows: int = 5000,
    seed: int = 0,
    batch_size: int = 32,
) -> dict:
    a, b = paired_cls(base_dirs, run_dirs, max_rows, seed)
    result: dict = {
        "base": base_model,
        "run": run_model,
        "n_patches": int(len(a)),
        "held_out": "HEST-Bench patches (bench samples never enter training)",
        "embedding": "cls",
        "linear_cka": round(linear_cka(a, b), 6),
        "mean_cosine": round(mean_cosine(a, b), 6) if a.shape == b.shape else None,
    }
    if morphology is not None:
        run_score = morphology_probe(run_model, morphology, batch_size, seed)
        base_score = morphology_probe(base_model, morphology, batch_size, seed)
        result["morphology"] = {
            "task": "synthetic nuclear variants (independent of the expression-driving tissue mix)",
            "method": "logistic-regression probe on CLS, balanced test accuracy (not eva)",
            "run": round(run_score["balanced_accuracy"], 6),
            "base": round(base_score["balanced_accuracy"], 6),
            "n_train": run_score["n_train"],
            "n_test": run_score["n_test"],
            "n_classes": run_score["n_classes"],
        }
    return result


@dataclass(frozen=True)
class DriftSettings:
    """`mint drift` options and their defaults; config `drift:` maps onto them (mint.settings)."""

    max_patches: int = 5000
    batch_size: int = 32
    seed: int = 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    from mint.settings import add_options

    p.add_argument("--base-embeddings", nargs="+", required=True, type=Path)
    p.add_argument("--run-embeddings", nargs="+", required=True, type=Path)
    p.add_argument("--base-model", required=True, help="backbone spec of the base model")
    p.add_argument("--run-model", required=True, help="the run's model folder")
    p.add_argument("--morphology", type=Path, default=None, help="synthetic morphology task root")
    add_options(p, "drift")  # --max-patches, --batch-size, --seed
    p.add_argument("--out", required=True, type=Path)


def run(args: argparse.Namespace) -> int:
    if args.max_patches < 2:
        raise MintError(f"drift --max-patches {args.max_patches}: must be >= 2")
    result = drift(
        list(args.base_embeddings),
        list(args.run_embeddings),
        args.base_model,
        args.run_model,
        args.morphology,
        args.max_patches,
        args.seed,
        args.batch_size,
    )
    write_json(args.out, result)
    log.info(
        "%s: CKA %.4f, cosine %s vs %s",
        args.run_model,
        result["linear_cka"],
        result["mean_cosine"],
        args.base_model,
    )
    return 0
