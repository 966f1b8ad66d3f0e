"""Block sub-modules: BEiT attention, GELU MLP, LayerNorm, stochastic depth, and an expert set.

Every sub-module answers ``expert(modality)``: a shared one returns itself, an :class:`Experts`
set returns the modality's copy, so a block's forward reads the same for every sharing layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlmerge.model.layout import Modality


class Shared:
    """Mixin: one module serves every expert."""

    def expert(self, modality: Modality) -> nn.Module:
        return self  # type: ignore[return-value]


class Experts(nn.ModuleDict):
    """One copy of a sub-module per expert, keyed by modality value (``v``, ``l``, ``vl``)."""

    def expert(self, modality: Modality) -> nn.Module:
        if modality.value not in self:
            raise KeyError(f"no {modality.value!r} expert here (experts: {list(self.keys())})")
        return self[modality.value]


class LayerNorm(Shared, nn.LayerNorm):
    pass


class Attention(Shared, nn.Module):
    """BEiT attention (arXiv 2106.08254): ``qkv`` without bias plus learned q and v biases (k bias is 0)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        """x: [B, N, D]; attn_mask: additive float [B or 1, H, N, N] (relative position + padding)."""
        b, n, d = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, N, D/H]
        # A float mask keeps fused SDPA kernels available on CUDA; it must match the query dtype.
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask.to(q.dtype))
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(Shared, nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth (arXiv 1603.09382): drop a sample's residual branch with probability p."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)
