"""Which weights are per-expert: modalities, sharing layouts and the state-dict keys they imply.

The merging code derives its key mappings from :class:`ExpertLayout`, never from hard-coded layer
counts. Key names follow vl-merging (``transformer.blocks.{i}.attn.{m}.qkv.weight`` per expert,
``transformer.blocks.{i}.attn.qkv.weight`` when shared).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from vlmerge.catalog.names import PART_PARAMS, Modality, Part, Sharing
from vlmerge.model.config import ModelConfig
from vlmerge.model.errors import CheckpointError


@dataclass(frozen=True)
class ExpertLayout:
    """The block structure of a model: layer count, fusion start F and the sharing layout."""

    num_layers: int
    fusion_start: int
    sharing: Sharing

    def experts(self, layer: int) -> tuple[Modality, ...]:
        """Experts of ``layer``: {v, l} below F, {v, l, vl} from F on."""
        if layer < self.fusion_start:
            return (Modality.V, Modality.L)
        return (Modality.V, Modality.L, Modality.VL)

    def key(self, layer: int, part: Part, param: str, modality: Modality | None = None) -> str:
        """State-dict key of one block parameter; ``modality`` only for per-expert parts."""
        expert = f"{modality.value}." if modality is not None else ""
        return f"transformer.blocks.{layer}.{part.value}.{expert}{param}"

    def expert_keys(self, layer: int) -> dict[str, dict[Modality, str]]:
        """For each per-expert parameter of ``layer``: its MA (shared) key → {expert: MS key}."""
        return {
            self.key(layer, part, param): {m: self.key(layer, part, param, m) for m in self.experts(layer)}
            for part in Part
            if part in self.sharing.per_expert
            for param in PART_PARAMS[part]
        }

    def shared_keys(self, layer: int) -> tuple[str, ...]:
        """Block parameters of ``layer`` with one copy: shared parts and the layer scales."""
        parts = [
            self.key(layer, part, param)
            for part in Part
            if part not in self.sharing.per_expert
            for param in PART_PARAMS[part]
        ]
        return (*parts, f"transformer.blocks.{layer}.gamma_1", f"transformer.blocks.{layer}.gamma_2")


def detect_sharing(keys: Iterable[str]) -> Sharing:
    """The sharing layout of a state dict, read from which parts of block 0 carry a ``.v.`` expert."""
    found = {Part(m.group(1)) for k in keys if (m := re.match(r"transformer\.blocks\.0\.(\w+)\.v\.", k))}
    for sharing in Sharing:
        if sharing.per_expert == found:
            return sharing
    raise CheckpointError(f"per-expert parts {sorted(p.value for p in found)} match no sharing layout")


def expert_layout(config: ModelConfig, sharing: Sharing | str) -> ExpertLayout:
    """The layout of a model built from ``config`` with ``sharing``."""
    return ExpertLayout(config.num_layers, config.fusion_start, Sharing.parse(sharing))
