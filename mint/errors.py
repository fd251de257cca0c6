"""One error type for bad input, so the CLI can print a single clear line instead of a traceback."""

from __future__ import annotations


class MintError(Exception):
    """Bad input or configuration. The message names the sample, file or key at fault."""
