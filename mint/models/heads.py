"""Expression heads on the ST token: one per gene vocabulary (`visium` spots, `xenium` patches).

Each head is LayerNorm + Linear to its vocabulary and predicts *standardised* log1p expression
(targets standardised with the per-gene train statistics of index.json). The Linear starts with a
small weight and zero bias, so the first predictions are close to the gene means and the initial
loss is close to 1 (the variance of a standardised target), which makes learning easy to read.
"""

from __future__ import annotations

import torch
from torch import nn


class ExpressionHead(nn.Module):
    def __init__(self, dim: int, n_genes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.linear = nn.Linear(dim, n_genes)
        nn.init.trunc_normal_(self.linear.weight, std=0.01)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(x))


class ExpressionHeads(nn.ModuleDict):
    """`{modality: ExpressionHead}`; modalities with an empty vocabulary get no head."""

    def __init__(self, dim: int, vocab_sizes: dict[str, int]) -> None:
        super().__init__({m: ExpressionHead(dim, n) for m, n in vocab_sizes.items() if n > 0})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return {m: head(x) for m, head in self.items()}
