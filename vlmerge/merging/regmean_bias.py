"""Exact-bias RegMean's bookkeeping: inputs augmented with a constant 1, weights with their bias column.

With x̃ = [x; 1] a linear layer is W̃ = [W | b] and its gram [[XᵀX, Σx], [Σxᵀ, n]], so RegMean's
least-squares solution covers the bias too. BEiT attention has no k bias: its qkv bias is
[q_bias, 0, v_bias].
"""

from __future__ import annotations

import torch

from vlmerge.merging.keys import LinearSlot
from vlmerge.merging.registry import ExpertTensors
from vlmerge.model import Modality

F64 = torch.float64


def augmented(g: torch.Tensor, s: torch.Tensor, n: float) -> torch.Tensor:
    """The gram of inputs with a constant 1 appended: [[G, s], [sᵀ, n]], [D+1, D+1]."""
    corner = torch.tensor([[n]], dtype=g.dtype)
    return torch.cat([torch.cat([g, s[:, None]], 1), torch.cat([s[None, :], corner], 1)], 0)


def with_bias(slot: LinearSlot, key: str, experts: ExpertTensors, m: Modality) -> torch.Tensor:
    """[W_m | b_m], [out, in+1]; qkv's bias is [q_bias, 0, v_bias] (BEiT has no k bias)."""
    biases = [experts[k][m].to(F64) for k in slot.bias_keys]
    if len(biases) == 2:
        biases.insert(1, torch.zeros_like(biases[0]))
    return torch.cat([experts[key][m].to(F64), torch.cat(biases)[:, None]], dim=1)


def split_bias(slot: LinearSlot, merged: torch.Tensor) -> dict[str, torch.Tensor]:
    """[W | b] → {bias key: tensor}; qkv drops the k slice, which only shifts each query's attention
    logits by a constant, and softmax is invariant to that."""
    bias = merged[:, -1]
    if len(slot.bias_keys) == 2:
        q, _, v = bias.chunk(3)
        return dict(zip(slot.bias_keys, (q, v)))
    return {slot.bias_keys[0]: bias}
