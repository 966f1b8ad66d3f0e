"""The image stem and the stack of multiway blocks (vl-merging's ``transformer`` sub-module)."""

from __future__ import annotations

import torch
from torch import nn

from vlmerge.model.block import MultiwayBlock
from vlmerge.model.config import ModelConfig
from vlmerge.model.embeddings import PatchEmbed
from vlmerge.model.layers import LayerNorm
from vlmerge.model.layout import ExpertLayout


class MultiwayTransformer(nn.Module):
    """Patch embedding, image CLS token, ``num_layers`` blocks and the final norm.

    Stochastic depth grows linearly from 0 at the first block to ``drop_path`` at the last.
    """

    def __init__(self, config: ModelConfig, layout: ExpertLayout) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(config.patch_size, config.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.dim))
        last = config.num_layers - 1
        self.blocks = nn.ModuleList(
            MultiwayBlock(config, layout.experts(i), layout.sharing.per_expert, config.drop_path * i / last)
            for i in range(config.num_layers)
        )
        self.norm = LayerNorm(config.dim, eps=1e-6)

    def embed_image(self, images: torch.Tensor) -> torch.Tensor:
        """images: [B, 3, H, W] → [B, 1 + (H/p)·(W/p), D], the CLS token first."""
        patches = self.patch_embed(images)
        return torch.cat([self.cls_token.expand(patches.shape[0], -1, -1), patches], dim=1)
