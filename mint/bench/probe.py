"""`mint probe`: the HEST-Bench linear probe, step for step as in the HEST repository.

Per fold (mahmoodlab/HEST `src/hest/bench/benchmark.py` + `trainer.py`):

1. train rows = the train samples' patches, test rows = the test samples' patches, in split-file
   order; targets `log1p(raw counts)` of the task's 50 genes aligned by barcode;
2. `StandardScaler` then `PCA(n_components=256, random_state=seed)`, both fitted on train only.
   HEST wraps the reduced features in `torch.Tensor(...)` (float32), and scikit-learn turns a
   torch tensor into float64 (it sees no numpy dtype to keep), so HEST's ridge fits and predicts
   in float64 on float32-rounded PCA scores: we round to float32 and solve in float64 the same
   way. A float32 solve moves per-gene r by up to ~0.08 on small tasks;
3. `Ridge(solver="lsqr", alpha=100 / (n_features * n_genes), fit_intercept=False,
   max_iter=1000, random_state=seed)` where n_features is the PCA output size (so 100/(256*50));
4. `scipy.stats.pearsonr` per gene over all pooled test rows; fold score = mean over genes;
   task = mean and population std (ddof=0) over folds.

`--no-pca` is HEST's `dimreduce=None` path: no scaler, no PCA, ridge on the raw embedding with
alpha = 100/(D*50). Two deliberate, recorded departures: PCA components are capped at
min(256, n_train, n_features) where HEST would crash, and a gene with undefined r (constant
target or prediction) counts as 0 by default where HEST's `np.mean` would turn the whole fold
into NaN (`--nan-policy hest` restores that). Each result records in `departures` whether
either was used; when neither was, the numbers are HEST's own to the last digit (the parity test
in tests/test_bench.py follows HEST's code path, tensor conversion included).
"""

from __future__ import annotations

import argparse
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mint.bench.data import BenchSample, BenchTaskData, load_task, read_targets
from mint.errors import MintError
from mint.io import write_json

log = logging.getLogger(__name__)

VARIANT_PARTS = ("cls", "st", "patch_mean")
DEFAULT_VARIANTS = ("cls", "st", "cls+st", "cls+patch_mean")
NAN_POLICIES = ("zero", "exclude", "hest")


@dataclass(frozen=True)
class ProbeSettings:
    """`mint probe` options the workflow sets (config `bench:`) and their defaults; `run` turns
    them into a `ProbeConfig` (the variants are the task's, not the ridge's)."""

    variants: tuple[str, ...] = DEFAULT_VARIANTS
    pca_components: int | None = 256  # None = full-dimension ridge (no scaler, no PCA)
    seed: int = 1


@dataclass
class ProbeConfig:
    seed: int = ProbeSettings.seed
    pca_components: int | None = ProbeSettings.pca_components  # None: no scaler, no PCA
    nan_policy: str = "zero"
    max_iter: int = 1000
    alpha_numerator: float = 100.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mint.settings import add_options

    parser.add_argument("--embeddings", required=True, help="cache folder written by mint embed")
    parser.add_argument("--bench-dir", required=True, help="folder holding the task folders")
    parser.add_argument("--task", required=True)
    parser.add_argument("--model", required=True, help="model key recorded in the output")
    parser.add_argument("--out", required=True, help="results JSON")
    add_options(parser, "probe")  # --variants, --pca-components / --no-pca, --seed
    parser.add_argument(
        "--nan-policy",
        choices=NAN_POLICIES,
        default="zero",
        help="gene with undefined Pearson r: zero (count as 0), exclude (drop from the mean), "
        "hest (NaN propagates to the fold score, as in HEST)",
    )


