"""The building blocks of the report page: figures as embedded PNGs, sections, tables.

Every section module (`mint.report.sections`, `mint.report.training`) builds its HTML from these,
so the page has one look: figures are PNG bytes embedded as base64 (the page opens offline after
being copied off the cluster), tables are pandas' HTML with one float format.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from mint.errors import MintError  # noqa: E402


@dataclass
class Figure:
    name: str
    title: str
    png: bytes
    caption: str = ""


@dataclass
class Section:
    title: str
    anchor: str
    blocks: list[str] = field(default_factory=list)


def fig_to_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def img_tag(fig: Figure) -> str:
    data = base64.b64encode(fig.png).decode("ascii")
    cap = f"<figcaption>{html.escape(fig.caption)}</figcaption>" if fig.caption else ""
    return (
        f'<figure id="fig-{fig.name}"><img alt="{html.escape(fig.title)}" '
        f'src="data:image/png;base64,{data}"/>{cap}</figure>'
    )


def html_table(df: pd.DataFrame, caption: str = "", float_digits: int = 3) -> str:
    if df.empty:
        return f'<p class="empty">{html.escape(caption or "table")}: no rows.</p>'
    body = df.to_html(
        index=False,
        na_rep="–",
        float_format=lambda v: f"{v:.{float_digits}f}",
        classes="data",
        border=0,
        escape=True,
    )
    cap = f"<p class='caption'>{html.escape(caption)}</p>" if caption else ""
    return cap + body


def read_csv(path: str | Path, what: str) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise MintError(f"{path}: {what} not found")
    return pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",", comment=None)
