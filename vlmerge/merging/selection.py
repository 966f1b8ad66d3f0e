"""Options every method shares: which experts merge in each layer, and which keys merge at all.

- ``used_experts_only=<task>``: in layers ≥ F keep only the experts the task's forward uses
  (retrieval — coco, f30k — v and l; vqa and nlvr2 vl), as vl-merging's ``only_activate_used_experts``.
  Below F every expert merges. (The paper's RegMean runs used all three for NLVR2: leave it off there.)
- Partial merging: ``layers`` and/or ``parts`` (``attention`` = norm1 + attn, ``ffn`` = norm2 + mlp)
  restrict what merges; every other per-expert key is taken from the expert ``rest_from``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vlmerge.catalog.methods import PARTS, SELECTION_PARAMS
from vlmerge.catalog.names import TASK_EXPERTS
from vlmerge.catalog.params import to_json
from vlmerge.merging.errors import MergeError
from vlmerge.merging.keys import KeyGroup
from vlmerge.model import ExpertLayout, Modality


@dataclass(frozen=True)
class Selection:
    used_experts_only: str | None = None
    layers: tuple[int, ...] | None = None
    parts: tuple[str, ...] | None = None
    rest_from: Modality | None = None

    @classmethod
    def resolve(cls, given: Mapping[str, Any]) -> Selection:
        return cls(**{p.name: p.resolve(given[p.name]) if p.name in given else p.default for p in SELECTION_PARAMS})

    def to_json(self) -> dict[str, Any]:
        return {p.name: to_json(getattr(self, p.name)) for p in SELECTION_PARAMS}

    def check(self, layout: ExpertLayout) -> None:
        """Reject layers outside the model and partial merging without ``rest_from``."""
        if self.layers is not None and max(self.layers) >= layout.num_layers:
            raise MergeError(f"layers {list(self.layers)} reach past the model's {layout.num_layers} layers")
        if (self.layers is not None or self.parts is not None) and self.rest_from is None:
            raise MergeError("partial merging (layers= or parts=) needs rest_from=<expert> for the keys it skips")

    def experts(self, layout: ExpertLayout, layer: int) -> tuple[Modality, ...]:
        """The experts that merge in ``layer``."""
        present = layout.experts(layer)
        if self.used_experts_only is None or layer < layout.fusion_start:
            return present
        return tuple(m for m in present if m in TASK_EXPERTS[self.used_experts_only])

    def merges(self, group: KeyGroup) -> bool:
        in_layers = self.layers is None or group.layer in self.layers
        in_parts = self.parts is None or any(group.part in PARTS[p] for p in self.parts)
        return in_layers and in_parts

    def rest_key(self, group: KeyGroup) -> str:
        """The MS key that fills a key that does not merge."""
        assert self.rest_from is not None  # check() guarantees it whenever anything is left out
        if self.rest_from not in group.experts:
            raise MergeError(
                f"rest_from={self.rest_from.value}: layer {group.layer} has no such expert "
                f"(it has {[m.value for m in group.experts]})"
            )
        return group.experts[self.rest_from]
