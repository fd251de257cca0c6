"""Bad input in, one line out: damaged, hostile or unlucky inputs to download, shards and training.

Every case checks the same contract: a one-line error naming the sample or value and the file,
a non-zero exit, and no final or temporary output left behind (nothing outside the working
folder either). `pytest -k bad_input` runs these together with the `test_bad_input_*` cases
of the stage test files.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import TINY_MODEL, FakeHub, write_tile

from mint.cli import main
from mint.data.shard_verify import verify_shards
from mint.errors import MintError
from mint.hest import download, hub
from mint.io import atomic_dir, atomic_path


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    monkeypatch.setattr(hub, "_sleep", lambda s: None)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def _tree(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


# --------------------------------------------------------------------------- download
def _meta(path: Path, ids: list[str], tech: str = "Visium") -> Path:
    pd.DataFrame(
        {
            "id": ids,
            "st_technology": [tech] * len(ids),
            "species": ["Homo sapiens"] * len(ids),
            "organ": ["Bowel"] * len(ids),
            "oncotree_code": ["COAD"] * len(ids),
            "patient": [None] * len(ids),
            "dataset_title": ["a"] * len(ids),
            "pixel_size_um_estimated": [0.5] * len(ids),
        }
    ).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("bad", ["../../../ESCAPED", "a b", "-x", ".."])
def test_bad_input_unsafe_sample_id_never_escapes(tmp_path, capsys, bad, hest_folder):
    """An id such as '../../../ESCAPED' in the metadata, or on the command line, is refused
    before any file is read or written: nothing appears anywhere under the test folder."""
    work = tmp_path / "a" / "b" / "c"
    work.mkdir(parents=True)
    src = hest_folder(["SYNV000"]).root
    meta = _meta(work / "meta.csv", ["SYNV000", bad])
    before = _tree(tmp_path)
    args = ["download", "--source", "local", "--local-dir", str(src), "--metadata", str(meta)]
    rc = main([*args, "--sample", "SYNV000", "--out-dir", str(work / "hest")])
    err = _one_line_error(capsys)
    assert rc == 2 and repr(bad) in err and f"{meta} line 3" in err
    rc = main([*args, f"--sample={bad}", "--out-dir", str(work / "hest")])
    err = _one_line_error(capsys)
    assert rc == 2 and repr(bad) in err and "--sample" in err
    assert _tree(tmp_path) == before


def test_bad_input_offline_hub_is_a_network_error(tmp_path, monkeypatch):
    """Offline, snapshot_download returns the existing folder with only a warning: that is
    reported as a network error, not as a missing file."""

    def offline(**kw):
        logging.getLogger("huggingface_hub._snapshot_download").warning(
            "Returning existing local_dir `%s` as remote repo cannot be accessed in "
            "`snapshot_download` (ConnectError).",
            kw["local_dir"],
        )
        return kw["local_dir"]

    monkeypatch.setattr("huggingface_hub.snapshot_download", offline)
    (tmp_path / "wsis").mkdir()  # another sample's files: the folder is not empty
    with pytest.raises(MintError, match="network error") as err:
        download.download_hub("MEND139", "Visium", tmp_path, retries=2)
    assert "missing" not in str(err.value) and "\n" not in str(err.value)

    from huggingface_hub.errors import LocalEntryNotFoundError

    monkeypatch.setattr(
        "huggingface_hub.snapshot_download",
        FakeHub(fail_times=9, exc=LocalEntryNotFoundError("Cannot find ... \n connection")),
    )
    with pytest.raises(MintError, match=r"MEND139 .*network error.*LocalEntryNotFoundError"):
        download.download_hub("MEND139", "Visium", tmp_path, retries=2)


def test_bad_input_offline_bench_hub_is_a_network_error(tmp_path, monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError

    from mint.hest import download_bench

    monkeypatch.setattr(
        "huggingface_hub.snapshot_download",
        FakeHub(fail_times=9, exc=LocalEntryNotFoundError("no connection\nat all")),
    )
    with pytest.raises(MintError, match=r"^IDC .*network error") as err:
        download_bench.download_hub("IDC", tmp_path, retries=2)
    assert "\n" not in str(err.value)


def test_bad_input_bench_zip_member_cannot_escape(tmp_path):
    import zipfile

    from mint.hest import download_bench

    task = tmp_path / "IDC"
    task.mkdir()
    with zipfile.ZipFile(task / "patches.zip", "w") as zf:
        zf.writestr("../../ESCAPED.h5", b"x")
    with pytest.raises(MintError, match=r"patches\.zip member.*lies outside"):
        download_bench._extract_zips(task)
    assert not (tmp_path.parent / "ESCAPED.h5").exists()


@pytest.mark.parametrize("missing", ["xenium_seg", "tissue_seg"])
def test_bad_input_download_requires_segmentation_and_contours(
    tmp_path, capsys, missing, hest_folder
):
    """Cell targets need the Xenium segmentation, every tile job the contours: a local HEST
    folder without them stops at download, naming the file; --no-cell-seg (transcript
    targets) makes the segmentation optional."""
    hest = hest_folder(["SYNX000"])
    shutil.rmtree(hest.root / missing)
    out = tmp_path / "out"
    args = ["download", "--source", "local", "--sample", "SYNX000", "--local-dir", str(hest.root)]
    args += ["--metadata", str(hest.metadata), "--out-dir", str(out)]
    rc = main(args)
    err = _one_line_error(capsys)
    assert rc == 2 and "SYNX000" in err and missing in err
    assert not out.exists()
    if missing == "xenium_seg":
        assert main([*args, "--no-cell-seg"]) == 0


def test_bad_input_killed_copy_leaves_no_orphan(tmp_path, hest_folder):
    """A copy killed mid-way leaves a temporary name; the rerun removes it."""
    src = hest_folder(["SYNV000"]).root
    out = tmp_path / "out"
    orphan = out / "wsis" / ".SYNV000.k1ll3d_x.tmp.tif"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"half a slide")
    download.download_local("SYNV000", "Visium", src, out, copy=True)
    assert sorted(p.name for p in (out / "wsis").iterdir()) == ["SYNV000.tif"]


# --------------------------------------------------------------------------- atomic writes
def test_atomic_dir_renames_the_old_folder_aside_first(tmp_path, monkeypatch):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    moves = []
    real_replace = os.replace

    def spy(a, b):
        moves.append((Path(a).name, Path(b).name))
        real_replace(a, b)

    monkeypatch.setattr(os, "replace", spy)
    with atomic_dir(dest) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [m[0] for m in moves] == ["out", moves[1][0]] and moves[1][1] == "out"
    assert moves[0][1].endswith(".old")  # the old folder went aside before the swap
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in dest.iterdir()] == ["new.txt"]


def test_bad_input_atomic_dir_failed_swap_keeps_the_old_folder(tmp_path, monkeypatch):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    real_replace = os.replace

    def fail_second(a, b, calls=[]):  # noqa: B006 - call counter
        calls.append(a)
        if len(calls) == 2:
            raise OSError("disk full")
        real_replace(a, b)

    monkeypatch.setattr(os, "replace", fail_second)
    with pytest.raises(OSError, match="disk full"):
        with atomic_dir(dest) as tmp:
            (tmp / "new.txt").write_text("new")
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert (dest / "old.txt").read_text() == "old"


def test_bad_input_killed_writes_are_swept_by_the_rerun(tmp_path):
    """Leftovers of kill -9 (files and folders under the temporary names) disappear on the
    next write of the same output, and only those: other files stay."""
    (tmp_path / ".tiles.abcd1234.tmp.h5").write_bytes(b"x")
    (tmp_path / ".tiles.abcd1234.tmp.h5.keep").write_bytes(b"x")  # not ours
    (tmp_path / ".figures.zz99yy88.tmp").mkdir()
    (tmp_path / ".figures.zz99yy88.old").mkdir()
    with atomic_path(tmp_path / "tiles.h5") as tmp:
        tmp.write_bytes(b"ok")
    with atomic_dir(tmp_path / "figures") as tmp:
        (tmp / "a.png").write_bytes(b"png")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".tiles.abcd1234.tmp.h5.keep",
        "figures",
        "tiles.h5",
    ]


# --------------------------------------------------------------------------- shards
@pytest.fixture
def tiles(tmp_path):
    d = tmp_path / "tiles"
    d.mkdir()
    rng = np.random.default_rng(0)
    write_tile(d / "SA.h5", "SA", ["G1", "G2"], rng.poisson(3, (20, 2)), rng=rng)
    write_tile(d / "SB.h5", "SB", ["G1", "G9"], rng.poisson(3, (20, 2)), rng=rng)
    write_tile(d / "SC.h5", "SC", ["Z1", "Z2"], rng.poisson(3, (12, 2)), rng=rng)
    vocab = tmp_path / "genes"
    vocab.mkdir()
    (vocab / "visium.txt").write_text("G1\nG2\n")
    (vocab / "xenium.txt").write_text("XA\n")
    return d, vocab


def _shard_args(d: Path, vocab: Path, out: Path, samples=("SA", "SB")) -> list[str]:
    return [
        "shards",
        "--tiles",
        *[str(d / f"{s}.h5") for s in samples],
        "--vocab-dir",
        str(vocab),
        "--out-dir",
        str(out),
        "--samples-per-shard",
        "8",
        "--val-fraction",
        "0.1",
    ]


@pytest.fixture
def built_shards(tiles, tmp_path):
    """Shards written by `mint shards` from `tiles` (index, checksums, QC table), unlike the
    toy training shards of the `shards` fixture."""
    d, vocab = tiles
    out = tmp_path / "shards"
    assert main(_shard_args(d, vocab, out)) == 0
    return out


def test_index_records_counts_sizes_and_checksums(built_shards):
    index = json.loads((built_shards / "index.json").read_text())
    for entry in index["shards"] + index["val_shards"]:
        path = built_shards / entry["path"]
        assert entry["bytes"] == path.stat().st_size and len(entry["sha256"]) == 64
        with tarfile.open(path) as tf:
            assert len({m.name.split(".")[0] for m in tf}) == entry["n"]
    assert verify_shards(built_shards / "index.json") == len(index["shards"]) + len(
        index["val_shards"]
    )
    qc = pd.read_csv(built_shards / "qc.tsv", sep="\t")
    assert list(qc["sample"]) == ["SA", "SB"] and set(qc["status"]) == {"kept"}


def _member_boundary(path: Path, sample: int) -> int:
    """Byte offset where the `sample`-th sample's first tar member starts."""
    with tarfile.open(path) as tf:
        starts, seen = [], set()
        for m in tf:
            key = m.name.split(".")[0]
            if key not in seen:
                seen.add(key)
                starts.append(m.offset)
    return starts[sample]


