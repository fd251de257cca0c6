"""Logging set-up shared by all CLI verbs: one line per event, to stderr (Snakemake's `log:`)."""

from __future__ import annotations

import logging
import os
import sys


def setup_logging(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose or os.environ.get("MINT_DEBUG") else logging.INFO
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )


def progress_enabled() -> bool:
    """tqdm bars go to stderr; keep them on in logs (they show progress) unless MINT_NO_PROGRESS."""
    return not os.environ.get("MINT_NO_PROGRESS")
