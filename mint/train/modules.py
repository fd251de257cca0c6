"""The two networks a MINT run trains: the student (backbone with ST token, expression heads and
DINO head, all crops in one forward so DDP sees one forward per backward) and the EMA teacher.
`mint.train.trainer.MintTrainer` builds them and runs the step."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mint.models.heads import ExpressionHeads
from mint.models.st_vit import STTokenViT
from mint.train.dino import DINOHead


class MintStudent(nn.Module):
    """Backbone with ST token + expression heads + DINO head; one forward for all crops."""

    def __init__(
        self,
        backbone: STTokenViT,
        heads: ExpressionHeads | None,
        dino_head: DINOHead | None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = heads
        self.dino_head = dino_head

    def forward(
        self,
        global_views: torch.Tensor,
        local_views: torch.Tensor | None = None,
        n_global: int = 1,
        regression_only: bool = False,
        patch_tokens: bool = False,
    ) -> dict[str, Any]:
        out = self.backbone(global_views, return_tokens=patch_tokens)
        res: dict[str, Any] = {"cls_global": out["cls"]}
        if patch_tokens:
            res["patches_global"] = out["patch_tokens"]
        if self.heads is not None:
            b = global_views.shape[0] // n_global
            token = out["st"] if self.backbone.has_st else out["cls"]
            res["pred"] = self.heads(token[:b])
        if self.dino_head is not None and not regression_only:
            cls_all = out["cls"]
            if local_views is not None:
                cls_all = torch.cat([cls_all, self.backbone(local_views)["cls"]], dim=0)
            res["dino"] = self.dino_head(cls_all)
        return res


class Teacher(nn.Module):
    """EMA copy of the student's backbone and DINO head; no gradients."""

    def __init__(self, backbone: STTokenViT, dino_head: DINOHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.dino_head = dino_head
        for p in self.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def forward(self, global_views: torch.Tensor) -> torch.Tensor:
        return self.dino_head(self.backbone(global_views)["cls"])
