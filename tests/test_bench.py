"""HEST-Bench stage: reader, embedding cache, the probe protocol (checked against an independent
sklearn computation), fold logic and the summary table.

Small bench fixtures are built here in the hest-bench layout (patches h5, adata h5ad, splits,
var_50genes.json) so the tests do not depend on the synthetic generator.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from mint.cli import main as mint_main

GENES = [f"G{i:02d}" for i in range(6)]


# --------------------------------------------------------------------------- fixture builders
def make_task(
    bench: Path,
    task: str,
    n_spots: dict[str, int],
    folds: list[tuple[list[str], list[str]]],
    seed: int = 0,
    genes: list[str] = GENES,
    img: int = 24,
    sparse: bool = True,
) -> dict[str, dict]:
    """Write one task in hest-bench layout. Returns per sample: barcodes and the raw counts of
    `genes` in barcode order (the ground truth the tests compare against)."""
    rng = np.random.default_rng(seed)
    root = bench / task
    for sub in ("adata", "patches", "splits"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    var = list(genes) + [f"OTHER{i}" for i in range(4)]
    var_order = rng.permutation(len(var))
    truth = {}
    for sid, n in n_spots.items():
        barcodes = [f"{sid}-{i:04d}-1" for i in range(n)]
        extra = [f"{sid}-x{i}-1" for i in range(3)]  # spots without a patch (tissue filter)
        counts = rng.poisson(rng.uniform(0.5, 8, size=len(var)), size=(n + 3, len(var)))
        obs_perm = rng.permutation(n + 3)
        obs_names = np.array(barcodes + extra)[obs_perm]
        x = counts[obs_perm][:, var_order].astype(np.float32)
        adata = ad.AnnData(
            X=sp.csr_matrix(x) if sparse else x,
            obs=pd.DataFrame(index=list(obs_names)),
            var=pd.DataFrame(index=[var[i] for i in var_order]),
        )
        adata.write_h5ad(root / "adata" / f"{sid}.h5ad")
        with h5py.File(root / "patches" / f"{sid}.h5", "w") as f:
            f["img"] = rng.integers(0, 256, size=(n, img, img, 3), dtype=np.uint8)
            f["coords"] = rng.integers(0, 10_000, size=(n, 2)).astype(np.int64)
            f["barcode"] = np.array(barcodes, dtype="S").reshape(-1, 1)
        truth[sid] = {"barcodes": barcodes, "counts": counts[:n, : len(genes)].astype(float)}
    for k, (train, test) in enumerate(folds):
        for kind, ids in (("train", train), ("test", test)):
            pd.DataFrame(
                {
                    "sample_id": ids,
                    "patches_path": [f"patches/{i}.h5" for i in ids],
                    "expr_path": [f"adata/{i}.h5ad" for i in ids],
                }
            ).to_csv(root / "splits" / f"{kind}_{k}.csv", index=False)
    (root / "var_50genes.json").write_text(json.dumps({"genes": list(genes)}))
    return truth


def write_random_embeddings(
    emb_dir: Path, task: str, truth: dict, dim: int, seed: int, has_st: bool = True
) -> dict[str, dict[str, np.ndarray]]:
    """A cache in `mint embed`'s format holding fixed random vectors."""
    rng = np.random.default_rng(seed)
    emb_dir.mkdir(parents=True, exist_ok=True)
    out, samples = {}, {}
    keys = ["cls", "patch_mean"] + (["st"] if has_st else [])
    # Embeddings related to the targets (same map for every sample) so r is not ~0.
    w = rng.normal(size=(len(GENES), dim))
    for sid, t in truth.items():
        n = len(t["barcodes"])
        base = np.log1p(t["counts"][:, : len(GENES)]) @ w
        arrays = {k: (base + rng.normal(scale=4.0, size=(n, dim))).astype(np.float32) for k in keys}
        with h5py.File(emb_dir / f"{sid}.h5", "w") as f:
            for k, v in arrays.items():
                f[k] = v
            f["barcodes"] = np.array(t["barcodes"], dtype="S").reshape(-1, 1)
            f["coords"] = np.zeros((n, 2), dtype=np.int64)
            f.attrs.update({"fingerprint": "fp", "embed_dim": dim, "has_st": has_st})
        out[sid] = arrays
        samples[sid] = {"file": f"{sid}.h5", "n": n}
    manifest = {
        "version": 1, "model": "random", "task": task, "fingerprint": "fp", "embed_dim": dim,
        "has_st": has_st, "datasets": keys, "precision": "fp32", "samples": samples,
    }  # fmt: skip
    (emb_dir / "manifest.json").write_text(json.dumps(manifest))
    return out