@pytest.mark.parametrize(
    "damage", ["half", "boundary", "flipped_byte", "boundary_old_index", "inside_old_index"]
)
def test_bad_input_damaged_shard_is_named(built_shards, capsys, damage):
    """A shard cut in half, cut at a member boundary (a valid shorter tar), or with one byte
    changed: `mint shards --verify` names the file in one line. An index written before
    sizes and checksums existed still catches the boundary cut by the sample count."""
    path = built_shards / "train-000001.tar"
    data = path.read_bytes()
    if damage == "half":
        path.write_bytes(data[: len(data) // 2])
    elif damage.startswith("boundary"):
        path.write_bytes(data[: _member_boundary(path, 3)])
        with tarfile.open(path) as tf:  # really a readable, shorter tar
            assert len(tf.getmembers()) > 0
    elif damage.startswith("inside"):  # inside the last sample: every key is still there
        last = _member_boundary(path, 7)
        with tarfile.open(path) as tf:
            second = [m for m in tf.getmembers() if m.offset > last][0]
        path.write_bytes(data[: second.offset])
    else:
        i = len(data) // 3
        path.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :])
    if damage.endswith("old_index"):
        index = json.loads((built_shards / "index.json").read_text())
        for e in index["shards"] + index["val_shards"]:
            e.pop("bytes"), e.pop("sha256")
        (built_shards / "index.json").write_text(json.dumps(index))
    rc = main(["shards", "--verify", str(built_shards)])
    err = _one_line_error(capsys)
    assert rc == 2 and str(path) in err


