"""``merge``: MS state dict (+ seed, + grams) → MA state dict, through a registered method.

The orchestration every method shares: read the layout, check the inputs, hand each method only
the per-expert tensors it merges (grouped by MA key, experts chosen per layer), copy everything
else, and check that the result covers exactly the MA keys and is finite. Inputs are never modified.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from vlmerge.catalog.params import to_json
from vlmerge.merging.errors import MergeError
from vlmerge.merging.grams import GramStats
from vlmerge.merging.keys import copied_keys, infer_layout
from vlmerge.merging.registry import Merged, get_method
from vlmerge.merging.selection import SELECTION_PARAMS, Selection
from vlmerge.merging.validate import check_grams, check_ms_state, check_seed, is_finite
from vlmerge.model import ExpertLayout

log = logging.getLogger(__name__)


def check_output(method: str, params: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> None:
    """Every merged tensor is finite: the first that is not is an error naming it, the method and its
    parameters (one min/max pass per tensor; the copied keys were checked on input)."""
    for key, tensor in state.items():
        if not is_finite(tensor):
            given = ", ".join(f"{k}={v}" for k, v in to_json(dict(params)).items())
            raise MergeError(
                f"{method} ({given}) produced NaN or Inf in {key} ({tensor.dtype}); "
                "the parameters or inputs leave the range the result can represent"
            )


def merge_with_report(
    method: str,
    ms_state: Mapping[str, torch.Tensor],
    *,
    seed_state: Mapping[str, torch.Tensor] | None = None,
    grams: GramStats | None = None,
    layout: ExpertLayout | None = None,
    **params: Any,
) -> Merged:
    """Merge with ``method``; ``params`` are the method's and the shared selection options.

    Returns the MA state dict and a diagnostics record (method, resolved parameters, experts per
    layer, the method's own per-layer diagnostics).
    """
    spec = get_method(method)
    shared = {p.name for p in SELECTION_PARAMS}
    selection = Selection.resolve({k: v for k, v in params.items() if k in shared})
    resolved = spec.resolve({k: v for k, v in params.items() if k not in shared})
    layout = layout or infer_layout(ms_state)
    groups = check_ms_state(ms_state, layout)
    selection.check(layout)
    chosen = [g for g in groups if selection.merges(g)]
    experts = {g.ma_key: {m: ms_state[g.experts[m]] for m in selection.experts(layout, g.layer)} for g in chosen}
    base = None
    if spec.needs_seed:
        if seed_state is None:
            raise MergeError(f"method {method!r} needs the seed (MA) checkpoint")
        check_seed(seed_state, experts)
        base = {k: seed_state[k] for k in experts}
    extra: dict[str, Any] = {}
    if spec.needs_grams:
        if grams is None:
            raise MergeError(f"method {method!r} needs gram statistics")
        check_grams(grams, experts)
        extra["grams"] = grams
    out = spec.fn(experts, base, **resolved, **extra)
    if set(out.state) != set(experts):
        raise AssertionError(f"method {method!r} returned keys {sorted(set(out.state) ^ set(experts))[:3]}")
    check_output(method, resolved, out.state)
    state = {k: ms_state[k].clone() for k in copied_keys(layout, ms_state)}
    state.update({g.ma_key: ms_state[selection.rest_key(g)].clone() for g in groups if not selection.merges(g)})
    state.update(out.state)
    log.info(
        "%s merged %d keys over %d layers; %d copied",
        method,
        len(out.state),
        layout.num_layers,
        len(state) - len(out.state),
    )
    layers = {str(i): [m.value for m in selection.experts(layout, i)] for i in range(layout.num_layers)}
    return Merged(
        state,
        {
            "method": method,
            "paper": spec.paper,
            "params": to_json(resolved),
            "selection": selection.to_json(),
            "experts_per_layer": layers,
            "method_diagnostics": out.diagnostics,
        },
    )


def merge(
    method: str,
    ms_state: Mapping[str, torch.Tensor],
    *,
    seed_state: Mapping[str, torch.Tensor] | None = None,
    grams: GramStats | None = None,
    layout: ExpertLayout | None = None,
    **params: Any,
) -> dict[str, torch.Tensor]:
    """The MA state dict of :func:`merge_with_report`; strict-loads into ``create_model(preset, "shared")``."""
    return merge_with_report(method, ms_state, seed_state=seed_state, grams=grams, layout=layout, **params).state
