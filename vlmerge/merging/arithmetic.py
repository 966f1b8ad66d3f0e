"""Modality arithmetic (Sung et al. 2023, arXiv 2304.14933, §3.2): task vectors of the experts from the seed.

**Upstream quirk.** The released code updates θ₀ in place inside its loop over experts, so instead
of θ₀ + λ·Σ_m (θ_m − θ₀) it computes the recursion w ← w + λ(θ_m − w) over m = v, l (, vl); with
λ = 0.75 and {v, l} that is 0.0625·θ₀ + 0.1875·θ_v + 0.75·θ_l. ``mode="formula"`` (default) is the
paper's equation; ``mode="upstream_sequential"`` reproduces the released runs. The sidecar records
which one ran.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

from vlmerge.merging.errors import MergeError
from vlmerge.merging.registry import BaseTensors, ExpertTensors, Merged, register
from vlmerge.merging.task_arithmetic import CHUNK, generalized_task_arithmetic, one_thread
from vlmerge.model import Modality


class _Without(Mapping[str, Mapping[Modality, torch.Tensor]]):
    """``experts`` less some keys, read through (nothing is loaded by leaving a key out)."""

    def __init__(self, experts: ExpertTensors, drop: frozenset[str]) -> None:
        self._experts, self._drop = experts, drop

    def __getitem__(self, key: str) -> Mapping[Modality, torch.Tensor]:
        if key in self._drop:
            raise KeyError(key)
        return self._experts[key]

    def __iter__(self) -> Iterator[str]:
        return (k for k in self._experts if k not in self._drop)

    def __len__(self) -> int:
        return len(self._experts) - len(self._drop)


def upstream_sequential(experts: ExpertTensors, base: BaseTensors, lam: float) -> dict[str, torch.Tensor]:
    """w ← w + λ(θ_m − w) from w = θ₀, over the experts in enum order (v, l, vl), in float64.

    Computed in float64 chunks of :data:`~vlmerge.merging.task_arithmetic.CHUNK` elements with the
    operations of ``w = w + lam * (θ_m.double() - w)``, so the result is the same bit for bit.
    """
    if base is None:
        raise MergeError("modality arithmetic needs the seed (MA) checkpoint θ₀")
    w, step = torch.empty(CHUNK, dtype=torch.float64), torch.empty(CHUNK, dtype=torch.float64)
    state = {}
    with one_thread():
        for key, tensors in experts.items():
            state[key] = _sequential(tensors, base[key], lam, w, step)
    return state


def _sequential(
    tensors: Mapping[Modality, torch.Tensor], base: torch.Tensor, lam: float, w: torch.Tensor, step: torch.Tensor
) -> torch.Tensor:
    """One key of :func:`upstream_sequential` (``w``, ``step``: float64 chunk buffers)."""
    seed = base.reshape(-1)
    ordered = [tensors[m].reshape(-1) for m in Modality if m in tensors]
    out = torch.empty_like(seed)
    for lo in range(0, seed.numel(), CHUNK):
        hi = min(lo + CHUNK, seed.numel())
        acc = w[: hi - lo].copy_(seed[lo:hi])
        for theta in ordered:
            acc.add_(step[: hi - lo].copy_(theta[lo:hi]).sub_(acc).mul_(lam))
        out[lo:hi] = acc
    return out.reshape(base.shape)


@register("arithmetic")
def arithmetic(
    experts: ExpertTensors, base: BaseTensors = None, *, lam: float, mode: str, single_expert: str
) -> Merged:
    """Modality arithmetic: θ₀ + λ·Σ_m (θ_m − θ₀) over the layer's experts (or the upstream recursion).

    Sung et al. 2023, "An Empirical Study of Multimodal Model Merging" (arXiv 2304.14933).
    ``single_expert="copy"``: a key that merges one expert only (``used_experts_only`` in layers >= F)
    takes that expert's weights, as the released code does (coefficient 1), instead of θ₀ + λ(θ_m − θ₀).
    """
    copied = sorted(k for k, tensors in experts.items() if len(tensors) == 1) if single_expert == "copy" else []
    formula = _Without(experts, frozenset(copied))  # a copied key is not computed first
    if mode == "upstream_sequential":
        state = upstream_sequential(formula, base, lam)
    else:
        state = generalized_task_arithmetic(formula, base, lam=lam).state
    for key in copied:
        state[key] = next(iter(experts[key].values())).clone()
    state = {key: state[key] for key in experts}  # the keys in their given order
    return Merged(state, {"arithmetic_mode": mode, "single_expert": single_expert, "copied_single_expert": len(copied)})
