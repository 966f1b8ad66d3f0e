"""RegMean (Jin et al. 2023, arXiv 2212.09849) as used by Sung et al. 2023 (arXiv 2304.14933).

For each linear layer, with grams G_m = X_mᵀX_m of its input in expert m:
G̃_m = α·G_m + (1−α)·diag(G_m),  W = (Σ_m W_m G̃_m)(Σ_m G̃_m)⁻¹ (W in PyTorch's [out, in] layout),
the minimiser of Σ_m ‖X_m Wᵀ − X_m W_mᵀ‖² when α = 1. Solved in float64 (see :mod:`solve`).
Biases, q/v biases and LayerNorms: plain mean. ``regmean_exact_bias`` instead augments every input
with a constant 1, so each bias is solved jointly with its weight (needs the grams' Σx and counts).

**Upstream quirks** (not reproduced): a missing gram was silently skipped; ``range(12)`` was hard-coded;
grams were raw sums over a validation pass including text pads. Here a missing gram is an error
naming the layer, and ``normalize`` chooses raw sums (``sum``, upstream) or per-token means (``mean``).
An expert whose gram saw no tokens (v and l from F on, with VQA/NLVR2 data: pairs only reach vl)
is an error too, unless ``unseen="skip"`` leaves it out of that layer's linear solves — what the
upstream NLVR2 runs with all three experts amounted to — and the sidecar lists what was skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, cast

import torch

from vlmerge.merging.errors import GramsError, MergeError
from vlmerge.merging.grams import GramStats
from vlmerge.merging.interpolation import plain_mean
from vlmerge.merging.keys import LinearSlot, linear_slot
from vlmerge.merging.registry import BaseTensors, ExpertTensors, Merged, register
from vlmerge.merging.regmean_bias import augmented, split_bias, with_bias
from vlmerge.merging.solve import solve_psd
from vlmerge.model import Modality

F64 = torch.float64


def scale_offdiagonal(g: torch.Tensor, alpha: float) -> torch.Tensor:
    """α·G + (1−α)·diag(G): G [n, n] → [n, n]."""
    return alpha * g + (1.0 - alpha) * torch.diag_embed(g.diagonal())


def _sum(terms: Iterable[torch.Tensor]) -> torch.Tensor:
    """Built-in ``sum`` of tensors (start 0, so the same values); a tensor when ``terms`` is not empty."""
    return cast(torch.Tensor, sum(terms))


def regmean_solve(
    weights: Mapping[Modality, torch.Tensor], grams: Mapping[Modality, torch.Tensor], max_cond: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """W = (Σ W_m G_m)(Σ G_m)⁻¹ for W_m [out, in], G_m [in, in] (already α-scaled); → ([out, in] f64, record).

    Solved as (Σ G_m) Wᵀ = Σ G_m W_mᵀ (G symmetric); a ridge, if needed, pulls toward the experts'
    plain mean. The record holds ridge, cond_est, residual.
    """
    if not weights:
        raise MergeError("regmean_solve: no expert weights to merge")
    a = _sum(grams[m] for m in weights)
    rhs = _sum(grams[m] @ weights[m].to(F64).T for m in weights)
    mean = _sum(weights[m].to(F64) for m in weights) / len(weights)
    solution = solve_psd(a, rhs, max_cond, prior=mean.T)
    return solution.x.T, solution.record()


def _grams(
    slot: LinearSlot, experts: tuple[Modality, ...], grams: GramStats, normalize: str, alpha: float, exact_bias: bool
) -> dict[Modality, torch.Tensor]:
    out = {}
    for m in experts:
        g, s, n = grams.statistics(slot.gram_name(m), normalize, f"layer {slot.layer}, expert {m.value}")
        out[m] = scale_offdiagonal(augmented(g, s, n) if exact_bias else g, alpha)
    return out


def _solve_linear(
    key: str,
    slot: LinearSlot,
    experts: ExpertTensors,
    order: tuple[Modality, ...],
    grams: GramStats,
    settings: dict[str, Any],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Merged weight (and, with exact bias, its biases) of one linear layer over the experts ``order``."""
    dtype = experts[key][order[0]].dtype
    g = _grams(slot, order, grams, settings["normalize"], settings["alpha"], settings["exact_bias"])
    if not settings["exact_bias"]:
        merged, record = regmean_solve({m: experts[key][m] for m in order}, g, settings["max_cond"])
        return {key: merged.to(dtype)}, record
    if any(k not in experts for k in slot.bias_keys):
        raise MergeError(f"{key}: exact-bias RegMean needs its biases {slot.bias_keys} merged alongside")
    merged, record = regmean_solve({m: with_bias(slot, key, experts, m) for m in order}, g, settings["max_cond"])
    out = {k: b.to(dtype) for k, b in split_bias(slot, merged).items()}
    return out | {key: merged[:, :-1].to(dtype)}, record


