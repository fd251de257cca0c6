"""The test suite's own rules: fixtures come from conftest.py (never imported), the `shards`
fixture is defined once, and the HEST-folder factory hands each test its own copy."""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_no_test_file_imports_conftest():
    offenders = [
        p.name
        for p in sorted(TESTS.glob("*.py"))
        if re.search(r"^\s*(from conftest import|import conftest)", p.read_text(), re.M)
    ]
    assert not offenders


def test_the_shards_fixture_is_defined_once():
    defined = [
        p.name
        for p in sorted(TESTS.glob("*.py"))
        if re.search(r"^@pytest\.fixture.*\n(async )?def shards\(", p.read_text(), re.M)
    ]
    assert defined == ["conftest.py"]


def test_hest_folder_copies_are_independent(hest_folder):
    a = hest_folder(["SYNV000"], name="a")
    b = hest_folder(["SYNV000"], name="b")
    assert a.root != b.root and a.sample_ids == ("SYNV000",)
    for rel in ("wsis/SYNV000.tif", "st/SYNV000.h5ad", "tissue_seg/SYNV000_contours.geojson"):
        assert (a.root / rel).is_file()
    (a.root / "st" / "SYNV000.h5ad").unlink()  # damaging one copy leaves the other whole
    assert (b.root / "st" / "SYNV000.h5ad").is_file()
    assert "SYNV000" in a.metadata.read_text()
