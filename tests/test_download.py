"""Download of HEST samples and HEST-Bench tasks: hub (mocked at its boundary) and local."""

from __future__ import annotations

import fnmatch
import logging
import zipfile
from pathlib import Path

import huggingface_hub
import pandas as pd
import pytest
from helpers import HUB_FILES, FakeHub

from mint.cli import main
from mint.errors import MintError
from mint.hest import download, download_bench, hub, layout

TOKEN = "hf_secret_token_for_tests_only"


@pytest.fixture
def meta_csv(tmp_path):
    df = pd.DataFrame(
        {
            "id": ["TENX95", "MEND139"],
            "st_technology": ["Xenium", "Visium"],
            "species": ["Homo sapiens"] * 2,
            "organ": ["Breast", "Prostate"],
            "oncotree_code": ["IDC", "PRAD"],
            "patient": ["patient 2", None],
            "dataset_title": ["a", "b"],
            "pixel_size_um_estimated": [0.2125, 0.5],
        }
    )
    p = tmp_path / "meta.csv"
    df.to_csv(p, index=False, encoding="utf-8-sig")
    return p


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    slept = []
    monkeypatch.setattr(hub, "_sleep", slept.append)
    return slept


def test_hub_xenium_exact_call(monkeypatch, tmp_path, meta_csv, caplog):
    fake = FakeHub()
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    out = tmp_path / "resources" / "hest"
    caplog.set_level(logging.DEBUG)
    rc = main(
        [
            "download",
            "--source",
            "hub",
            "--sample",
            "TENX95",
            "--out-dir",
            str(out),
            "--metadata",
            str(meta_csv),
        ]
    )
    assert rc == 0
    assert len(fake.calls) == 1
    kw = fake.calls[0]
    assert kw == {
        "repo_id": "MahmoodLab/hest",
        "repo_type": "dataset",
        "local_dir": str(out),
        "allow_patterns": [
            "wsis/TENX95.tif",
            "st/TENX95.h5ad",
            "metadata/TENX95.json",
            "tissue_seg/TENX95_contours.geojson",
            "transcripts/TENX95_transcripts.parquet",
            "xenium_seg/TENX95_xenium_cell_seg.parquet",
        ],
        "token": TOKEN,
    }
    assert (out / "transcripts" / "TENX95_transcripts.parquet").exists()
    # Extras next to the needed files are not fetched.
    assert not (out / "xenium_seg" / "TENX95_xenium_nucleus_seg.parquet").exists()
    assert not (out / "tissue_seg" / "TENX95_vis.jpg").exists()
    assert not (out / "wsis" / "TENX9.tif").exists()  # other samples untouched
    assert (
        not (out / "cellvit_seg").exists() and not (out / "patches").exists()
    )  # big extras skipped
    assert TOKEN not in caplog.text


def test_hub_visium_patterns_and_no_token(monkeypatch, tmp_path, meta_csv):
    fake = FakeHub()
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", "not_this_one")
    files = download.download_hub("MEND139", "Visium", tmp_path, repo_id="me/mirror")
    kw = fake.calls[0]
    # False, not None: None would let huggingface_hub fall back to HUGGING_FACE_HUB_TOKEN
    # or a cached login.
    assert kw["repo_id"] == "me/mirror" and kw["token"] is False
    assert kw["allow_patterns"] == [
        "wsis/MEND139.tif",
        "st/MEND139.h5ad",
        "metadata/MEND139.json",
        "tissue_seg/MEND139_contours.geojson",
    ]
    assert {f.name for f in files} == {
        "MEND139.tif",
        "MEND139.h5ad",
        "MEND139.json",
        "MEND139_contours.geojson",
    }


def test_hub_retries_then_succeeds(monkeypatch, tmp_path, no_sleep):
    fake = FakeHub(fail_times=2)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    download.download_hub("MEND139", "Visium", tmp_path, retries=3, backoff_s=1.0)
    assert len(fake.calls) == 3 and no_sleep == [1.0, 2.0]


def test_hub_missing_or_empty_file_names_sample_and_file(monkeypatch, tmp_path):
    fake = FakeHub(files=[f for f in HUB_FILES if f != "st/TENX95.h5ad"])
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    with pytest.raises(MintError, match=r"TENX95 .*st/TENX95\.h5ad"):
        download.download_hub("TENX95", "Xenium", tmp_path, retries=2)
    assert len(fake.calls) == 2
    monkeypatch.setattr(huggingface_hub, "snapshot_download", FakeHub(empty={"wsis/MEND139.tif"}))
    with pytest.raises(MintError, match=r"MEND139 .*MEND139\.tif: downloaded file is empty"):
        download.download_hub("MEND139", "Visium", tmp_path / "b", retries=1)


def _fetch_sample(tmp_path, retries):
    return download.download_hub("MEND139", "Visium", tmp_path, retries=retries)


def _fetch_task(tmp_path, retries):
    return download_bench.download_hub("IDC", tmp_path, retries=retries)


