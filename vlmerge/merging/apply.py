"""``merge``: MS state dict (+ seed, + grams) → MA state dict, through a registered method.

The orchestration every method shares: read the layout, check the inputs, hand each method only
the per-expert tensors it merges (grouped by MA key, experts chosen per layer), copy everything
else, and check that the result covers exactly the MA keys and is finite. Inputs are never modified.
:func:`merge_files` does the same reading its inputs tensor by tensor from their files.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from vlmerge.catalog.params import to_json
from vlmerge.merging.errors import MergeError
from vlmerge.merging.grams import GramStats
from vlmerge.merging.keys import KeyGroup, copied_keys, infer_layout
from vlmerge.merging.registry import ExpertTensors, Merged, MethodSpec, get_method
from vlmerge.merging.selection import SELECTION_PARAMS, Selection
from vlmerge.merging.stream import BaseView, ExpertView, TensorFile, check_grams_shapes, check_ms_file, check_seed_file
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


def _resolve(method: str, params: Mapping[str, Any]) -> tuple[MethodSpec, Selection, dict[str, Any]]:
    spec = get_method(method)
    shared = {p.name for p in SELECTION_PARAMS}
    selection = Selection.resolve({k: v for k, v in params.items() if k in shared})
    return spec, selection, spec.resolve({k: v for k, v in params.items() if k not in shared})


def _assemble(
    method: str,
    spec: MethodSpec,
    resolved: dict[str, Any],
    selection: Selection,
    layout: ExpertLayout,
    groups: list[KeyGroup],
    experts: ExpertTensors,
    out: Merged,
    read: Callable[[str], torch.Tensor],
    keys: Iterable[str],
) -> Merged:
    """The MA state (the method's keys, the copied ones read with ``read``) and the diagnostics record."""
    if set(out.state) != set(experts):
        raise AssertionError(f"method {method!r} returned keys {sorted(set(out.state) ^ set(experts))[:3]}")
    check_output(method, resolved, out.state)
    state = {k: read(k) for k in copied_keys(layout, keys)}
    state.update({g.ma_key: read(selection.rest_key(g)) for g in groups if not selection.merges(g)})
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
    spec, selection, resolved = _resolve(method, params)
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
    return _assemble(
        method, spec, resolved, selection, layout, groups, experts, out, lambda k: ms_state[k].clone(), ms_state
    )


def merge_files(
    method: str,
    ms: TensorFile,
    /,
    *,
    seed_file: TensorFile | None = None,
    grams: GramStats | None = None,
    layout: ExpertLayout | None = None,
    **params: Any,
) -> Merged:
    """:func:`merge_with_report` streaming from files: the same result, tensor for tensor, and the same checks.

    The method sees lazy views (:mod:`vlmerge.merging.stream`): each expert group, seed tensor and gram
    is read when the method reaches it and dropped after, so memory holds the MA-sized output and about
    one key group of inputs (RegMean: one layer's grams; TIES with ``topk_scope=global`` reads every
    tensor again to count magnitudes for its exact threshold, holding only a sample and a bracket). The
    MS tensors the method never reads (experts ``used_experts_only`` leaves out) are read once at the end
    and checked finite.
    """
    spec, selection, resolved = _resolve(method, params)
    layout = layout or infer_layout(ms.keys())
    groups = check_ms_file(ms, layout)
    selection.check(layout)
    chosen = [g for g in groups if selection.merges(g)]
    experts = ExpertView(ms, {g.ma_key: {m: g.experts[m] for m in selection.experts(layout, g.layer)} for g in chosen})
    base = None
    if spec.needs_seed:
        if seed_file is None:
            raise MergeError(f"method {method!r} needs the seed (MA) checkpoint")
        check_seed_file(seed_file, experts)
        base = BaseView(seed_file, tuple(experts))
    extra: dict[str, Any] = {}
    if spec.needs_grams:
        if grams is None:
            raise MergeError(f"method {method!r} needs gram statistics")
        check_grams_shapes(grams, experts)
        extra["grams"] = grams
    out = spec.fn(experts, base, **resolved, **extra)
    merged = _assemble(method, spec, resolved, selection, layout, groups, experts, out, ms.load, ms.keys())
    ms.check_rest()
    return merged


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