def reference_protocol(xtr, ytr, xte, yte, n_components, seed=1):
    """HEST's probe along HEST's own code path, written independently of the project.

    mahmoodlab/HEST src/hest/bench/benchmark.py `predict_single_split`: embeddings as read from
    the h5 (float32), `Pipeline([StandardScaler, PCA(latent_dim, random_state=seed)])`, then
    `torch.Tensor(...)` around both outputs; `trainer.py` `train_test_reg`: Ridge(lsqr,
    alpha=100/(X.shape[1]*y.shape[1]), fit_intercept=False, max_iter=1000) fitted on those
    tensors (scikit-learn turns them into float64), `scipy.stats.pearsonr` per gene, np.mean.
    Targets: load_adata(normalize=True) casts counts to float64 before log1p.
    """
    import torch
    from scipy.stats import pearsonr
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    xtr, xte = np.asarray(xtr, dtype=np.float32), np.asarray(xte, dtype=np.float32)
    if n_components is not None:
        pipe = Pipeline(
            [
                ("scaler", StandardScaler()),
                ("PCA", PCA(n_components=n_components, random_state=seed)),
            ]
        )
        xtr, xte = torch.Tensor(pipe.fit_transform(xtr)), torch.Tensor(pipe.transform(xte))
    alpha = 100 / (xtr.shape[1] * ytr.shape[1])
    reg = Ridge(solver="lsqr", alpha=alpha, random_state=seed, fit_intercept=False, max_iter=1000)
    reg.fit(xtr, ytr)
    pred = reg.predict(xte)
    rs = [pearsonr(yte[:, j], pred[:, j])[0] for j in range(yte.shape[1])]
    return [float(r) for r in rs], float(np.mean(rs))


def run_cli(argv: list[str]) -> int:
    return mint_main(argv)


# --------------------------------------------------------------------------- probe vs reference
@pytest.mark.parametrize(
    "pca_args, n_comp", [(["--pca-components", "8"], 8), ([], "cap"), (["--no-pca"], None)]
)
def test_probe_matches_independent_sklearn(tmp_path, pca_args, n_comp):
    bench = tmp_path / "bench"
    n_spots = {"S1": 70, "S2": 55, "S3": 64}
    folds = [(["S1", "S2"], ["S3"]), (["S3"], ["S1", "S2"])]
    truth = make_task(bench, "T", n_spots, folds, seed=3)
    dim = 20
    emb = write_random_embeddings(tmp_path / "emb", "T", truth, dim=dim, seed=5)
    out = tmp_path / "res" / "T.json"
    variants = ["cls", "st", "cls+st", "cls+patch_mean"]
    rc = run_cli(
        ["probe", "--embeddings", str(tmp_path / "emb"), "--bench-dir", str(bench), "--task", "T",
         "--model", "m", "--variants", *variants, "--out", str(out), "--seed", "1", *pca_args]
    )  # fmt: skip
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["settings"]["seed"] == 1 and res["settings"]["n_genes"] == len(GENES)
    assert res["settings"]["pca"] is (n_comp is not None)

    for v in variants:
        parts = v.split("+")
        feat = {s: np.concatenate([emb[s][p] for p in parts], axis=1) for s in emb}
        fold_means = []
        for k, (train, test) in enumerate(folds):
            xtr = np.concatenate([feat[s] for s in train])
            xte = np.concatenate([feat[s] for s in test])
            ytr = np.log1p(np.concatenate([truth[s]["counts"] for s in train]))
            yte = np.log1p(np.concatenate([truth[s]["counts"] for s in test]))
            k_ref = n_comp if n_comp != "cap" else min(256, xtr.shape[0], xtr.shape[1])
            rs, m = reference_protocol(xtr, ytr, xte, yte, k_ref)
            got = res["variants"][v]["folds"][k]
            assert got["n_train"] == len(xtr) and got["n_test"] == len(xte)
            assert got["n_components"] == k_ref
            assert got["alpha"] == pytest.approx(100 / ((k_ref or xtr.shape[1]) * len(GENES)))
            # Equal to HEST's path to the last digit (a float32 solve is ~1e-6 off here).
            np.testing.assert_allclose([got["pearson"][g] for g in GENES], rs, atol=1e-12, rtol=0)
            assert abs(got["mean"] - m) <= 1e-12
            fold_means.append(m)
        assert abs(res["variants"][v]["mean"] - np.mean(fold_means)) <= 1e-12
        assert abs(res["variants"][v]["std"] - np.std(fold_means, ddof=0)) <= 1e-12
        assert res["variants"][v]["dim"] == dim * len(parts)
        capped = any(d.startswith("pca_cap") for d in res["variants"][v]["departures"])
        assert capped is (n_comp == "cap")


