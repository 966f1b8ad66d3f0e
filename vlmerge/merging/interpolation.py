"""Weight interpolation of the experts (Sung et al. 2023, arXiv 2304.14933, §3.2 "Interpolation")."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from vlmerge.merging.errors import MergeError
from vlmerge.merging.registry import BaseTensors, ExpertTensors, Merged, register
from vlmerge.merging.task_arithmetic import CHUNK, one_thread
from vlmerge.model import Modality

V, L, VL = Modality.V, Modality.L, Modality.VL


def weighted_sum(tensors: Mapping[Modality, torch.Tensor], weights: Mapping[Modality, float]) -> torch.Tensor:
    """Σ_m w_m·θ_m accumulated in float64, returned in the experts' dtype; shapes as the inputs.

    Computed in float64 chunks of :data:`CHUNK` elements on one thread, written straight into the
    result: element by element the operations of ``(θ_1.double()·w_1).add_(θ_2, alpha=w_2)…`` cast
    back, hence the same bits, without a float64 copy of the whole tensor.
    """
    first, *rest = weights
    ref = tensors[first]
    sources = [tensors[m].reshape(-1) for m in weights]
    out = torch.empty(ref.shape, dtype=ref.dtype)
    flat, numel = out.view(-1), ref.numel()
    total = torch.empty(min(CHUNK, numel), dtype=torch.float64)
    with one_thread():
        for lo in range(0, numel, CHUNK):
            hi = min(lo + CHUNK, numel)
            acc = total[: hi - lo].copy_(sources[0][lo:hi]).mul_(weights[first])
            for m, source in zip(rest, sources[1:], strict=True):
                acc.add_(source[lo:hi], alpha=weights[m])
            flat[lo:hi] = acc
    return out


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
