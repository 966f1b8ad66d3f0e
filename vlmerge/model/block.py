"""The multiway transformer block: pre-LN attention and MLP, each possibly one copy per expert."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

from vlmerge.model.config import ModelConfig
from vlmerge.model.layers import Attention, DropPath, Experts, LayerNorm, Mlp
from vlmerge.model.layout import Modality, Part

_M = TypeVar("_M", bound=nn.Module)


class MultiwayBlock(nn.Module):
    """One layer. ``per_expert`` parts hold a copy per expert in ``experts``; gamma_1/2 are always shared."""

    def __init__(
        self, config: ModelConfig, experts: tuple[Modality, ...], per_expert: frozenset[Part], drop_path: float
    ) -> None:
        super().__init__()

        # Typed ``Experts | _M`` (not nn.Module) so that ``expert(modality)`` below type-checks.
        def build(part: Part, make: Callable[[], _M]) -> Experts | _M:
            return Experts({m.value: make() for m in experts}) if part in per_expert else make()

        dim = config.dim
        self.norm1 = build(Part.NORM1, lambda: LayerNorm(dim, eps=1e-6))
        self.attn = build(Part.ATTN, lambda: Attention(dim, config.num_heads))
        self.norm2 = build(Part.NORM2, lambda: LayerNorm(dim, eps=1e-6))
        self.mlp = build(Part.MLP, lambda: Mlp(dim, config.mlp_dim))
        self.gamma_1 = nn.Parameter(torch.full((dim,), config.layer_scale))
        self.gamma_2 = nn.Parameter(torch.full((dim,), config.layer_scale))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, modality: Modality, attn_mask: torch.Tensor) -> torch.Tensor:
        """x: [B, N, D], every token routed to ``modality``'s expert; attn_mask: [B or 1, H, N, N]."""
        attn, mlp = self.attn.expert(modality), self.mlp.expert(modality)
        x = x + self.drop_path(self.gamma_1 * attn(self.norm1.expert(modality)(x), attn_mask))
        return x + self.drop_path(self.gamma_2 * mlp(self.norm2.expert(modality)(x)))
