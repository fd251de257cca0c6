"""One error type for bad input, so the CLI can print a single clear line instead of a traceback."""

from __future__ import annotations


class MintError(Exception):
    """Bad input or configuration. The message names the sample, file or key at fault."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, capped (library messages often span several)."""
    msg = " ".join(str(exc).split()) or exc.__class__.__name__
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."
