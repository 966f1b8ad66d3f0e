"""Task arithmetic and its sparsified variants, all one generalized function (as mergekit does).

θ = θ₀ + λ·combine_m(sparsify(τ_m)), τ_m = θ_m − θ₀ over a chosen expert subset:
task arithmetic (no sparsification, sum), TIES (magnitude trim, elect sign, disjoint mean),
DARE (random drop and rescale, sum; or elect + disjoint mean for DARE-TIES).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from vlmerge.merging.errors import MergeError
from vlmerge.merging.registry import BaseTensors, ExpertTensors, Merged, register
from vlmerge.merging.sparsify import dare_drop, disjoint_mean, magnitude_threshold, tensor_seed, trim
from vlmerge.model import Modality


def _chosen(tensors: Mapping[Modality, torch.Tensor], subset: tuple[Modality, ...] | None) -> list[Modality]:
    return [m for m in tensors if subset is None or m in subset]


def generalized_task_arithmetic(
    experts: ExpertTensors,
    base: BaseTensors,
    *,
    lam: float,
    subset: tuple[Modality, ...] | None = None,
    trim_k: float | None = None,
    topk_scope: str = "per_tensor",
    drop_p: float = 0.0,
    seed: int = 0,
    rescale: bool = True,
    consensus: bool = False,
) -> Merged:
    """θ₀ + λ·Σ_m τ̂_m (or λ·disjoint_mean with ``consensus``), τ̂_m = trim(drop(θ_m − θ₀)).

    Task vectors are float64; a key whose layer has no expert of ``subset`` stays θ₀. Inputs: every
    tensor of ``experts[key]`` has the shape of ``base[key]``.
    """
    if base is None:
        raise MergeError("task-vector methods need the seed (MA) checkpoint θ₀")

    def task_vector(key: str, m: Modality) -> torch.Tensor:
        tau = experts[key][m].to(torch.float64) - base[key].to(torch.float64)
        return dare_drop(tau, drop_p, tensor_seed(seed, key, m), rescale) if drop_p > 0 else tau

    thresholds: dict[Modality, float] = {}
    if trim_k is not None and topk_scope == "global":
        for m in Modality:
            keys = [k for k, t in experts.items() if m in _chosen(t, subset)]
            if keys:
                thresholds[m] = magnitude_threshold(
                    torch.cat([task_vector(k, m).abs().reshape(-1) for k in keys]), trim_k
                )
    state = {}
    for key, tensors in experts.items():
        taus = [task_vector(key, m) for m in _chosen(tensors, subset)]
        if trim_k is not None:
            taus = [
                trim(t, thresholds[m] if topk_scope == "global" else magnitude_threshold(t.abs(), trim_k))
                for t, m in zip(taus, _chosen(tensors, subset))
            ]
        theta = base[key].to(torch.float64, copy=True)  # added to in place: never the caller's tensor
        if taus:
            theta.add_(disjoint_mean(taus) if consensus else sum(taus[1:], taus[0]), alpha=lam)
        state[key] = theta.to(base[key].dtype)
    return Merged(state, {"global_thresholds": {m.value: t for m, t in thresholds.items()}} if thresholds else {})


@register("task_arithmetic")
def task_arithmetic(
    experts: ExpertTensors, base: BaseTensors = None, *, lam: float, subset: tuple[Modality, ...] | None
) -> Merged:
    """Task arithmetic over any expert subset: θ₀ + λ·Σ_m (θ_m − θ₀).

    Ilharco et al. 2023, "Editing Models with Task Arithmetic" (arXiv 2212.04089).
    """
    return generalized_task_arithmetic(experts, base, lam=lam, subset=subset)


@register("ties")
def ties(
    experts: ExpertTensors,
    base: BaseTensors = None,
    *,
    lam: float,
    k: float,
    topk_scope: str,
    subset: tuple[Modality, ...] | None,
) -> Merged:
    """TIES-Merging: trim each τ_m to its top-k % magnitudes, elect signs, disjoint mean, scale by λ.

    Yadav et al. 2023, "TIES-Merging: Resolving Interference When Merging Models" (arXiv 2306.01708).
    ``topk_scope``: ``per_tensor`` ranks magnitudes within each tensor; ``global`` across all merged
    tensors of an expert's task vector, as the paper flattens the whole model.
    """
    return generalized_task_arithmetic(
        experts, base, lam=lam, subset=subset, trim_k=k, topk_scope=topk_scope, consensus=True
    )


@register("dare")
def dare(
    experts: ExpertTensors,
    base: BaseTensors = None,
    *,
    lam: float,
    p: float,
    seed: int,
    rescale: bool,
    consensus: bool,
    subset: tuple[Modality, ...] | None,
) -> Merged:
    """DARE: drop each task-vector entry with probability p, rescale by 1/(1−p), then sum (or TIES-combine).

    Yu et al. 2023, "Language Models are Super Mario" (arXiv 2311.03099). Each tensor's mask comes
    from its own generator seeded by (seed, key, expert), so results do not depend on iteration order.
    """
    return generalized_task_arithmetic(
        experts, base, lam=lam, subset=subset, drop_p=p, seed=seed, rescale=rescale, consensus=consensus
    )