@pytest.mark.parametrize("fetch", [_fetch_sample, _fetch_task], ids=["sample", "bench"])
@pytest.mark.parametrize("error", sorted(hub.NON_RETRYABLE))
def test_hub_no_access_is_not_retried(monkeypatch, tmp_path, fetch, error, no_sleep):
    """Samples and bench tasks share one policy: every non-retryable error stops at once (the
    bench download used to retry RevisionNotFoundError and EntryNotFoundError)."""
    exc_type = type(error, (Exception,), {})
    fake = FakeHub(fail_times=5, exc=exc_type("401"))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    with pytest.raises(MintError, match=f"{error}.*HF_TOKEN"):
        fetch(tmp_path, retries=4)
    assert len(fake.calls) == 1 and no_sleep == []


@pytest.mark.parametrize("fetch", [_fetch_sample, _fetch_task], ids=["sample", "bench"])
def test_hub_transient_error_is_retried_the_same_way(monkeypatch, tmp_path, fetch, no_sleep):
    fake = FakeHub(fail_times=5, exc=ConnectionError("reset"))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    with pytest.raises(MintError, match="network error"):
        fetch(tmp_path, retries=3)
    assert len(fake.calls) == 3 and no_sleep == [10.0, 20.0]


def test_hub_retry_policy_is_defined_once():
    """No module of mint/hest keeps its own list of errors or its own retry loop."""
    import inspect

    for mod in (download, download_bench):
        src = inspect.getsource(mod)
        assert "GatedRepoError" not in src and "snapshot_download(" not in src, mod.__name__
        assert "_sleep" not in src, mod.__name__


def _local_hest(root: Path) -> Path:
    for rel in HUB_FILES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"content of " + rel.encode())
    return root


def test_local_links_and_copies(tmp_path, meta_csv):
    src = _local_hest(tmp_path / "HEST")
    out = tmp_path / "out"
    rc = main(
        [
            "download",
            "--source",
            "local",
            "--sample",
            "TENX95",
            "--local-dir",
            str(src),
            "--out-dir",
            str(out),
            "--metadata",
            str(meta_csv),
        ]
    )
    assert rc == 0
    tif = out / "wsis" / "TENX95.tif"
    assert tif.is_symlink() and tif.resolve() == (src / "wsis" / "TENX95.tif").resolve()
    assert (out / "xenium_seg" / "TENX95_xenium_cell_seg.parquet").is_symlink()
    assert (out / "transcripts" / "TENX95_transcripts.parquet").read_bytes().startswith(b"content")
    # rerun is idempotent; --copy gives real files
    download.download_local("TENX95", "Xenium", src, out)
    download.download_local("MEND139", "Visium", src, out / "c", copy=True)
    assert not (out / "c" / "st" / "MEND139.h5ad").is_symlink()
    assert (out / "c" / "st" / "MEND139.h5ad").read_bytes() == b"content of st/MEND139.h5ad"


