"""Which MS keys merge into which MA key, derived from :class:`vlmerge.model.ExpertLayout`.

Nothing here counts layers by hand: the layer count, fusion start and per-expert parts come from
the layout, and the layout of a bare state dict is read from its keys (:func:`infer_layout`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from vlmerge.merging.errors import MergeError
from vlmerge.model import PART_PARAMS, ExpertLayout, Modality, Part, Sharing, detect_sharing
from vlmerge.model.errors import CheckpointError

# Linear layers whose *input* a gram describes: (part, weight param) → the hooked module below
# ``{part}.{m}`` ("" = the expert module itself: BEiT attention's first op is qkv, so the module's
# input is the qkv input). Their biases: qkv has the separate q/v biases (k bias is fixed at 0).
LINEAR_INPUTS: dict[tuple[Part, str], str] = {
    (Part.ATTN, "qkv.weight"): "",
    (Part.ATTN, "proj.weight"): "proj",
    (Part.MLP, "fc1.weight"): "fc1",
    (Part.MLP, "fc2.weight"): "fc2",
}
LINEAR_BIASES: dict[tuple[Part, str], tuple[str, ...]] = {
    (Part.ATTN, "qkv.weight"): ("q_bias", "v_bias"),
    (Part.ATTN, "proj.weight"): ("proj.bias",),
    (Part.MLP, "fc1.weight"): ("fc1.bias",),
    (Part.MLP, "fc2.weight"): ("fc2.bias",),
}
_BLOCK = re.compile(r"transformer\.blocks\.(\d+)\.")


@dataclass(frozen=True)
class KeyGroup:
    """One MA block parameter and the per-expert MS parameters of its layer."""

    layer: int
    part: Part
    param: str
    ma_key: str
    ms_keys: tuple[tuple[Modality, str], ...]

    @property
    def experts(self) -> dict[Modality, str]:
        return dict(self.ms_keys)

    @property
    def is_linear_weight(self) -> bool:
        return (self.part, self.param) in LINEAR_INPUTS

    def gram_name(self, modality: Modality) -> str:
        """Name of the hooked module whose input feeds this linear weight in ``modality``'s expert."""
        return gram_name(self.layer, self.part, self.param, modality)


@dataclass(frozen=True)
class LinearSlot:
    """An MA linear weight key, read back into its layer, part and parameter."""

    layer: int
    part: Part
    param: str

    def gram_name(self, modality: Modality) -> str:
        return gram_name(self.layer, self.part, self.param, modality)

    @property
    def bias_keys(self) -> tuple[str, ...]:
        """MA keys of the weight's biases (qkv: q_bias and v_bias; its k bias is fixed at 0)."""
        return tuple(
            f"transformer.blocks.{self.layer}.{self.part.value}.{p}" for p in LINEAR_BIASES[(self.part, self.param)]
        )


def gram_name(layer: int, part: Part, param: str, modality: Modality) -> str:
    """The hooked module feeding linear ``param`` of ``part`` in ``modality``'s expert of ``layer``."""
    suffix = LINEAR_INPUTS[(part, param)]
    stem = f"transformer.blocks.{layer}.{part.value}.{modality.value}"
    return f"{stem}.{suffix}" if suffix else stem


def linear_slot(ma_key: str) -> LinearSlot | None:
    """The linear weight an MA key names (``transformer.blocks.{i}.{part}.{param}``), or None."""
    m = re.fullmatch(r"transformer\.blocks\.(\d+)\.(\w+)\.(.+)", ma_key)
    if m is None or m.group(2) not in {p.value for p in Part}:
        return None
    part, param = Part(m.group(2)), m.group(3)
    return LinearSlot(int(m.group(1)), part, param) if (part, param) in LINEAR_INPUTS else None


def block_groups(layout: ExpertLayout) -> list[KeyGroup]:
    """Every per-expert parameter of the layout, layer by layer in module order."""
    return [
        KeyGroup(
            layer,
            part,
            param,
            layout.key(layer, part, param),
            tuple((m, layout.key(layer, part, param, m)) for m in layout.experts(layer)),
        )
        for layer in range(layout.num_layers)
        for part in Part
        if part in layout.sharing.per_expert
        for param in PART_PARAMS[part]
    ]


def gram_targets(layout: ExpertLayout) -> list[tuple[str, Modality]]:
    """Every hook point (module name, expert) whose input RegMean needs, for a layout's per-expert linears."""
    return [(g.gram_name(m), m) for g in block_groups(layout) if g.is_linear_weight for m in g.experts]


def copied_keys(layout: ExpertLayout, keys: Iterable[str]) -> list[str]:
    """Keys of ``keys`` that pass into the MA model unchanged: outside the blocks, shared parts, gamma_*."""
    per_expert = {k for g in block_groups(layout) for _, k in g.ms_keys}
    return [k for k in keys if k not in per_expert]


def infer_layout(keys: Iterable[str]) -> ExpertLayout:
    """The layout of an MS state dict: layer count, fusion start (first ``vl`` layer) and sharing."""
    keys = list(keys)
    layers = {int(m.group(1)) for k in keys if (m := _BLOCK.match(k))}
    if not layers or layers != set(range(max(layers) + 1)):
        raise MergeError(f"state dict has block layers {sorted(layers)}, expected 0..N-1")
    try:
        sharing = detect_sharing(keys)
    except CheckpointError as err:
        raise MergeError(str(err)) from err
    if sharing is Sharing.SHARED:
        raise MergeError(
            "state dict has no per-expert weights: a modality-agnostic (MA) checkpoint was given "
            "where a modality-specific (MS) one is needed"
        )
    fusion = {int(m.group(1)) for k in keys if (m := re.match(r"transformer\.blocks\.(\d+)\.\w+\.vl\.", k))}
    if not fusion:
        raise MergeError("state dict has no 'vl' expert in any layer")
    return ExpertLayout(max(layers) + 1, min(fusion), sharing)