# --------------------------------------------------------------------------- folds + summary
def test_three_folds_and_hcc_excluded_from_average(tmp_path):
    bench = tmp_path / "bench"
    ids = ["A", "B", "C"]
    folds = [([i for i in ids if i != t], [t]) for t in ids]  # leave one out: 3 folds
    results = []
    for seed, task in enumerate(["IDC", "SYNTH_X", "HCC"]):
        truth = make_task(bench, task, {"A": 40, "B": 45, "C": 50}, folds, seed=seed)
        emb = tmp_path / "emb" / task
        write_random_embeddings(emb, task, truth, dim=12, seed=seed, has_st=False)
        out = tmp_path / "res" / f"{task}.json"
        assert run_cli(["probe", "--embeddings", str(emb), "--bench-dir", str(bench),
                        "--task", task, "--model", "base", "--out", str(out)]) == 0  # fmt: skip
        results.append(out)

    res = json.loads(results[0].read_text())
    assert res["n_folds"] == 3
    # Model without an ST token: st variants are skipped and said so.
    assert set(res["variants"]) == {"cls", "cls+patch_mean"}
    assert set(res["skipped_variants"]) == {"st", "cls+st"}
    cls = res["variants"]["cls"]
    assert [f["test_samples"] for f in cls["folds"]] == [["A"], ["B"], ["C"]]
    assert [f["train_samples"] for f in cls["folds"]] == [["B", "C"], ["A", "C"], ["A", "B"]]
    assert [f["n_test"] for f in cls["folds"]] == [40, 45, 50]
    means = [f["mean"] for f in cls["folds"]]
    assert cls["mean"] == pytest.approx(np.mean(means))
    assert cls["std"] == pytest.approx(np.std(means))

    csv = tmp_path / "summary.csv"
    assert run_cli(["bench-summary", "--inputs", *map(str, results), "--out", str(csv)]) == 0
    df = pd.read_csv(csv)
    assert list(df.columns) == [
        "model", "variant", "IDC", "SYNTH_X", "average", "HCC", "precision"
    ]  # fmt: skip
    assert set(df["precision"]) == {"fp32"}  # the embeddings' precision, from each result JSON
    row = df[df.variant == "cls"].iloc[0]
    per_task = {t: json.loads((tmp_path / "res" / f"{t}.json").read_text()) for t in
                ["IDC", "SYNTH_X", "HCC"]}  # fmt: skip
    exp = {t: per_task[t]["variants"]["cls"]["mean"] for t in per_task}
    assert row["average"] == pytest.approx((exp["IDC"] + exp["SYNTH_X"]) / 2, abs=1e-4)
    assert row["HCC"] == pytest.approx(exp["HCC"], abs=1e-4)