TINY = {
    **TINY_MODEL,
    "steps": 2,
    "global_crop_size": 32,
    "local_crop_size": 16,
    "n_local_crops": 2,
    "num_workers": 0,
    "shuffle_buffer": 8,
}


def test_bad_input_training_stops_before_the_first_step_on_a_damaged_shard(tmp_path):
    """Training verifies the shards first: one MintError naming the shard, no output folder
    (so no metrics.csv) left behind."""
    from mint.train.config import TrainConfig
    from mint.train.toy import write_toy_shards
    from mint.train.trainer import train

    index = write_toy_shards(
        tmp_path / "toy", n_train=24, n_val=8, samples_per_shard=8, image_size=32
    )
    shard = tmp_path / "toy" / "train-000001.tar"
    shard.write_bytes(shard.read_bytes()[: _member_boundary(shard, 5)])
    out = tmp_path / "run"
    with pytest.raises(MintError, match=r"train-000001\.tar: 5 samples, index\.json records 8"):
        train(TrainConfig.from_json(json.dumps(TINY)), index, out, device="cpu")
    assert not out.exists()


def test_bad_input_sample_without_vocabulary_genes_stops_the_shards(tiles, tmp_path, capsys):
    """SC measures none of the vocabulary: it would train on all-false masks. The run stops
    naming it and its file, writing nothing; excluded on request, it is listed in qc.tsv."""
    d, vocab = tiles
    out = tmp_path / "shards"
    args = _shard_args(d, vocab, out, samples=("SA", "SB", "SC"))
    rc = main(args)
    err = _one_line_error(capsys)
    assert rc == 2 and "SC" in err and str(d / "SC.h5") in err and "none of the 2" in err
    assert not out.exists() or not any(out.iterdir())
    assert main([*args, "--exclude-low-coverage"]) == 0
    capsys.readouterr()
    index = json.loads((out / "index.json").read_text())
    assert set(index["samples"]) == {"SA", "SB"} and set(index["excluded"]) == {"SC"}
    qc = pd.read_csv(out / "qc.tsv", sep="\t").set_index("sample")
    assert qc.loc["SC", "status"] == "excluded" and qc.loc["SB", "vocab_coverage"] == 0.5
    # a coverage threshold: SB measures 1 of 2 genes
    rc = main([*_shard_args(d, vocab, out), "--min-vocab-coverage", "0.75"])
    err = _one_line_error(capsys)
    assert rc == 2 and "SB" in err and "50.0% < 75.0%" in err


