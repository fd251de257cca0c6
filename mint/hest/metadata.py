"""HEST-1k metadata: reading the CSV and the few facts every stage derives from a sample's row.

The real CSV (v1.1.0) starts with a UTF-8 byte-order mark, so the first column would be read as
"\\ufeffdataset_title" without `utf-8-sig`. Every stage gets the pixel size from
`pixel_size_um_estimated` (the TIFF's embedded value is wrong for some slides).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from mint.errors import MintError, one_line
from mint.safe import check_name

REQUIRED_COLUMNS: list[str] = [
    "id",
    "st_technology",
    "species",
    "organ",
    "oncotree_code",
    "patient",
    "dataset_title",
    "pixel_size_um_estimated",
]

# Every column of the v1.1.0 CSV, in order (the synthetic metadata writes the same).
HEST_COLUMNS: list[str] = [
    "dataset_title",
    "id",
    "image_filename",
    "organ",
    "disease_state",
    "oncotree_code",
    "species",
    "patient",
    "st_technology",
    "data_publication_date",
    "license",
    "study_link",
    "download_page_link1",
    "inter_spot_dist",
    "spot_diameter",
    "spots_under_tissue",
    "preservation_method",
    "nb_genes",
    "treatment_comment",
    "pixel_size_um_embedded",
    "pixel_size_um_estimated",
    "magnification",
    "fullres_px_width",
    "fullres_px_height",
    "tissue",
    "disease_comment",
    "subseries",
    "hest_version_added",
]

TECHNOLOGIES = ("Visium", "Spatial Transcriptomics", "Xenium", "Visium HD")

# Short names users type (config, CLI) -> the CSV's st_technology value.
_TECH_ALIASES = {
    "visium": "Visium",
    "st": "Spatial Transcriptomics",
    "spatial transcriptomics": "Spatial Transcriptomics",
    "xenium": "Xenium",
    "visium hd": "Visium HD",
    "visiumhd": "Visium HD",
    "visium_hd": "Visium HD",
}


def canonical_technology(name: str) -> str:
    """'ST' -> 'Spatial Transcriptomics', 'xenium' -> 'Xenium'; unknown names pass through."""
    return _TECH_ALIASES.get(str(name).strip().lower(), str(name).strip())


def read_metadata(path: str | os.PathLike) -> pd.DataFrame:
    """Read a HEST metadata CSV; MintError naming the file and the column if one is missing."""
    path = Path(path)
    if not path.is_file():
        raise MintError(f"{path}: metadata CSV not found")
    try:
        df = pd.read_csv(path, encoding="utf-8-sig", dtype={"id": str, "patient": str})
    except Exception as exc:  # noqa: BLE001 - any parse failure becomes one clear line
        raise MintError(
            f"{path}: cannot read metadata CSV ({exc.__class__.__name__}: {one_line(exc)})"
        ) from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise MintError(
            f"{path}: missing metadata column {missing[0]!r}"
            + (f" (and {', '.join(missing[1:])})" if len(missing) > 1 else "")
        )
    df["id"] = df["id"].astype(str).str.strip()
    # Ids become file names (wsis/{id}.tif, results/tiles/{id}.h5): '../x' would escape.
    for row, value in enumerate(df["id"]):
        check_name(value, "sample id", f"{path} line {row + 2}")
    dup = df["id"][df["id"].duplicated()]
    if len(dup):
        raise MintError(f"{path}: duplicate sample id {dup.iloc[0]!r}")
    df.attrs["path"] = str(path)
    return df


def sample_row(df: pd.DataFrame, sample_id: str) -> pd.Series:
    """The metadata row of one sample; MintError naming the id and the file if it is unknown."""
    check_name(sample_id, "sample id", "--sample")
    hit = df.index[df["id"] == str(sample_id)]
    if len(hit) == 0:
        src = df.attrs.get("path", "metadata")
        raise MintError(f"{sample_id} {src}: unknown sample id")
    return df.loc[hit[0]]


def level_of(technology: str) -> str:
    """'patch' for Xenium (cells pooled into 112 um patches), 'spot' for Visium, ST, Visium HD."""
    tech = canonical_technology(technology)
    if tech == "Xenium":
        return "patch"
    if tech in ("Visium", "Spatial Transcriptomics", "Visium HD"):
        return "spot"
    raise MintError(
        f"unknown st_technology {technology!r} (expected one of {', '.join(TECHNOLOGIES)})"
    )


def modality_of(technology: str) -> str:
    """Which gene vocabulary a technology feeds: spot level -> 'visium', patch level -> 'xenium'."""
    return "xenium" if level_of(technology) == "patch" else "visium"


def normalise_patient(value) -> str | None:
    """'Patient 1 ', 'patient 1' -> 'patient 1'; blank/NaN -> None (unknown)."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    s = " ".join(str(value).split()).lower()
    return s or None