def test_summary_incomplete_row_has_no_average():
    from mint.bench.summary import summarize

    long = pd.DataFrame(
        {
            "model": ["a", "a", "b"], "task": ["IDC", "PRAD", "IDC"],
            "variant": ["cls", "cls", "cls"], "mean": [0.5, 0.3, 0.4],
        }
    )  # fmt: skip
    out = summarize(long).set_index("model")
    assert out.loc["a", "average"] == pytest.approx(0.4)
    assert math.isnan(out.loc["b", "average"])
    assert list(out.columns) == ["variant", "IDC", "PRAD", "average"]


def test_constant_gene_is_reported_and_counted_as_zero(tmp_path):
    bench = tmp_path / "bench"
    folds = [(["S1"], ["S2"])]
    truth = make_task(bench, "T", {"S1": 60, "S2": 50}, folds, seed=1, sparse=False)
    # Make G00 constant on the test sample.
    p = bench / "T" / "adata" / "S2.h5ad"
    a = ad.read_h5ad(p)
    a.X[:, list(a.var_names).index("G00")] = 3
    a.write_h5ad(p)
    write_random_embeddings(tmp_path / "emb", "T", truth, dim=10, seed=2)
    res = {}
    for policy in ("zero", "exclude", "hest"):
        out = tmp_path / f"{policy}.json"
        assert run_cli(["probe", "--embeddings", str(tmp_path / "emb"), "--bench-dir", str(bench),
                        "--task", "T", "--model", "m", "--variants", "cls", "--out", str(out),
                        "--nan-policy", policy]) == 0  # fmt: skip
        res[policy] = json.loads(out.read_text())["variants"]["cls"]
    f = res["zero"]["folds"][0]
    assert f["pearson"]["G00"] is None and f["nan_genes"] == ["G00"] and f["n_nan_genes"] == 1
    others = [f["pearson"][g] for g in GENES[1:]]
    assert f["mean"] == pytest.approx(sum(others) / len(GENES))
    assert res["exclude"]["folds"][0]["mean"] == pytest.approx(np.mean(others))
    assert res["hest"]["folds"][0]["mean"] is None and res["hest"]["mean"] is None


# --------------------------------------------------------------------------- reader errors
def _probe_error(tmp_path, bench, task, capsys) -> str:
    rc = run_cli(["probe", "--embeddings", str(tmp_path / "emb"), "--bench-dir", str(bench),
                  "--task", task, "--model", "m", "--out", str(tmp_path / "o.json")])  # fmt: skip
    assert rc == 2
    assert not (tmp_path / "o.json").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    return err[0]


