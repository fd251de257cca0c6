"""Sample selection on the pinned HEST v1.1.0 metadata and on the synthetic metadata."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mint.cli import main
from mint.errors import MintError
from mint.hest.bench import HEST_BENCH_TASKS, SYNTHETIC_BENCH_TASKS, bench_tasks
from mint.hest.metadata import (
    level_of,
    modality_of,
    normalise_patient,
    read_metadata,
    sample_row,
)
from mint.hest.select import (
    LEAKAGE_COLUMNS,
    SAMPLE_COLUMNS,
    SelectionConfig,
    select_samples,
)

ROOT = Path(__file__).resolve().parents[1]
CSV = ROOT / "config" / "hest" / "HEST_v1_1_0.csv"
if not CSV.exists():  # the shared copy, when the pinned one is not there
    CSV = ROOT.parent / "shared" / "data" / "HEST_v1_1_0.csv"


@pytest.fixture(scope="module")
def meta() -> pd.DataFrame:
    return read_metadata(CSV)


def test_bench_ids_exist_and_match_design(meta):
    ids = set(meta["id"])
    all_bench = [s for t in HEST_BENCH_TASKS.values() for s in t.sample_ids]
    assert len(all_bench) == len(set(all_bench)) == 72
    assert set(all_bench) <= ids
    assert (
        len(HEST_BENCH_TASKS["PRAD"].sample_ids) == 23
        and "MEND155" not in HEST_BENCH_TASKS["PRAD"].sample_ids
    )
    assert len(HEST_BENCH_TASKS["CCRCC"].sample_ids) == 24
    assert HEST_BENCH_TASKS["LYMPH_IDC"].sample_ids == ["NCBI681", "NCBI682", "NCBI683", "NCBI684"]
    folds = {n: t.n_folds for n, t in HEST_BENCH_TASKS.items()}
    assert folds == {
        "IDC": 4,
        "PRAD": 2,
        "PAAD": 3,
        "SKCM": 2,
        "COAD": 2,
        "READ": 2,
        "CCRCC": 6,
        "LUNG": 2,
        "LYMPH_IDC": 4,
        "HCC": 2,
    }
    by = meta.set_index("id")
    for t in HEST_BENCH_TASKS.values():
        assert set(by.loc[t.sample_ids, "st_technology"]) == {t.technology}, t.name
    assert bench_tasks("synthetic") is SYNTHETIC_BENCH_TASKS


def test_default_selection_gives_577(meta):
    res = select_samples(meta, SelectionConfig(), "hub")
    assert len(res.samples) == 577
    assert res.counts() == {
        "Visium": 364,
        "Spatial Transcriptomics": 163,
        "Xenium": 44,
        "Visium HD": 6,
    }
    assert list(res.samples.columns) == SAMPLE_COLUMNS
    assert not set(res.samples["id"]) & {s for t in HEST_BENCH_TASKS.values() for s in t.sample_ids}
    assert set(res.samples["species"]) == {"Homo sapiens"}
    x = res.samples.set_index("id")
    assert x.loc["TENX94", "level"] == "patch" and x.loc["TENX94", "modality"] == "xenium"
    assert x.loc["TENX128", "level"] == "spot" and x.loc["TENX128", "modality"] == "visium"


def test_leakage_report(meta):
    res = select_samples(meta, SelectionConfig(), "hub")
    lk = res.leakage.set_index("id")
    assert list(res.leakage.columns) == LEAKAGE_COLUMNS
    expected = (
        ["TENX98", "NCBI784", "TENX114", "TENX128"]
        + [f"TENX{i}" for i in range(152, 157)]
        + [
            f"ZEN{i}"
            for i in range(37, 48)
            if i != 40  # ZEN40 is itself a READ bench sample
        ]
    )
    assert set(expected) <= set(lk.index)
    assert (
        "same_patient" in lk.loc["TENX98", "reason"]
        and "TENX99" in lk.loc["TENX98", "bench_samples"]
    )
    assert "NCBI785" in lk.loc["NCBI784", "bench_samples"]
    assert "duplicate" in lk.loc["TENX128", "reason"]
    assert lk.loc["ZEN37", "bench_tasks"] == "READ"
    # "Patient 1" of another study is not the same person
    assert "TENX152" in lk.index and "INT25" not in lk.index
    assert set(lk.index) <= set(res.samples["id"])

    res2 = select_samples(meta, SelectionConfig(exclude_leakage=True), "hub")
    assert len(res2.samples) == 577 - len(lk)
    assert not set(res2.samples["id"]) & set(lk.index)
    assert res2.leakage["excluded"].all()


def test_filters_include_exclude_max(meta):
    cfg = SelectionConfig(technologies=["xenium"], organs=["breast"])
    res = select_samples(meta, cfg, "hub")
    assert set(res.samples["st_technology"]) == {"Xenium"} and set(res.samples["organ"]) == {
        "Breast"
    }
    assert "TENX95" not in set(res.samples["id"])  # bench
    res = select_samples(
        meta, SelectionConfig(technologies=["ST"], max_samples=5, exclude=["MISC1"]), "hub"
    )
    assert len(res.samples) == 5 and res.samples["id"].is_monotonic_increasing
    res = select_samples(meta, SelectionConfig(species=["Mus musculus"], include=["TENX95"]), "hub")
    assert "TENX95" in set(res.samples["id"])
    res = select_samples(meta, SelectionConfig(species=[], exclude_bench=False), "hub")
    assert len(res.samples) == len(meta)


def test_unknown_ids_and_missing_columns(meta, tmp_path):
    with pytest.raises(MintError, match="NOPE42"):
        select_samples(meta, SelectionConfig(include=["NOPE42"]), "hub")
    with pytest.raises(MintError, match="NOPE43"):
        sample_row(meta, "NOPE43")
    bad = tmp_path / "bad.csv"
    meta.drop(columns=["pixel_size_um_estimated"]).to_csv(bad, index=False)
    with pytest.raises(MintError, match="pixel_size_um_estimated") as e:
        read_metadata(bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(MintError, match="not found"):
        read_metadata(tmp_path / "missing.csv")
    with pytest.raises(MintError, match="typo"):
        SelectionConfig.from_dict({"typo": 1})


def test_bom_is_handled(meta):
    assert CSV.read_bytes()[:3] == b"\xef\xbb\xbf"
    assert meta.columns[0] == "dataset_title"


def test_metadata_helpers():
    assert level_of("Xenium") == "patch" and modality_of("Xenium") == "xenium"
    for t in ["Visium", "Spatial Transcriptomics", "Visium HD", "ST"]:
        assert level_of(t) == "spot" and modality_of(t) == "visium"
    with pytest.raises(MintError):
        level_of("MERFISH")
    assert normalise_patient(" Patient  1 ") == normalise_patient("patient 1") == "patient 1"
    assert normalise_patient("") is None and normalise_patient(float("nan")) is None


def test_cli(tmp_path, capsys):
    out, leak = tmp_path / "samples.tsv", tmp_path / "leakage.tsv"
    args = ["select", "--metadata", str(CSV), "--out", str(out), "--leakage-out", str(leak)]
    args += ["--source", "hub"]
    rc = main(args)
    assert rc == 0
    text = capsys.readouterr().err
    assert "577" in text and "Visium HD" in text and "estimate" in text
    df = pd.read_csv(out, sep="\t")
    assert df.columns[0] == "id" and len(df) == 577
    assert len(pd.read_csv(leak, sep="\t")) >= 20
    rc = main([*args, "--exclude", "BAD_ID"])
    err = capsys.readouterr().err
    assert rc == 2 and "BAD_ID" in err and len(err.strip().splitlines()) == 1


def test_synthetic_selection(tmp_path):
    from mint.synth.hest import synthetic_metadata, write_metadata_csv

    p = write_metadata_csv(tmp_path / "HEST_metadata.csv", synthetic_metadata())
    df = read_metadata(p)
    res = select_samples(df, SelectionConfig(), "synthetic")
    assert res.samples["id"].tolist() == [
        "SYNST000",
        "SYNV000",
        "SYNV001",
        "SYNV002",
        "SYNX000",
        "SYNX001",
    ]
    assert "SYNV002" in set(res.leakage["id"])  # shares a patient with the synthetic Visium bench
