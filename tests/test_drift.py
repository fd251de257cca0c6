"""Forgetting measures (mint.eval.drift): linear CKA and mean cosine, and the drift stage on
bench embedding caches."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from mint.errors import MintError
from mint.eval.drift import linear_cka, mean_cosine, paired_cls


def _rng(seed=0):
    return np.random.default_rng(seed)


def test_cka_of_identical_embeddings_is_one():
    a = _rng().normal(size=(200, 16))
    assert linear_cka(a, a) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("n", [10, 300])  # Gram form (n < d) and feature form (n >= d)
def test_cka_is_invariant_to_rotation_scale_and_offset(n):
    a = _rng(1).normal(size=(n, 24))
    q, _ = np.linalg.qr(_rng(2).normal(size=(24, 24)))
    b = 3.7 * a @ q + 5.0
    assert linear_cka(a, b) == pytest.approx(1.0, abs=1e-9)
    # ... but not to an anisotropic rescaling of the features
    c = a * np.linspace(0.1, 10, 24)
    assert linear_cka(a, c) < 0.9


def test_cka_of_unrelated_embeddings_is_low_and_symmetric():
    a = _rng(3).normal(size=(500, 16))
    b = _rng(4).normal(size=(500, 32))  # other width: CKA does not need equal features
    assert linear_cka(a, b) < 0.15
    assert linear_cka(a, b) == pytest.approx(linear_cka(b, a))
    # partly related: in between
    mixed = np.hstack([a[:, :8], b[:, :8]])
    assert 0.15 < linear_cka(a, mixed) < 0.9


def test_cka_refuses_mismatched_or_constant_inputs():
    with pytest.raises(MintError, match="same samples"):
        linear_cka(np.ones((5, 3)), np.ones((6, 3)))
    with pytest.raises(MintError, match="constant"):
        linear_cka(np.ones((5, 3)), _rng().normal(size=(5, 3)))


def test_mean_cosine():
    a = _rng(5).normal(size=(50, 8))
    assert mean_cosine(a, a) == pytest.approx(1.0)
    assert mean_cosine(a, -2 * a) == pytest.approx(-1.0)
    # a rotation keeps CKA at 1 but moves the features: cosine drops
    q, _ = np.linalg.qr(_rng(6).normal(size=(8, 8)))
    assert mean_cosine(a, a @ q) < 0.9
    with pytest.raises(MintError, match="equal shapes"):
        mean_cosine(a, a[:, :4])


def _cache(folder, samples: dict[str, np.ndarray]):
    folder.mkdir(parents=True)
    manifest = {"samples": {}}
    for sid, cls in samples.items():
        with h5py.File(folder / f"{sid}.h5", "w") as f:
            f["cls"] = cls.astype(np.float32)
            codes = [f"bc{i}".encode() for i in range(len(cls))]
            f["barcodes"] = np.array(codes).reshape(-1, 1)
        manifest["samples"][sid] = {"file": f"{sid}.h5", "n": len(cls)}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_drift_cli_pairs_patches_by_barcode(tmp_path):
    from mint.cli import main

    a = _rng(7).normal(size=(40, 8))
    _cache(tmp_path / "base/T", {"S1": a[:25], "S2": a[25:]})
    # the run's cache lists the samples in another order: pairing is by sample and barcode
    _cache(tmp_path / "run/T", {"S2": a[25:] * 2.0, "S1": a[:25] * 2.0})
    out = tmp_path / "drift.json"
    rc = main(
        [
            "drift",
            "--base-embeddings",
            str(tmp_path / "base/T"),
            "--run-embeddings",
            str(tmp_path / "run/T"),
            "--base-model",
            "tiny-vit",
            "--run-model",
            "results/models/x",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    rec = json.loads(out.read_text())
    assert rec["n_patches"] == 40
    assert rec["linear_cka"] == pytest.approx(1.0) and rec["mean_cosine"] == pytest.approx(1.0)
    assert "morphology" not in rec

    b, c = paired_cls([tmp_path / "base/T"], [tmp_path / "run/T"], max_rows=10, seed=0)
    assert b.shape == c.shape == (10, 8) and np.allclose(2 * b, c)


def test_drift_names_a_missing_cache(tmp_path):
    from mint.cli import main

    rc = main(
        [
            "drift",
            "--base-embeddings",
            str(tmp_path / "nope"),
            "--run-embeddings",
            str(tmp_path / "nope"),
            "--base-model",
            "b",
            "--run-model",
            "r",
            "--out",
            str(tmp_path / "d.json"),
        ]
    )
    assert rc == 2 and not (tmp_path / "d.json").exists()