def test_reader_errors(tmp_path, capsys):
    from mint.bench.data import load_task, read_targets
    from mint.errors import MintError

    bench = tmp_path / "bench"
    folds = [(["S1"], ["S2"])]
    truth = make_task(bench, "T", {"S1": 20, "S2": 20}, folds)
    write_random_embeddings(tmp_path / "emb", "T", truth, dim=4, seed=0)
    root = bench / "T"

    # missing gene: names task, sample, file and gene
    (root / "var_50genes.json").write_text(json.dumps({"genes": GENES + ["NOPE"]}))
    msg = _probe_error(tmp_path, bench, "T", capsys)
    assert "NOPE" in msg and "S1" in msg and "S1.h5ad" in msg and "T " in msg
    (root / "var_50genes.json").write_text(json.dumps({"genes": GENES}))

    # barcode of a patch missing from the h5ad
    p = root / "adata" / "S2.h5ad"
    a = ad.read_h5ad(p)
    a[[n for n in a.obs_names if n != "S2-0005-1"]].copy().write_h5ad(p)
    msg = _probe_error(tmp_path, bench, "T", capsys)
    assert "S2-0005-1" in msg and "S2.h5ad" in msg
    with pytest.raises(MintError, match="S2-0005-1"):
        read_targets(p, GENES, truth["S2"]["barcodes"], "S2", "T")

    # empty split
    (root / "splits" / "test_0.csv").write_text("sample_id,patches_path,expr_path\n")
    msg = _probe_error(tmp_path, bench, "T", capsys)
    assert "test_0.csv" in msg and "empty" in msg
    (root / "splits" / "test_0.csv").write_text("")
    with pytest.raises(MintError, match="test_0.csv.*empty"):
        load_task(bench, "T")

    # anything else in splits/ would change HEST's fold count: refused
    pd.DataFrame({"sample_id": ["S2"], "patches_path": ["patches/S2.h5"],
                  "expr_path": ["adata/S2.h5ad"]}).to_csv(root / "splits" / "test_0.csv", index=False)  # fmt: skip
    assert load_task(bench, "T").n_folds == 1
    (root / "splits" / "README.txt").write_text("x")
    with pytest.raises(MintError, match="README.txt"):
        load_task(bench, "T")
    (root / "splits" / "README.txt").unlink()
    (root / "splits" / "train_1.csv").write_text((root / "splits" / "train_0.csv").read_text())
    with pytest.raises(MintError, match="odd number"):
        load_task(bench, "T")
    (root / "splits" / "test_2.csv").write_text((root / "splits" / "test_0.csv").read_text())
    with pytest.raises(MintError, match="test_1.csv"):
        load_task(bench, "T")

    # a listed file that does not exist
    (root / "splits" / "train_1.csv").unlink()
    (root / "splits" / "test_2.csv").unlink()
    (root / "patches" / "S1.h5").rename(root / "patches" / "S1.bak")
    with pytest.raises(MintError, match=r"S1 .*S1\.h5.*not found"):
        load_task(bench, "T")


def test_targets_are_log1p_raw_counts_in_patch_order(tmp_path):
    from mint.bench.data import load_task, read_patch_index, read_targets

    bench = tmp_path / "bench"
    truth = make_task(bench, "T", {"S1": 30, "S2": 25}, [(["S1"], ["S2"])], seed=7)
    data = load_task(bench, "T")
    assert data.genes == GENES and [s.sample_id for s in data.samples] == ["S1", "S2"]
    for s in data.samples:
        barcodes, coords, n = read_patch_index(s, "T")
        assert barcodes == truth[s.sample_id]["barcodes"] and coords.shape == (n, 2)
        y = read_targets(s.expr_path, data.genes, barcodes, s.sample_id, "T")
        np.testing.assert_array_equal(y, np.log1p(truth[s.sample_id]["counts"]))


# --------------------------------------------------------------------------- embed cache
class FakeEncoder:
    """Stands in for mint.models.encoder.Encoder: same attributes, forward and transform."""

    def __init__(self, dim=8, has_st=True):
        import torch

        self.name, self.embed_dim, self.has_st = "fake", dim, has_st
        self.img_size, self.patch_size = 24, 8
        self.mean, self.std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
        g = torch.Generator().manual_seed(0)
        self.w = torch.randn(3 * 9, dim, generator=g)
        self.calls = 0

    def eval(self):
        return self

    def transform(self):
        import torch

        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)

        def tf(img: np.ndarray):
            t = torch.from_numpy(np.asarray(img)).permute(2, 0, 1).float() / 255.0
            return (t - mean) / std

        return tf

    def __call__(self, x):
        import torch.nn.functional as F

        self.calls += 1
        pooled = F.adaptive_avg_pool2d(x, 3).flatten(1)  # [B, 27]
        cls = pooled @ self.w
        out = {"cls": cls, "patch_mean": cls.tanh()}
        if self.has_st:
            out["st"] = cls * 2 + 1
        return out