def test_local_missing_file(tmp_path, meta_csv, capsys):
    src = _local_hest(tmp_path / "HEST")
    (src / "st" / "MEND139.h5ad").unlink()
    rc = main(
        [
            "download",
            "--source",
            "local",
            "--sample",
            "MEND139",
            "--local-dir",
            str(src),
            "--out-dir",
            str(tmp_path / "o"),
            "--metadata",
            str(meta_csv),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "MEND139" in err and "st/MEND139.h5ad" in err and len(err.splitlines()) == 1


def test_unknown_sample_is_one_line(tmp_path, meta_csv, capsys):
    rc = main(
        [
            "download",
            "--source",
            "hub",
            "--sample",
            "TENX999",
            "--out-dir",
            str(tmp_path),
            "--metadata",
            str(meta_csv),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "TENX999" in err and str(meta_csv) in err and len(err.splitlines()) == 1


def test_unknown_technology_names_sample_and_file(tmp_path, capsys):
    meta = tmp_path / "m.csv"
    base = {"id": "X1", "st_technology": "Slide-seq", "species": "Homo sapiens", "organ": "a"}
    base.update(oncotree_code="b", patient="p", dataset_title="t", pixel_size_um_estimated=0.5)
    pd.DataFrame([base]).to_csv(meta, index=False)
    args = ["download", "--source", "local", "--local-dir", str(tmp_path), "--sample", "X1"]
    rc = main([*args, "--metadata", str(meta), "--out-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "X1" in err and str(meta) in err and "Slide-seq" in err, err
    assert len(err.splitlines()) == 1 and not (tmp_path / "o").exists()


def test_synthetic_is_not_a_download_source(tmp_path, meta_csv):
    """Synthetic data is written by `mint synth`; `mint download` handles real data only."""
    with pytest.raises(SystemExit):
        main(
            ["download", "--source", "synthetic", "--sample", "TENX95", "--metadata", str(meta_csv)]
        )
    with pytest.raises(SystemExit):
        main(["download-bench", "--source", "synthetic", "--task", "SYNTH_XENIUM"])


def test_hest_does_not_import_synth():
    """The real-data package never depends on the demo generator."""
    import subprocess
    import sys

    code = (
        "import sys, mint.hest.download, mint.hest.download_bench, mint.hest.select, "
        "mint.hest.layout, mint.hest.hub; "
        "print(sorted(m for m in sys.modules if m.startswith('mint.synth')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    for path in Path(download.__file__).parent.glob("*.py"):
        assert "mint.synth" not in path.read_text(), path


def test_layout_names_every_file_once():
    """The hub patterns, the required files and SamplePaths all come from mint.hest.layout."""
    from mint.data.tiling import SamplePaths

    assert download.hub_patterns("TENX95", "Xenium") == [
        layout.sample_file(k, "TENX95") for k in layout.SAMPLE_FILES
    ]
    paths = SamplePaths.from_hest_dir("/h", "TENX95")
    for key in ("wsi", "st", "contours", "transcripts", "cell_seg"):
        assert getattr(paths, key) == Path("/h") / layout.SAMPLE_FILES[key].format(id="TENX95")
    assert (
        layout.sample_file("wsi", "{sample}", "resources/hest")
        == "resources/hest/wsis/{sample}.tif"
    )
    assert layout.required_keys("Visium HD") == list(layout.COMMON_KEYS)
    assert layout.required_keys("xenium", cell_seg=False) == [*layout.COMMON_KEYS, "transcripts"]
    with pytest.raises(MintError, match="unknown st_technology"):
        layout.required_keys("Slide-seq")


# --------------------------------------------------------------------------- bench
def _bench_files(task: str, zipped: bool) -> dict[str, bytes]:
    files = {
        f"{task}/var_50genes.json": b'{"genes": ["A"]}',
        f"{task}/adata/S1.h5ad": b"x",
        f"{task}/adata/S2.h5ad": b"x",
        f"{task}/splits/train_0.csv": b"sample_id,patches_path,expr_path\nS1,patches/S1.h5,adata/S1.h5ad\n",
        f"{task}/splits/test_0.csv": b"sample_id,patches_path,expr_path\nS2,patches/S2.h5,adata/S2.h5ad\n",
        "fm_v1/uni/pytorch_model.bin": b"w",
        "OTHER/var_50genes.json": b"{}",
    }
    if not zipped:
        files[f"{task}/patches/S1.h5"] = b"p"
        files[f"{task}/patches/S2.h5"] = b"p"
    return files


class FakeBenchHub:
    def __init__(self, task: str, zipped: bool = False):
        self.task, self.zipped, self.calls = task, zipped, []

    def __call__(self, **kw):
        self.calls.append(kw)
        out = Path(kw["local_dir"])
        for rel, data in _bench_files(self.task, self.zipped).items():
            if any(fnmatch.fnmatch(rel, p) for p in kw["allow_patterns"]):
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                (out / rel).write_bytes(data)
        if self.zipped and any(
            fnmatch.fnmatch(f"{self.task}/patches.zip", p) for p in kw["allow_patterns"]
        ):
            with zipfile.ZipFile(out / self.task / "patches.zip", "w") as zf:
                zf.writestr("patches/S1.h5", "p")
                zf.writestr("patches/S2.h5", "p")
        return str(out)


@pytest.mark.parametrize("zipped", [False, True])
def test_bench_hub(monkeypatch, tmp_path, zipped):
    fake = FakeBenchHub("IDC", zipped)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    out = tmp_path / "resources" / "hest-bench"
    assert main(["download-bench", "--source", "hub", "--task", "IDC", "--out-dir", str(out)]) == 0
    assert fake.calls == [
        {
            "repo_id": "MahmoodLab/hest-bench",
            "repo_type": "dataset",
            "local_dir": str(out),
            "allow_patterns": ["IDC/*"],
            "token": TOKEN,
        }
    ]
    d = out / "IDC"
    assert (d / "patches" / "S1.h5").exists() and not list(d.rglob("*.zip"))
    assert not (out / "fm_v1").exists() and not (out / "OTHER").exists()
    assert download_bench.check_task(d, "IDC") == 1
    assert layout.bench_task_sample_ids(d) == {"S1", "S2"}


def test_bench_checks_and_local(tmp_path, capsys):
    src = tmp_path / "hb"
    for rel, data in _bench_files("READ", zipped=False).items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    out = tmp_path / "out"
    assert (
        main(
            [
                "download-bench",
                "--source",
                "local",
                "--task",
                "READ",
                "--local-dir",
                str(src),
                "--out-dir",
                str(out),
            ]
        )
        == 0
    )
    assert (out / "READ").is_symlink()
    (src / "READ" / "splits" / "notes.txt").write_text("x")
    with pytest.raises(MintError, match="notes.txt"):
        download_bench.check_task(src / "READ", "READ")
    (src / "READ" / "splits" / "notes.txt").unlink()
    (src / "READ" / "patches" / "S2.h5").unlink()
    with pytest.raises(MintError, match=r"S2 .*patches/S2\.h5"):
        download_bench.check_task(src / "READ", "READ")
    rc = main(["download-bench", "--source", "hub", "--task", "NOPE", "--out-dir", str(out)])
    assert rc == 2 and "NOPE" in capsys.readouterr().err
