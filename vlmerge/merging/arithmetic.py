"""Modality arithmetic (Sung et al. 2023, arXiv 2304.14933, §3.2): task vectors of the experts from the seed.

**Upstream quirk.** The released code updates θ₀ in place inside its loop over experts, so instead
of θ₀ + λ·Σ_m (θ_m − θ₀) it computes the recursion w ← w + λ(θ_m − w) over m = v, l (, vl); with
λ = 0.75 and {v, l} that is 0.0625·θ₀ + 0.1875·θ_v + 0.75·θ_l. ``mode="formula"`` (default) is the
paper's equation; ``mode="upstream_sequential"`` reproduces the released runs. The sidecar records
which one ran.
"""

from __future__ import annotations

import torch

from vlmerge.merging.errors import MergeError
from vlmerge.merging.registry import BaseTensors, ExpertTensors, Merged, register
from vlmerge.merging.task_arithmetic import generalized_task_arithmetic
from vlmerge.model import Modality


def upstream_sequential(experts: ExpertTensors, base: BaseTensors, lam: float) -> dict[str, torch.Tensor]:
    """w ← w + λ(θ_m − w) from w = θ₀, over the experts in enum order (v, l, vl), in float64."""
    if base is None:
        raise MergeError("modality arithmetic needs the seed (MA) checkpoint θ₀")
    state = {}
    for key, tensors in experts.items():
        w = base[key].to(torch.float64)
        for m in Modality:
            if m in tensors:
                w = w + lam * (tensors[m].to(torch.float64) - w)
        state[key] = w.to(base[key].dtype)
    return state


@register("arithmetic")
def arithmetic(
    experts: ExpertTensors, base: BaseTensors = None, *, lam: float, mode: str, single_expert: str
) -> Merged:
    """Modality arithmetic: θ₀ + λ·Σ_m (θ_m − θ₀) over the layer's experts (or the upstream recursion).

    Sung et al. 2023, "An Empirical Study of Multimodal Model Merging" (arXiv 2304.14933).
    ``single_expert="copy"``: a key that merges one expert only (``used_experts_only`` in layers >= F)
    takes that expert's weights, as the released code does (coefficient 1), instead of θ₀ + λ(θ_m − θ₀).
    """
    if mode == "upstream_sequential":
        state = upstream_sequential(experts, base, lam)
    else:
        state = generalized_task_arithmetic(experts, base, lam=lam).state
    copied = sorted(k for k, tensors in experts.items() if len(tensors) == 1) if single_expert == "copy" else []
    for key in copied:
        state[key] = next(iter(experts[key].values())).clone()
    return Merged(state, {"arithmetic_mode": mode, "single_expert": single_expert, "copied_single_expert": len(copied)})
