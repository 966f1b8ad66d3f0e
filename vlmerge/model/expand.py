"""Expand a shared (MA) state dict into a modality-specific one: the paper's W⁰ (docs/model.md)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from vlmerge.model.config import ModelConfig
from vlmerge.model.errors import CheckpointError
from vlmerge.model.layout import Sharing, expert_layout


def expand_experts(
    ma_state: Mapping[str, torch.Tensor], config: ModelConfig, sharing: Sharing | str
) -> dict[str, torch.Tensor]:
    """Copy every shared block weight into each expert of its layer (``vl`` only from layer F on).

    Pure: ``ma_state`` is not modified; each expert gets its own clone (safetensors refuses shared
    storage). Keys outside the per-expert parts pass through unchanged. The result strict-loads
    into a ``sharing`` model built from ``config``.
    """
    layout = expert_layout(config, sharing)
    out = dict(ma_state)
    for layer in range(layout.num_layers):
        for ma_key, experts in layout.expert_keys(layer).items():
            if ma_key not in out:
                raise CheckpointError(f"shared state dict has no {ma_key!r} to expand (is it already per-expert?)")
            weight = out.pop(ma_key)
            out.update({ms_key: weight.clone() for ms_key in experts.values()})
    return out
