"""MINT: molecularly informed fine-tuning of pathology foundation models.

The package is usable without Snakemake: every workflow stage is a `mint <verb>` command
backed by a function in one of the subpackages.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_model", "MintError"]

from mint.errors import MintError


def load_model(model_dir, device: str = "cpu"):
    """Rebuild a trained MINT encoder from its export folder, offline.

    Imported lazily so that `import mint` stays cheap for the CLI and Snakemake's parse step.
    """
    from mint.models.encoder import load_model as _load_model

    return _load_model(model_dir, device=device)