# ----------------------------------------------------------------------------- the protocol
def fit_predict(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, cfg: ProbeConfig
) -> tuple[np.ndarray, int, float]:
    """HEST's reduction + ridge on one fold. Returns (predictions, n_features_used, alpha)."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    if cfg.pca_components is not None:
        n_comp = min(cfg.pca_components, x_train.shape[0], x_train.shape[1])
        scaler = StandardScaler()
        pca = PCA(n_components=n_comp, random_state=cfg.seed)
        x_train = pca.fit_transform(scaler.fit_transform(x_train))
        x_test = pca.transform(scaler.transform(x_test))
        # HEST: torch.Tensor(...) rounds to float32; scikit-learn then converts the tensor to
        # float64, so the ridge below solves in float64 (see module docstring).
        x_train = np.asarray(x_train, dtype=np.float32).astype(np.float64)
        x_test = np.asarray(x_test, dtype=np.float32).astype(np.float64)
    alpha = cfg.alpha_numerator / (x_train.shape[1] * y_train.shape[1])
    reg = Ridge(
        solver="lsqr",
        alpha=alpha,
        random_state=cfg.seed,
        fit_intercept=False,
        max_iter=cfg.max_iter,
    )
    reg.fit(x_train, y_train)
    return reg.predict(x_test), int(x_train.shape[1]), float(alpha)


def pearson_per_gene(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """scipy's pearsonr per column, as HEST; NaN where a column is constant."""
    from scipy.stats import pearsonr

    out = np.empty(y_true.shape[1], dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConstantInputWarning: reported per gene instead
        for j in range(y_true.shape[1]):
            out[j] = float(pearsonr(y_true[:, j], y_pred[:, j])[0])
    return out


def fold_score(r: np.ndarray, policy: str) -> float:
    nan = np.isnan(r)
    if not nan.any():
        return float(np.mean(r))
    if policy == "zero":
        return float(np.mean(np.where(nan, 0.0, r)))
    if policy == "exclude":
        return float(np.mean(r[~nan])) if (~nan).any() else math.nan
    return float(np.mean(r))  # hest: NaN propagates


# ----------------------------------------------------------------------------- inputs
def read_manifest(emb_dir: Path, data: BenchTaskData) -> dict:
    import json

    path = emb_dir / "manifest.json"
    if not path.is_file():
        raise MintError(f"{data.name} {path}: no manifest (mint embed did not finish)")
    manifest = json.loads(path.read_text())
    if manifest.get("task") != data.name:
        raise MintError(f"{data.name} {path}: manifest is for task {manifest.get('task')!r}")
    missing = [s.sample_id for s in data.samples if s.sample_id not in manifest["samples"]]
    if missing:
        raise MintError(f"{missing[0]} {path}: sample of task {data.name} not embedded")
    return manifest


def load_sample_embeddings(
    emb_dir: Path, manifest: dict, sample: BenchSample, keys: set[str]
) -> tuple[list[str], dict[str, np.ndarray]]:
    import h5py

    from mint.bench.data import decode_barcodes

    sample_id = sample.sample_id
    path = emb_dir / manifest["samples"][sample_id]["file"]
    if not path.is_file():
        raise MintError(f"{sample_id} {path}: embedding file missing")
    with h5py.File(path, "r") as f:
        if f.attrs.get("fingerprint") != manifest["fingerprint"]:
            raise MintError(f"{sample_id} {path}: embedded by another model than the manifest's")
        stamp = f.attrs.get("patches_stamp")
        if stamp is not None:
            st = sample.patches_path.stat()
            if list(stamp) != [st.st_size, st.st_mtime_ns]:
                raise MintError(
                    f"{sample_id} {path}: {sample.patches_path} changed since it was embedded; "
                    "rerun mint embed"
                )
        barcodes = decode_barcodes(f["barcodes"][:])
        arrays = {}
        for k in keys:
            if k not in f:
                raise MintError(f"{sample_id} {path}: dataset '{k}' missing")
            arrays[k] = np.asarray(f[k][:], dtype=np.float32)
    return barcodes, arrays


def parse_variants(variants: list[str]) -> list[tuple[str, list[str]]]:
    out = []
    for v in variants:
        parts = v.split("+")
        bad = [p for p in parts if p not in VARIANT_PARTS]
        if bad or len(set(parts)) != len(parts):
            raise MintError(f"--variants {v}: parts must be distinct among {VARIANT_PARTS}")
        out.append((v, parts))
    if len({v for v, _ in out}) != len(out):
        raise MintError(f"--variants {' '.join(variants)}: duplicated variant")
    return out


def _nan_to_none(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


# ----------------------------------------------------------------------------- driver
def probe_task(
    data: BenchTaskData,
    emb_dir: str | Path,
    model: str,
    variants: list[str],
    cfg: ProbeConfig,
) -> dict:
    """Run every variant on every fold of a task; returns the JSON-ready result dict."""
    emb_dir = Path(emb_dir)
    manifest = read_manifest(emb_dir, data)
    parsed = parse_variants(variants)
    has_st = bool(manifest["has_st"])
    runnable = [(v, parts) for v, parts in parsed if has_st or "st" not in parts]
    skipped = {v: "model has no st embedding" for v, parts in parsed if (v, parts) not in runnable}
    for v in skipped:
        log.info("%s: skipping variant %s (model has no st embedding)", data.name, v)
    if not runnable:
        raise MintError(f"{data.name} {emb_dir}: none of the variants {variants} can be formed")
    keys = {p for _, parts in runnable for p in parts}

    emb: dict[str, dict[str, np.ndarray]] = {}
    targets: dict[str, np.ndarray] = {}
    for s in data.samples:
        barcodes, arrays = load_sample_embeddings(emb_dir, manifest, s, keys)
        emb[s.sample_id] = arrays
        targets[s.sample_id] = read_targets(
            s.expr_path, data.genes, barcodes, s.sample_id, data.name
        )

    results: dict[str, dict] = {}
    for v, parts in runnable:
        feats = {sid: np.concatenate([a[p] for p in parts], axis=1) for sid, a in emb.items()}
        folds = []
        for fold in data.folds:
            x_tr = np.concatenate([feats[s.sample_id] for s in fold.train])
            y_tr = np.concatenate([targets[s.sample_id] for s in fold.train])
            x_te = np.concatenate([feats[s.sample_id] for s in fold.test])
            y_te = np.concatenate([targets[s.sample_id] for s in fold.test])
            pred, n_feat, alpha = fit_predict(x_tr, y_tr, x_te, cfg)
            r = pearson_per_gene(y_te, pred)
            nan_genes = [g for g, x in zip(data.genes, r, strict=True) if math.isnan(x)]
            score = fold_score(r, cfg.nan_policy)
            if nan_genes:
                log.warning(
                    "%s %s fold %d: Pearson r undefined for %d gene(s) (%s), policy %s",
                    data.name, v, fold.index, len(nan_genes), ", ".join(nan_genes[:5]),
                    cfg.nan_policy,
                )  # fmt: skip
            folds.append(
                {
                    "fold": fold.index,
                    "train_samples": [s.sample_id for s in fold.train],
                    "test_samples": [s.sample_id for s in fold.test],
                    "n_train": int(len(y_tr)),
                    "n_test": int(len(y_te)),
                    "n_features": int(x_tr.shape[1]),
                    "n_components": n_feat if cfg.pca_components is not None else None,
                    "alpha": alpha,
                    "mean": _nan_to_none(score),
                    "n_nan_genes": len(nan_genes),
                    "nan_genes": nan_genes,
                    "pearson": {g: _nan_to_none(x) for g, x in zip(data.genes, r, strict=True)},
                }
            )
            log.info("%s %s fold %d: r = %.4f", data.name, v, fold.index, score)
        means = np.array([math.nan if f["mean"] is None else f["mean"] for f in folds])
        per_gene = {
            g: _nan_to_none(float(np.mean([math.nan if f["pearson"][g] is None
                                           else f["pearson"][g] for f in folds])))
            for g in data.genes
        }  # fmt: skip
        departures = []
        capped = [f["fold"] for f in folds if f["n_components"] is not None
                  and f["n_components"] < cfg.pca_components]  # fmt: skip
        if capped:
            departures.append(f"pca_cap: {cfg.pca_components} components capped in folds {capped}")
        nan_folds = [f["fold"] for f in folds if f["n_nan_genes"]]
        if nan_folds and cfg.nan_policy != "hest":
            departures.append(
                f"nan_policy {cfg.nan_policy}: undefined r in folds {nan_folds} "
                "(HEST's fold mean would be NaN)"
            )
        results[v] = {
            "mean": _nan_to_none(float(np.mean(means))),
            "departures": departures,
            # which embedding made this number: the tokens concatenated, the forward's precision
            "embedding": {"tokens": list(parts), "precision": manifest.get("precision")},
            "std": _nan_to_none(float(np.std(means))),
            "fold_means": [_nan_to_none(x) for x in means],
            "dim": int(next(iter(feats.values())).shape[1]),
            "n_nan_genes": int(sum(f["n_nan_genes"] for f in folds)),
            "gene_means": per_gene,
            "folds": folds,
        }
        log.info("%s %s %s: %.4f +- %.4f", model, data.name, v, np.mean(means), np.std(means))

    return {
        "model": model,
        "task": data.name,
        "n_folds": data.n_folds,
        "genes": data.genes,
        "variants": results,
        "skipped_variants": skipped,
        "settings": _settings(cfg, len(data.genes), manifest, emb_dir),
    }


def _settings(cfg: ProbeConfig, n_genes: int, manifest: dict, emb_dir: Path) -> dict:
    import importlib.metadata as md

    import mint

    def ver(pkg: str) -> str | None:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    pca = cfg.pca_components is not None
    return {
        "protocol": "HEST-Bench (mahmoodlab/HEST benchmark.py + trainer.py)",
        "seed": cfg.seed,
        "pca": pca,
        "pca_components_requested": cfg.pca_components,
        "scaler": "StandardScaler" if pca else None,
        "alpha": f"{cfg.alpha_numerator:g}/(n_features*n_genes)",
        "ridge": {"solver": "lsqr", "fit_intercept": False, "max_iter": cfg.max_iter},
        "targets": "log1p(raw counts)",
        "n_genes": n_genes,
        "nan_policy": cfg.nan_policy,
        "std_ddof": 0,
        "embeddings": {
            "dir": str(emb_dir),
            "model": manifest.get("model"),
            "fingerprint": manifest.get("fingerprint"),
            "precision": manifest.get("precision"),
            "precision_requested": manifest.get("precision_requested"),
            "precision_source": manifest.get("precision_source"),
            "embed_dim": manifest.get("embed_dim"),
            "has_st": manifest.get("has_st"),
        },
        "versions": {
            "mint": mint.__version__,
            "scikit-learn": ver("scikit-learn"),
            "numpy": ver("numpy"),
            "scipy": ver("scipy"),
        },
    }


def run(args: argparse.Namespace) -> int:
    if args.pca_components is not None and args.pca_components < 1:
        raise MintError(f"--pca-components {args.pca_components}: must be >= 1")
    cfg = ProbeConfig(
        seed=args.seed,
        pca_components=args.pca_components,
        nan_policy=args.nan_policy,
    )
    data = load_task(args.bench_dir, args.task)
    result = probe_task(data, args.embeddings, args.model, args.variants, cfg)
    write_json(args.out, result)
    log.info("wrote %s", args.out)
    return 0
