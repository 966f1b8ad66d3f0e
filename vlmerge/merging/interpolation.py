"""Weight interpolation of the experts (Sung et al. 2023, arXiv 2304.14933, §3.2 "Interpolation")."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from vlmerge.merging.errors import MergeError
from vlmerge.merging.registry import BaseTensors, ExpertTensors, Merged, register
from vlmerge.model import Modality

V, L, VL = Modality.V, Modality.L, Modality.VL


def weighted_sum(tensors: Mapping[Modality, torch.Tensor], weights: Mapping[Modality, float]) -> torch.Tensor:
    """Σ_m w_m·θ_m accumulated in float64, returned in the experts' dtype; shapes as the inputs."""
    first, *rest = weights
    total = tensors[first].to(torch.float64) * weights[first]
    for m in rest:
        total.add_(tensors[m], alpha=weights[m])  # in place: no float64 copy of each expert
    return total.to(tensors[first].dtype)


def plain_mean(tensors: Mapping[Modality, torch.Tensor]) -> torch.Tensor:
    """The unweighted average of the experts' tensors."""
    return weighted_sum(tensors, {m: 1.0 / len(tensors) for m in tensors})


def interpolation_weights(experts: tuple[Modality, ...], ratio: float) -> dict[Modality, float]:
    """r·v + (1−r)·l for {v, l}; (2/3)r·v + (2/3)(1−r)·l + (1/3)·vl for {v, l, vl}; 1 for one expert."""
    found = set(experts)
    if len(found) == 1:
        return {experts[0]: 1.0}
    if found == {V, L}:
        return {V: ratio, L: 1.0 - ratio}
    if found == {V, L, VL}:
        # The upstream split: vl keeps a third, v and l share the rest in the ratio r : 1−r.
        return {V: 2 / 3 * ratio, L: 2 / 3 * (1.0 - ratio), VL: 1 / 3}
    raise MergeError(
        f"interpolation is defined for {{v, l}}, {{v, l, vl}} or one expert, not {sorted(m.value for m in found)}"
    )


@register("interpolation")
def interpolation(experts: ExpertTensors, base: BaseTensors = None, *, ratio: float) -> Merged:
    """Interpolate the experts: r·v + (1−r)·l, or (2/3)r·v + (2/3)(1−r)·l + (1/3)·vl with three.

    Sung et al. 2023, "An Empirical Study of Multimodal Model Merging" (arXiv 2304.14933).
    """
    state = {
        key: weighted_sum(tensors, interpolation_weights(tuple(tensors), ratio)) for key, tensors in experts.items()
    }
    return Merged(state)