def test_embed_writes_cache_and_reuses_it(tmp_path, monkeypatch):
    import mint.bench.embed as embed_mod

    bench = tmp_path / "bench"
    truth = make_task(bench, "T", {"S1": 37, "S2": 20}, [(["S1"], ["S2"])], seed=2)
    built = []

    def fake_build(spec, device):
        assert device == "cpu"
        built.append(spec)
        return FakeEncoder(dim=8, has_st=True)

    monkeypatch.setattr(embed_mod, "_build_encoder", fake_build)
    out = tmp_path / "emb"
    args = ["embed", "--model", "fake", "--bench-dir", str(bench), "--task", "T",
            "--out-dir", str(out), "--batch-size", "16", "--device", "cpu"]  # fmt: skip
    assert run_cli([*args, "--num-workers", "1"]) == 0
    assert built == ["fake"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["samples"] == {
        "S1": {"file": "S1.h5", "n": 37},
        "S2": {"file": "S2.h5", "n": 20},
    }
    assert manifest["embed_dim"] == 8 and manifest["has_st"] is True
    assert manifest["datasets"] == ["cls", "patch_mean", "st"]
    # precision recorded as resolved (CPU: fp32, no autocast) and as requested
    assert (manifest["precision"], manifest["precision_requested"]) == ("fp32", "auto")

    # The cache holds exactly what the encoder returns, in patch order.
    enc = FakeEncoder()
    tf = enc.transform()
    import torch

    with h5py.File(bench / "T" / "patches" / "S1.h5", "r") as f:
        imgs = f["img"][:]
    ref = enc(torch.stack([tf(im) for im in imgs]))
    with h5py.File(out / "S1.h5", "r") as f:
        for k in ("cls", "patch_mean", "st"):
            np.testing.assert_allclose(f[k][:], ref[k].numpy(), rtol=1e-5, atol=1e-5)
        assert [b.decode() for b in f["barcodes"][:, 0]] == truth["S1"]["barcodes"]
        assert f["coords"].shape == (37, 2)
    assert not list(out.glob(".*tmp*"))  # no temporary leftovers

    # Second run: everything cached, the model is not even built.
    mtime = (out / "S1.h5").stat().st_mtime_ns
    assert run_cli([*args, "--num-workers", "0"]) == 0
    assert built == ["fake"]
    assert (out / "S1.h5").stat().st_mtime_ns == mtime

    # A lost sample file is recomputed alone; --overwrite recomputes everything.
    (out / "S2.h5").unlink()
    assert run_cli([*args, "--num-workers", "0"]) == 0
    assert built == ["fake", "fake"] and (out / "S1.h5").stat().st_mtime_ns == mtime
    assert run_cli([*args, "--num-workers", "0", "--overwrite"]) == 0
    assert (out / "S1.h5").stat().st_mtime_ns != mtime

    # The probe runs on this cache end to end.
    res_path = tmp_path / "r.json"
    assert run_cli(["probe", "--embeddings", str(out), "--bench-dir", str(bench), "--task", "T",
                    "--model", "fake", "--out", str(res_path)]) == 0  # fmt: skip
    res = json.loads(res_path.read_text())
    assert set(res["variants"]) == {"cls", "st", "cls+st", "cls+patch_mean"}
    assert res["variants"]["cls"]["folds"][0]["n_components"] == 8  # capped at the embedding dim
    # each number says which embedding made it: tokens and the forward's precision
    assert res["variants"]["cls+patch_mean"]["embedding"] == {
        "tokens": ["cls", "patch_mean"],
        "precision": "fp32",
    }
    assert res["settings"]["embeddings"]["precision_source"] == "cpu: no autocast"

    # Patches rewritten after embedding: the probe refuses the stale cache, embed redoes S2 only.
    import os

    p2 = bench / "T" / "patches" / "S2.h5"
    os.utime(p2, ns=(p2.stat().st_atime_ns, p2.stat().st_mtime_ns + 10**9))
    assert run_cli(["probe", "--embeddings", str(out), "--bench-dir", str(bench), "--task", "T",
                    "--model", "fake", "--out", str(res_path)]) == 2  # fmt: skip
    n_built = len(built)
    mtime = (out / "S1.h5").stat().st_mtime_ns
    assert run_cli([*args, "--num-workers", "0"]) == 0
    assert len(built) == n_built + 1 and (out / "S1.h5").stat().st_mtime_ns == mtime


def test_embed_model_change_invalidates_cache(tmp_path, monkeypatch):
    import mint.bench.embed as embed_mod

    bench = tmp_path / "bench"
    make_task(bench, "T", {"S1": 10, "S2": 12}, [(["S1"], ["S2"])])
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text('{"a": 1}')
    built = []
    monkeypatch.setattr(
        embed_mod, "_build_encoder", lambda spec, device: built.append(spec) or FakeEncoder()
    )
    args = ["embed", "--model", str(model_dir), "--bench-dir", str(bench), "--task", "T",
            "--out-dir", str(tmp_path / "emb"), "--device", "cpu", "--num-workers", "0"]  # fmt: skip
    assert run_cli(args) == 0
    assert run_cli(args) == 0
    assert len(built) == 1
    (model_dir / "config.json").write_text('{"a": 2}')  # retrained model, same folder
    assert run_cli(args) == 0
    assert len(built) == 2


def test_precision_per_backbone_as_hests_bench(tmp_path):
    """HEST's bench (hest/bench/cpath_model_zoo/inference_models.py) embeds UNI, Virchow2 and
    H-optimus-0 under fp16 autocast and GigaPath in fp32; a MINT model inherits its base
    backbone's; models outside HEST's zoo run fp32; --precision forces one; CPU is fp32."""
    import torch

    from mint.bench.embed import resolve_precision
    from mint.precision import autocast_dtype

    expected = {"uni": "fp16", "virchow2": "fp16", "h-optimus-0": "fp16", "gigapath": "fp32",
                "uni2-h": "fp32", "h-optimus-1": "fp32", "tiny-vit": "fp32",
                "timm:vit_small_patch14_dinov2": "fp32"}  # fmt: skip
    for spec, prec in expected.items():
        assert resolve_precision("auto", spec, "cuda")[0] == prec, spec
        assert resolve_precision("auto", spec, "cpu")[0] == "fp32"
    model_dir = tmp_path / "mint_uni"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"backbone": "uni"}))
    assert resolve_precision("auto", str(model_dir), "cuda:0")[0] == "fp16"
    assert resolve_precision("bf16", "gigapath", "cuda") == ("bf16", "forced by --precision")
    assert autocast_dtype("fp16", "cuda", cpu_autocast=False) == torch.float16
    assert autocast_dtype("fp32", "cuda", cpu_autocast=False) is None
    assert autocast_dtype("fp16", "cpu", cpu_autocast=False) is None


