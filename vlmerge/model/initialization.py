"""From-scratch initialisation, as BEiT/VLMo/vl-merging do it."""

from __future__ import annotations

import math

import torch
from torch import nn


def init_module(module: nn.Module, std: float = 0.02) -> None:
    """Linear: truncated normal (``std``, 0.02 upstream), zero bias; Embedding: normal (``std``);
    LayerNorm: 1 and 0."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@torch.no_grad()
def rescale_residual_branches(blocks: nn.ModuleList) -> None:
    """Divide block i's output projections by sqrt(2(i+1)) so deep residual sums start small.

    BEiT rescales ``attn.proj`` and ``mlp.fc2``; vl-merging's ``_rescale`` also matches ``mlp.fc1``,
    and we reproduce vl-merging.
    """
    for i, block in enumerate(blocks):
        for name, param in block.named_parameters():
            if name.endswith(("proj.weight", "fc1.weight", "fc2.weight")):
                param.div_(math.sqrt(2 * (i + 1)))
