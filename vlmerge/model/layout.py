"""Which weights are per-expert: modalities, sharing layouts and the state-dict keys they imply.

The merging code derives its key mappings from :class:`ExpertLayout`, never from hard-coded layer
counts. Key names follow vl-merging (``transformer.blocks.{i}.attn.{m}.qkv.weight`` per expert,
``transformer.blocks.{i}.attn.qkv.weight`` when shared).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass

from vlmerge.model.config import ModelConfig
from vlmerge.model.errors import CheckpointError, ModelConfigError


class Modality(enum.Enum):
    """An expert: vision, language, or the vision-language expert of the fusion layers."""

    V = "v"
    L = "l"
    VL = "vl"


class Part(enum.Enum):
    """A block sub-module that a sharing layout may split per expert; the value is its attribute name."""

    NORM1 = "norm1"
    ATTN = "attn"
    NORM2 = "norm2"
    MLP = "mlp"


# Parameter names inside each part, in module order.
PART_PARAMS: dict[Part, tuple[str, ...]] = {
    Part.NORM1: ("weight", "bias"),
    Part.ATTN: ("qkv.weight", "q_bias", "v_bias", "proj.weight", "proj.bias"),
    Part.NORM2: ("weight", "bias"),
    Part.MLP: ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"),
}


class Sharing(enum.Enum):
    """Which parts of every block have one copy per expert (the paper's ablations)."""

    SHARED = "shared"  # modality-agnostic (MA): one set of weights
    MODALITY_SPECIFIC = "modality_specific"  # upstream ``all_moe``
    ATTN = "attn"
    FFN = "ffn"
    LN = "ln"

    @property
    def per_expert(self) -> frozenset[Part]:
        return _PER_EXPERT[self]

    @classmethod
    def parse(cls, value: str | Sharing) -> Sharing:
        try:
            return cls(value)
        except ValueError:
            raise ModelConfigError(
                f"unknown sharing layout {value!r}; choose one of {[s.value for s in cls]}") from None


_PER_EXPERT = {
    Sharing.SHARED: frozenset(),
    Sharing.MODALITY_SPECIFIC: frozenset(Part),
    Sharing.ATTN: frozenset({Part.ATTN, Part.NORM1}),
    Sharing.FFN: frozenset({Part.MLP, Part.NORM2}),
    Sharing.LN: frozenset({Part.NORM1, Part.NORM2}),
}


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
            for part in Part if part in self.sharing.per_expert
            for param in PART_PARAMS[part]
        }

    def shared_keys(self, layer: int) -> tuple[str, ...]:
        """Block parameters of ``layer`` with one copy: shared parts and the layer scales."""
        parts = [self.key(layer, part, param) for part in Part if part not in self.sharing.per_expert
                 for param in PART_PARAMS[part]]
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