def test_leaderboard_loads():
    from mint.bench.summary import load_leaderboard

    df = load_leaderboard()
    assert list(df.columns[:3]) == ["model", "average", "IDC"]
    assert "HCC" not in df.columns and len(df) >= 20
    assert "HEST" in df.attrs["source"]
    row = df.set_index("model").loc["UNI"]
    tasks = ["IDC", "PRAD", "PAAD", "SKCM", "COAD", "READ", "CCRCC", "LUNG", "LYMPH_IDC"]
    assert row["average"] == pytest.approx(np.mean(row[tasks]), abs=6e-4)


@pytest.mark.parametrize(
    "stray, message",
    [("README.txt", "unexpected file in splits/"), ("train_1.csv", "odd number of split files")],
)
def test_download_and_probe_read_splits_alike(tmp_path, stray, message):
    """HEST takes the fold count from the files in splits/: the download's check and the
    probe's reader must refuse the same folders with the same words (one function)."""
    from mint.bench.data import load_task
    from mint.errors import MintError
    from mint.hest.download_bench import check_task

    bench = tmp_path / "bench"
    make_task(bench, "T", {"S1": 12, "S2": 12}, [(["S1"], ["S2"])])
    root = bench / "T"
    assert check_task(root, "T") == 1 and load_task(bench, "T").n_folds == 1
    (root / "splits" / stray).write_text((root / "splits" / "train_0.csv").read_text())
    for read in (lambda: check_task(root, "T"), lambda: load_task(bench, "T")):
        with pytest.raises(MintError, match=message):
            read()
