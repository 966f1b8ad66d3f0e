"""How far the experts drifted apart and from the seed: per layer and overall (docs/merging.md).

The paper proposes two weight-distance metrics that predict merging outcomes but its exact
definitions were not available to us, so we define ours here and report several. For one layer, θ_m
is expert m's per-expert parameters flattened and concatenated (only the parts its sharing layout
makes per-expert), θ₀ the seed's matching MA parameters, τ_m = θ_m − θ₀ the task vector. "Overall"
concatenates every layer where both experts exist (pairs with vl: layers ≥ F only).

Between two experts a, b:
- ``l2``: ‖θ_a − θ_b‖₂ (= ‖τ_a − τ_b‖₂).
- ``cosine``: 1 − cos(τ_a, τ_b). Weights that share a seed are nearly parallel, so the cosine of the
  raw weights says little; the task vectors' does.
- ``sign``: among coordinates where both τ are non-zero, the fraction with opposite signs.
- ``soft_sign``: Σ_i max(0, −τ_a,i τ_b,i) / Σ_i |τ_a,i τ_b,i| — the share of the product mass with
  conflicting signs, so coordinates that barely moved barely count (0 = all agree, 1 = all conflict).
- ``truncated_sign``: ``soft_sign`` of the TIES-trimmed task vectors, each keeping its top-k %
  magnitudes (k = 20 by default) within the layer (overall: within the whole concatenation); only
  coordinates large in both count. None when no coordinate survives in both.
Expert m to the seed: ``l2`` = ‖τ_m‖₂, ``relative_l2`` = ‖τ_m‖₂ / ‖θ₀‖₂, ``cosine`` = 1 − cos(θ_m, θ₀).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

import torch

from vlmerge.merging.keys import block_groups
from vlmerge.merging.sparsify import magnitude_threshold, trim
from vlmerge.model import ExpertLayout, Modality

_F64 = torch.float64


def _vector(state: Mapping[str, torch.Tensor], keys: list[str]) -> torch.Tensor:
    return torch.cat([state[k].reshape(-1).to(torch.float32) for k in keys])


def layer_vectors(
    ms_state: Mapping[str, torch.Tensor], seed_state: Mapping[str, torch.Tensor], layout: ExpertLayout, layer: int
) -> tuple[dict[Modality, torch.Tensor], torch.Tensor]:
    """({m: θ_m}, θ₀) of one layer's per-expert parameters, flattened float32 [P]."""
    groups = [g for g in block_groups(layout) if g.layer == layer]
    experts = {m: _vector(ms_state, [g.experts[m] for g in groups]) for m in layout.experts(layer)}
    return experts, _vector(seed_state, [g.ma_key for g in groups])


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.dot(a.to(_F64), b.to(_F64)))


def pair_sums(ta: torch.Tensor, tb: torch.Tensor, thresholds: tuple[float, float]) -> dict[str, float]:
    """Additive statistics of two task vectors [P] (sums over layers give the overall ones)."""
    product = ta.to(_F64) * tb.to(_F64)
    trimmed = trim(ta, thresholds[0]).to(_F64) * trim(tb, thresholds[1]).to(_F64)
    return {
        "dot": float(product.sum()),
        "aa": _dot(ta, ta),
        "bb": _dot(tb, tb),
        "diff": _dot(ta - tb, ta - tb),
        "both": float((product != 0).sum()),
        "opposite": float((product < 0).sum()),
        "conflict": float((-product).clamp(min=0).sum()),
        "mass": float(product.abs().sum()),
        "t_conflict": float((-trimmed).clamp(min=0).sum()),
        "t_mass": float(trimmed.abs().sum()),
    }


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def pair_metrics(s: Mapping[str, float]) -> dict[str, float | None]:
    cos = _ratio(s["dot"], math.sqrt(s["aa"] * s["bb"]))
    return {
        "l2": math.sqrt(s["diff"]),
        "cosine": None if cos is None else 1.0 - cos,
        "sign": _ratio(s["opposite"], s["both"]),
        "soft_sign": _ratio(s["conflict"], s["mass"]),
        "truncated_sign": _ratio(s["t_conflict"], s["t_mass"]),
    }


def seed_sums(theta: torch.Tensor, base: torch.Tensor) -> dict[str, float]:
    tau = theta - base
    return {"tt": _dot(tau, tau), "bb": _dot(base, base), "xx": _dot(theta, theta), "xb": _dot(theta, base)}


def seed_metrics(s: Mapping[str, float]) -> dict[str, float | None]:
    cos = _ratio(s["xb"], math.sqrt(s["xx"] * s["bb"]))
    return {
        "l2": math.sqrt(s["tt"]),
        "relative_l2": _ratio(math.sqrt(s["tt"]), math.sqrt(s["bb"])),
        "cosine": None if cos is None else 1.0 - cos,
    }


def _add(total: dict[str, float], part: Mapping[str, float]) -> None:
    for k, v in part.items():
        total[k] = total.get(k, 0.0) + v


def weight_distances(
    ms_state: Mapping[str, torch.Tensor], seed_state: Mapping[str, torch.Tensor], layout: ExpertLayout, k: float = 20.0
) -> dict[str, Any]:
    """Per-layer and overall metrics (see the module docstring) as a JSON-ready record."""
    layers: dict[str, Any] = {}
    pair_total: dict[str, dict[str, float]] = {}
    seed_total: dict[str, dict[str, float]] = {}
    global_thr = _global_thresholds(ms_state, seed_state, layout, k)
    for layer in range(layout.num_layers):
        experts, base = layer_vectors(ms_state, seed_state, layout, layer)
        taus = {m: theta - base for m, theta in experts.items()}
        record: dict[str, Any] = {"pairs": {}, "to_seed": {}}
        for a, b in itertools.combinations(taus, 2):
            name = f"{a.value}-{b.value}"
            local = (magnitude_threshold(taus[a].abs(), k), magnitude_threshold(taus[b].abs(), k))
            record["pairs"][name] = pair_metrics(pair_sums(taus[a], taus[b], local))
            overall = pair_sums(taus[a], taus[b], (global_thr[(a, b)], global_thr[(b, a)]))
            _add(pair_total.setdefault(name, {}), overall)
        for m, theta in experts.items():
            sums = seed_sums(theta, base)
            record["to_seed"][m.value] = seed_metrics(sums)
            _add(seed_total.setdefault(m.value, {}), sums)
        layers[str(layer)] = record
    return {
        "k": k,
        "sharing": layout.sharing.value,
        "layers": layers,
        "overall": {
            "pairs": {n: pair_metrics(s) for n, s in pair_total.items()},
            "to_seed": {m: seed_metrics(s) for m, s in seed_total.items()},
        },
    }


def _global_thresholds(
    ms_state: Mapping[str, torch.Tensor], seed_state: Mapping[str, torch.Tensor], layout: ExpertLayout, k: float
) -> dict[tuple[Modality, Modality], float]:
    """For each ordered pair (a, b): a's top-k threshold over the layers where a and b both exist."""
    magnitudes: dict[tuple[Modality, Modality], list[torch.Tensor]] = {}
    for layer in range(layout.num_layers):
        experts, base = layer_vectors(ms_state, seed_state, layout, layer)
        for a, b in itertools.permutations(experts, 2):
            magnitudes.setdefault((a, b), []).append((experts[a] - base).abs())
    return {pair: magnitude_threshold(torch.cat(parts), k) for pair, parts in magnitudes.items()}