def test_bad_input_shard_temp_files_of_a_killed_run_are_removed(tiles, tmp_path):
    d, vocab = tiles
    out = tmp_path / "shards"
    out.mkdir()
    for name in (".train-000009.k1ll3d00.tmp.tar", ".val-000000.abcdefgh.tmp.tar"):
        (out / name).write_bytes(b"partial")
    assert main(_shard_args(d, vocab, out)) == 0
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_throughput_log_leaves_out_the_step_0_validation(tmp_path, monkeypatch):
    """The step-0 validation runs before the first log window starts: its time must not be
    subtracted from that window (it once gave images_per_s = 1.6e10). A fake clock makes
    validation take 1000 s and every other clock read 0.01 s, so the figure is exact."""
    import csv
    import time

    from mint.train import trainer as trainer_mod
    from mint.train.config import TrainConfig
    from mint.train.toy import write_toy_shards

    index = write_toy_shards(
        tmp_path / "toy", n_train=16, n_val=8, samples_per_shard=8, image_size=32
    )
    clock = [0.0]

    def fake_clock() -> float:
        clock[0] += 0.01
        return clock[0]

    real_evaluate = trainer_mod.MintTrainer.evaluate

    def slow_evaluate(self, loader):
        clock[0] += 1000.0
        return real_evaluate(self, loader)

    monkeypatch.setattr(time, "perf_counter", fake_clock)
    monkeypatch.setattr(trainer_mod.MintTrainer, "evaluate", slow_evaluate)
    cfg = TrainConfig.from_json(json.dumps({**TINY, "steps": 2, "log_every": 2}))
    trainer_mod.train(cfg, index, tmp_path / "run", device="cpu")
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    ips = [float(r["images_per_s"]) for r in rows if r["split"] == "train"]
    assert len(ips) == 1 and 0 < ips[0] < 1e4, ips


def test_bad_input_cli_prints_any_mint_error_on_one_line(tmp_path, capsys, monkeypatch):
    """A message that quotes a library's multi-line text still prints as one line."""
    from mint.data import shards as shards_mod

    rc = main(["shards", "--verify", str(tmp_path / "nowhere" / "index.json")])
    assert rc == 2 and "index.json not found" in _one_line_error(capsys)

    def multi_line(path):
        raise MintError(f"shards {path}: first line\n  second line\n")

    monkeypatch.setattr(shards_mod, "verify_shards", multi_line)
    rc = main(["shards", "--verify", str(tmp_path / "index.json")])
    assert rc == 2 and "first line second line" in _one_line_error(capsys)
