"""One error type for bad input, so the CLI can print a single clear line instead of a traceback."""

from __future__ import annotations


class MintError(Exception):
    """Bad input or configuration. The message names the sample, file or key at fault."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, capped (library messages often span several)."""
    msg = " ".join(str(exc).split()) or exc.__class__.__name__
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def show(value: object) -> str:
    """A value for an error message: NumPy scalars as plain numbers, NaN and None as 'missing'.

    `repr` of a NumPy scalar reads `np.float64(nan)`; users should see `missing` or `0.5`.
    """
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        value = value.item()
    if value is None or (isinstance(value, float) and value != value):
        return "missing"
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value)
