"""Gene-name rules shared by the tiler and the vocabulary builder."""

from __future__ import annotations

import re
from collections.abc import Iterable

#: Xenium control and non-gene codewords: negative control probes and codewords, blank and
#: unassigned codewords, deprecated codewords, antisense probes, and the intergenic (genomic
#: control) codewords of the Xenium Prime panels. Matched anywhere in the name, any case.
CONTROL_PATTERNS = (
    "BLANK",
    "NegControl",
    "Control",
    "Unassigned",
    "antisense",
    "deprecated",
    "Intergenic",
)
_CONTROL_RE = re.compile("|".join(re.escape(p) for p in CONTROL_PATTERNS), re.IGNORECASE)


def is_control(name: str) -> bool:
    """True for control probes and other codewords that are not genes."""
    return bool(_CONTROL_RE.search(name))


def drop_controls(names: Iterable[str]) -> list[str]:
    return [n for n in names if not is_control(n)]


def as_str(value) -> str:
    """A gene name or barcode from h5/arrow storage (bytes or str) as str."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
