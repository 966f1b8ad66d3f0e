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
A gram that is all zero while it counts tokens, or one with a negative diagonal, is an error naming
the layer and expert; so is a layer whose summed grams turn out indefinite when factored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from vlmerge.merging.errors import GramsError, MergeError
from vlmerge.merging.grams import GramStats
from vlmerge.merging.interpolation import plain_mean
from vlmerge.merging.keys import LinearSlot, linear_slot
from vlmerge.merging.registry import BaseTensors, ExpertTensors, Merged, register
from vlmerge.merging.regmean_bias import augmented, split_bias, with_bias
from vlmerge.merging.solve import PSD_TOLERANCE, NotPositiveSemiDefinite, solve_psd
from vlmerge.model import Modality

F64 = torch.float64


def scale_offdiagonal(g: torch.Tensor, alpha: float) -> torch.Tensor:
    """α·G + (1−α)·diag(G): G [n, n] → a new [n, n] (the reference for :func:`scale_offdiagonal_`)."""
    return alpha * g + (1.0 - alpha) * torch.diag_embed(g.diagonal())


def scale_offdiagonal_(g: torch.Tensor, alpha: float) -> torch.Tensor:
    """G ← α·G + (1−α)·diag(G) in place, without an [n, n] temporary; α = 1 leaves G as it is."""
    if alpha != 1.0:
        diagonal = g.diagonal().clone()
        g.mul_(alpha).diagonal().copy_(diagonal)
    return g


class Workspace:
    """Float64 buffers reused from layer to layer (one per role and shape): a merge allocates each
    [in, in] and [in, out] matrix once instead of once per layer (fresh pages cost a pass of their own)."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, tuple[int, ...]], torch.Tensor] = {}

    def get(self, role: str, shape: tuple[int, ...]) -> torch.Tensor:
        key = (role, shape)
        if key not in self._buffers:
            self._buffers[key] = torch.empty(shape, dtype=F64)
        return self._buffers[key]


def regmean_solve(
    weights: Mapping[Modality, torch.Tensor],
    grams: Mapping[Modality, torch.Tensor],
    max_cond: float,
    *,
    alpha: float = 1.0,
    scales: Mapping[Modality, float] | None = None,
    workspace: Workspace | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """W = (Σ c_m W_m G̃_m)(Σ c_m G̃_m)⁻¹ for W_m [out, in], G_m [in, in]; → ([out, in] f64, record).

    G̃_m = α·G_m + (1−α)·diag(G_m) and c_m = ``scales[m]`` (default 1; 1/tokens for per-token means)
    are applied without scaled copies of the grams: the sum Ã = Σ c_m G̃_m is the one [in, in] matrix
    built (scaled off the diagonal in place, then factored over). The system Ã Wᵀ = Σ c_m G̃_m W_mᵀ
    (G symmetric) is solved for the correction to the first expert, Wᵀ = W_1ᵀ + Ã⁻¹ Σ_{m>1} c_m G̃_m
    (W_m − W_1)ᵀ, which needs one [in, in] × [in, out] product fewer than forming the right-hand side
    (G̃_m Δᵀ = α·G_m Δᵀ + (1−α)·diag(G_m) Δᵀ). A ridge, if needed, pulls toward the experts' plain
    mean. The record holds ridge, cond_est, residual. With a ``workspace`` the result is a view of
    its buffer: copy it before the next call.
    """
    if not weights:
        raise MergeError("regmean_solve: no expert weights to merge")
    order = list(weights)
    coef = {m: 1.0 if scales is None else float(scales[m]) for m in order}
    w64 = {m: weights[m].to(F64) for m in order}  # [out, in]
    first, *rest = order
    n, k = grams[first].shape[0], w64[first].shape[0]
    space = workspace or Workspace()
    a, rhs = space.get("gram", (n, n)), space.get("rhs", (n, k))
    if coef[first] == 1.0 and rest:  # Σ c_m G_m: one pass for the first two terms
        torch.add(grams[first], grams[rest[0]], alpha=coef[rest[0]], out=a)
    else:
        torch.mul(grams[first], coef[first], out=a)
        if rest:
            a.add_(grams[rest[0]], alpha=coef[rest[0]])
    for m in rest[1:]:
        a.add_(grams[m], alpha=coef[m])
    # Σ G̃_m W_mᵀ = Ã W_1ᵀ + Σ_{m>1} G̃_m (W_m − W_1)ᵀ: solve for the correction to W_1, one product fewer.
    base = w64[first].T
    rhs.zero_()
    for m in rest:
        delta = w64[m] - w64[first]
        rhs.addmm_(grams[m], delta.T, alpha=alpha * coef[m])
        if alpha != 1.0:
            rhs.addcmul_(grams[m].diagonal()[:, None], delta.T, value=(1.0 - alpha) * coef[m])
    scale_offdiagonal_(a, alpha)

    def prior() -> torch.Tensor:
        total = w64[first].clone()
        for m in rest:
            total.add_(w64[m])
        return total.div_(len(order)).T

    solution = solve_psd(a, rhs, max_cond, prior=prior, overwrite=True, base=base)
    return solution.x.T, solution.record()


def _grams(
    slot: LinearSlot, experts: tuple[Modality, ...], grams: GramStats, normalize: str, exact_bias: bool
) -> tuple[dict[Modality, torch.Tensor], dict[Modality, float]]:
    """Each expert's gram (augmented with its Σx and count for exact bias) and its scale c_m."""
    out, scales = {}, {}
    for m in experts:
        g, s, n = grams.checked(slot.gram_name(m), f"layer {slot.layer}, expert {m.value}")
        out[m] = augmented(g, s, float(n)) if exact_bias else g
        scales[m] = 1.0 / n if normalize == "mean" else 1.0
    return out, scales


def _indefinite(slot: LinearSlot, key: str, g: Mapping[Modality, torch.Tensor], err: MergeError) -> GramsError:
    """The error for a layer whose summed grams are indefinite, naming the experts whose own gram is."""
    bad = []
    for m, gram in g.items():
        eigenvalues = torch.linalg.eigvalsh(gram)
        if float(eigenvalues[0]) < -PSD_TOLERANCE * max(float(eigenvalues[-1]), 0.0):
            bad.append(f"{slot.gram_name(m)} (expert {m.value}: min eigenvalue {float(eigenvalues[0]):.3g})")
    named = f"; indefinite: {', '.join(bad)}" if bad else ""
    return GramsError(f"{key} (layer {slot.layer}): {err}{named}")


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
    g, scales = _grams(slot, order, grams, settings["normalize"], settings["exact_bias"])
    if settings["exact_bias"] and any(k not in experts for k in slot.bias_keys):
        raise MergeError(f"{key}: exact-bias RegMean needs its biases {slot.bias_keys} merged alongside")
    if settings["exact_bias"]:
        weights = {m: with_bias(slot, key, experts, m) for m in order}
    else:
        weights = {m: experts[key][m] for m in order}
    try:
        merged, record = regmean_solve(
            weights, g, settings["max_cond"], alpha=settings["alpha"], scales=scales, workspace=settings["workspace"]
        )
    except NotPositiveSemiDefinite as err:
        raise _indefinite(slot, key, g, err) from None
    except MergeError as err:
        raise type(err)(f"{key} (layer {slot.layer}): {err}") from None
    if not settings["exact_bias"]:
        return {key: merged.to(dtype, copy=True)}, record  # copies out of the workspace
    out = {k: b.to(dtype, copy=True) for k, b in split_bias(slot, merged).items()}
    return out | {key: merged[:, :-1].to(dtype, copy=True)}, record


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
    settings["workspace"] = Workspace()
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
