"""`mint vocab` and `mint shards`: vocabularies, masks, global shuffle, exact round trip."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
import webdataset as wds
from helpers import P, write_tile

from mint.cli import main
from mint.data.shards import plan, val_sources
from mint.data.tiles import read_info
from mint.data.vocab import build_vocab
from mint.errors import MintError


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("vs")
    rng = np.random.default_rng(7)
    all_genes = [f"GENE{i:02d}" for i in range(40)]
    tiles = {}
    # Visium-like samples; SV02 lacks GENE00..GENE04 (an older probe set)
    for sid, n, genes in (
        ("SV00", 23, all_genes),
        ("SV01", 17, all_genes[::-1]),
        ("SV02", 12, all_genes[5:]),
    ):
        depth = rng.uniform(0.5, 3, (n, 1))
        rates = rng.gamma(0.6, 4, len(genes))
        counts = rng.poisson(depth * rates)
        counts[:, 0] += 1  # no empty spot
        tiles[sid] = write_tile(d / f"{sid}.h5", sid, genes, counts, rng=rng)
    xg = ["XA", "XB", "XC", "BLANK_0003", "GENE07"]
    tiles["SX00"] = write_tile(
        d / "SX00.h5", "SX00", xg, rng.poisson(3, (14, len(xg))), level="patch", rng=rng
    )
    bench = d / "bench"
    for task, genes in (("T1", ["GENE01", "GENE10", "NOTMEASURED"]), ("T2", ["XA", "GENE39"])):
        (bench / task / "adata").mkdir(parents=True)
        (bench / task / "var_50genes.json").write_text(json.dumps({"genes": genes}))
        (bench / task / "adata" / f"BENCH_{task}.h5ad").write_text("")
    return d, tiles, bench


def test_seurat_hvg_matches_scanpy(tmp_path):
    rng = np.random.default_rng(3)
    genes = [f"G{i:03d}" for i in range(120)]
    mats = []
    infos = []
    for k in range(3):
        n = 40 + 10 * k
        disp = rng.uniform(0.2, 5, len(genes))
        mu = rng.gamma(0.5, 6, len(genes)) * rng.uniform(0.5, 2)
        counts = rng.negative_binomial(disp, disp / (disp + mu), (n, len(genes)))
        counts[:, 0] += 1
        mats.append(counts)
        write_tile(
            tmp_path / f"S{k}.h5",
            f"S{k}",
            genes,
            counts,
            rng=rng,
            imgs=np.zeros((n, P, P, 3), np.uint8),
        )
        infos.append(read_info(tmp_path / f"S{k}.h5"))
    visium, _, _ = build_vocab(infos, {}, 25, progress=False)
    a = ad.AnnData(X=np.concatenate(mats).astype(np.float32))
    a.var_names = genes
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    sc.pp.highly_variable_genes(a, flavor="seurat", n_top_genes=25)
    assert visium == sorted(a.var_names[a.var["highly_variable"]])


def test_vocab_cli(data, tmp_path):
    d, tiles, bench = data
    out = tmp_path / "genes"
    args = [
        "vocab",
        "--tiles",
        *[str(d / f"{s}.h5") for s in tiles],
        "--bench-dir",
        str(bench),
        "--bench-tasks",
        "T1",
        "T2",
        "--n-top-genes",
        "5",
        "--out-dir",
        str(out),
    ]
    assert main(args) == 0
    visium = (out / "visium.txt").read_text().split()
    xenium = (out / "xenium.txt").read_text().split()
    # every bench gene measured by a spot-level sample, none that is not
    assert {"GENE01", "GENE10", "GENE39"} <= set(visium)
    assert "NOTMEASURED" not in visium and "XA" not in visium  # XA: Xenium only
    assert 5 <= len(visium) <= 8 and visium == sorted(visium)
    assert xenium == ["GENE07", "XA", "XB", "XC"]  # union of panels, control dropped
    # errors: missing bench folder, missing task
    args_bad = list(args)
    args_bad[args_bad.index(str(bench))] = str(tmp_path / "nobench")
    assert main(args_bad) == 2
    with pytest.raises(MintError, match=r"T9 .*T9/var_50genes\.json: bench gene list not found"):
        from mint.data.vocab import read_bench_genes

        read_bench_genes(bench, ["T9"])


def test_min_sample_fraction_excludes_rare_genes(data):
    d, tiles, _ = data
    infos = [read_info(d / f"{s}.h5") for s in ("SV00", "SV01", "SV02")]
    # GENE00..04 are measured by 2 of 3 samples: candidates at 0.5, not at 0.9
    v50, _, _ = build_vocab(infos, {}, 40, min_sample_fraction=0.5, progress=False)
    v90, _, _ = build_vocab(infos, {}, 40, min_sample_fraction=0.9, progress=False)
    assert {"GENE00", "GENE04"} & set(v50)
    assert not {"GENE00", "GENE01", "GENE02", "GENE03", "GENE04"} & set(v90)


def _read_all(out: Path) -> list[dict]:
    urls = sorted(glob.glob(str(out / "*.tar")))
    ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("rgb8")
    return [dict(s) for s in ds]


def test_shards_round_trip(data, tmp_path):
    d, tiles, bench = data
    vocab_dir = tmp_path / "genes"
    tile_args = [str(d / f"{s}.h5") for s in tiles]
    assert (
        main(
            [
                "vocab",
                "--tiles",
                *tile_args,
                "--bench-dir",
                str(bench),
                "--bench-tasks",
                "T1",
                "T2",
                "--n-top-genes",
                "12",
                "--out-dir",
                str(vocab_dir),
            ]
        )
        == 0
    )
    vocab = {m: (vocab_dir / f"{m}.txt").read_text().split() for m in ("visium", "xenium")}
    out = tmp_path / "shards"
    shard_args = [
        "shards",
        "--tiles",
        *tile_args,
        "--vocab-dir",
        str(vocab_dir),
        "--out-dir",
        str(out),
        "--samples-per-shard",
        "9",
        "--val-fraction",
        "0.2",
        "--seed",
        "3",
        "--jpeg-quality",
        "95",
    ]
    assert main(shard_args) == 0
    index = json.loads((out / "index.json").read_text())
    total = sum(len(t["counts"]) for t in tiles.values())
    # whole samples: 0.2 of 3 Visium samples rounds to 0 -> at least one; the only Xenium
    # sample stays in training
    assert len(index["val_samples"]) == 1 and index["val_samples"][0].startswith("SV")
    n_val = sum(len(tiles[s]["counts"]) for s in index["val_samples"])
    assert (index["n_train"], index["n_val"]) == (total - n_val, n_val)
    assert index["vocab"] == vocab and index["version"] == 1
    assert index["counts"] == {"visium": 52, "xenium": 14}
    assert set(index["samples"]) == set(tiles)
    assert index["samples"]["SX00"]["modality"] == "xenium"
    assert sum(s["n"] for s in index["shards"]) == total - n_val
    assert sum(s["n"] for s in index["val_shards"]) == n_val
    assert all(s["n"] <= 9 for s in index["shards"])
    assert index["image_size"] == P and index["pixel_size_um"] == 0.5
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left

    samples = _read_all(out)
    keys = [s["__key__"] for s in samples]
    assert len(keys) == total and len(set(keys)) == total  # every tile exactly once
    assert not any(k.startswith("BENCH") for k in keys)
    # shuffled across samples: shards mix slides
    per_shard: dict[str, set] = {}
    for s in samples:
        per_shard.setdefault(s["__url__"], set()).add(s["json"]["sample"])
    assert max(len(v) for v in per_shard.values()) >= 3
    val_keys = {s["__key__"] for s in samples if "/val-" in s["__url__"]}
    assert len(val_keys) == n_val
    # the held-out split holds whole samples only: no tile of a training slide, all of a val one
    val_of = {s["json"]["sample"] for s in samples if "/val-" in s["__url__"]}
    train_of = {s["json"]["sample"] for s in samples if "/train-" in s["__url__"]}
    assert val_of == set(index["val_samples"]) and not val_of & train_of
    for sid, rec in index["samples"].items():
        held = sid in index["val_samples"]
        assert rec["split"] == ("val" if held else "train")
        assert (rec["n_val"], rec["n_train"]) == ((rec["n"], 0) if held else (0, rec["n"]))

    sums = {m: [np.zeros(len(vocab[m])) for _ in range(3)] for m in vocab}
    for s in samples:
        meta = s["json"]
        t = tiles[meta["sample"]]
        i = t["barcodes"].index(meta["barcode"])
        assert s["__key__"] == f"{t['sid']}_{meta['barcode']}"
        assert (meta["x"], meta["y"]) == tuple(int(v) for v in t["coords"][i])
        assert meta["level"] == t["level"] and meta["organ"] == "Bowel"
        assert meta["n_cells"] == (int(t["n_cells"][i]) if t["level"] == "patch" else -1)
        img = s["jpg"]
        assert img.shape == (P, P, 3) and img.dtype == np.uint8
        assert np.abs(img.astype(int) - t["imgs"][i]).mean() < 2.0
        mod = meta["modality"]
        v = vocab[mod]
        expect = np.zeros(len(v), np.float16)
        mask = np.zeros(len(v), bool)
        for gi, g in enumerate(t["genes"]):
            if g in v:
                expect[v.index(g)] = np.float16(np.log1p(np.float32(t["counts"][i, gi])))
                mask[v.index(g)] = True
        assert s["expr.npy"].dtype == np.float16 and s["mask.npy"].dtype == bool
        np.testing.assert_array_equal(s["expr.npy"], expect)  # exact
        np.testing.assert_array_equal(s["mask.npy"], mask)
        if meta["sample"] == "SV02":
            assert not s["mask.npy"][[v.index(g) for g in ("GENE01",) if g in v]].any()
        if s["__key__"] not in val_keys:
            n, s1, s2 = sums[mod]
            n += mask
            s1 += expect.astype(np.float64)
            s2 += expect.astype(np.float64) ** 2
    for m in vocab:
        n, s1, s2 = sums[m]
        mean = np.where(n > 0, s1 / np.maximum(n, 1), 0)
        std = np.sqrt(np.maximum(np.where(n > 0, s2 / np.maximum(n, 1), 0) - mean**2, 0))
        std = np.where(std > 1e-6, std, 1.0)
        np.testing.assert_allclose(index["stats"][m]["mean"], mean, atol=1e-5)
        np.testing.assert_allclose(index["stats"][m]["std"], std, atol=1e-5)

    # same seed, same order; a smaller rerun removes stale shards
    assert main(shard_args) == 0
    assert [s["__key__"] for s in _read_all(out)] == keys
    small = shard_args[:2] + tile_args[:1] + shard_args[2 + len(tile_args) :]
    assert main(small) == 0
    names = sorted(p.name for p in out.glob("*.tar"))
    index = json.loads((out / "index.json").read_text())
    assert names == sorted(s["path"] for s in index["shards"] + index["val_shards"])
    assert len(_read_all(out)) == 23


def test_shards_refuse_bench_samples(data, tmp_path):
    d, tiles, bench = data
    vocab_dir = tmp_path / "genes"
    vocab_dir.mkdir()
    (vocab_dir / "visium.txt").write_text("GENE01\n")
    (vocab_dir / "xenium.txt").write_text("XA\n")
    leak = tmp_path / "BENCH_T1.h5"
    write_tile(leak, "BENCH_T1", ["GENE01"], np.ones((3, 1)))
    out = tmp_path / "shards"
    rc = main(
        [
            "shards",
            "--tiles",
            str(d / "SV00.h5"),
            str(leak),
            "--vocab-dir",
            str(vocab_dir),
            "--out-dir",
            str(out),
            "--bench-dir",
            str(bench),
            "--bench-tasks",
            "T1",
            "T2",
        ]
    )
    assert rc == 2 and not (out / "index.json").exists()
    assert not list(out.glob("*.tar")) if out.exists() else True


def test_plan_is_a_seeded_partition_by_whole_samples():
    sizes = [5, 0, 11, 3]
    train, val = plan(sizes, 0.25, seed=1)
    pairs = {tuple(p) for p in np.concatenate([train, val])}
    assert len(pairs) == 19 == len(train) + len(val)
    assert pairs == {(s, r) for s, n in enumerate(sizes) for r in range(n)}
    held = set(val[:, 0].tolist())
    assert len(held) == 1 and not held & set(train[:, 0].tolist())  # one whole sample
    assert len(val) == sizes[held.pop()]
    t2, v2 = plan(sizes, 0.25, seed=1)
    np.testing.assert_array_equal(train, t2)
    np.testing.assert_array_equal(val, v2)
    t3, _ = plan(sizes, 0.25, seed=2)
    assert not np.array_equal(train, t3)
    t0, v0 = plan(sizes, 0.0, seed=1)
    assert len(v0) == 0 and len(t0) == 19


def test_val_split_holds_whole_samples_of_each_modality():
    """The demo's layout (3 Visium + 1 ST spot samples, 2 Xenium): one held-out slide per
    modality, every tile of it in val and none in train; a lone modality stays in training."""
    sizes = [185, 154, 190, 39, 35, 32]
    groups = ["visium"] * 4 + ["xenium"] * 2
    for seed in range(5):
        train, val = plan(sizes, 0.1, seed=seed, groups=groups)
        held = set(val[:, 0].tolist())
        assert not held & set(train[:, 0].tolist())
        assert sorted(groups[i] for i in held) == ["visium", "xenium"]
        assert len(val) == sum(sizes[i] for i in held)
    assert len(val_sources(["visium", "visium", "xenium"], 0.5, seed=0)) == 1  # lone xenium kept
    assert len(val_sources(["visium"] * 100, 0.02, seed=0)) == 2