def _seen(
    slot: LinearSlot, tensors: Mapping[Modality, torch.Tensor], grams: GramStats, unseen: str
) -> tuple[Modality, ...]:
    """The experts whose grams enter the solve: all, or with ``unseen="skip"`` those that saw tokens."""
    if unseen == "error":
        return tuple(tensors)
    seen = tuple(m for m in tensors if grams.counts.get(slot.gram_name(m), 0) > 0)
    if not seen:
        raise GramsError(f"no expert of layer {slot.layer} saw a token in the grams; nothing to weight by")
    return seen


def _regmean(experts: ExpertTensors, grams: GramStats, **settings: Any) -> Merged:
    state: dict[str, torch.Tensor] = {}
    records: dict[str, dict[str, Any]] = {}
    for key, tensors in experts.items():
        slot = linear_slot(key)
        if slot is None or len(tensors) == 1:
            continue  # one expert: W_m G G⁻¹ = W_m, no gram needed
        order = _seen(slot, tensors, grams, settings["unseen"])
        if len(order) == 1:
            state[key] = tensors[order[0]].clone()
            record: dict[str, Any] = {}
            if settings["exact_bias"]:
                state.update({k: experts[k][order[0]].clone() for k in slot.bias_keys})
        else:
            merged, record = _solve_linear(key, slot, experts, order, grams, settings)
            state.update(merged)
        skipped = [m.value for m in tensors if m not in order]
        records[key] = record | {"experts": [m.value for m in order]} | ({"skipped": skipped} if skipped else {})
    for key, tensors in experts.items():
        if key not in state:
            state[key] = plain_mean(tensors)
    ridged = sorted(k for k, r in records.items() if r.get("ridge"))
    return Merged(state, {"normalize": settings["normalize"], "linear": records, "ridged": ridged})


@register("regmean")
def regmean(
    experts: ExpertTensors,
    base: BaseTensors = None,
    *,
    grams: GramStats,
    alpha: float,
    normalize: str,
    max_cond: float,
    unseen: str,
) -> Merged:
    """RegMean: linear weights from the gram-weighted least-squares solution; biases and norms averaged.

    Jin et al. 2023, "Dataless Knowledge Fusion by Merging Weights of Language Models" (arXiv 2212.09849).
    """
    return _regmean(
        experts, grams, alpha=alpha, normalize=normalize, max_cond=max_cond, unseen=unseen, exact_bias=False
    )


@register("regmean_exact_bias")
def regmean_exact_bias(
    experts: ExpertTensors,
    base: BaseTensors = None,
    *,
    grams: GramStats,
    alpha: float,
    normalize: str,
    max_cond: float,
    unseen: str,
) -> Merged:
    """RegMean with each linear bias solved jointly with its weight (inputs augmented with a constant 1).

    Jin et al. 2023 (arXiv 2212.09849) applied to [x; 1]: exact least squares for weight and bias together.
    """
    return _regmean(experts, grams, alpha=alpha, normalize=normalize, max_cond=max_cond, unseen=unseen, exact_bias=True)
