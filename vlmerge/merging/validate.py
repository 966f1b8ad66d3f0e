"""Checks of merge inputs, each failing with a message that names the offending key or file."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from vlmerge.catalog.names import RETRIEVAL_TASKS
from vlmerge.merging.errors import GramsError, MergeError
from vlmerge.merging.keys import KeyGroup, block_groups, linear_slot
from vlmerge.merging.registry import ExpertTensors
from vlmerge.model import ExpertLayout, Sharing, detect_sharing
from vlmerge.model.errors import CheckpointError

if TYPE_CHECKING:  # grams.py uses is_finite from here
    from vlmerge.merging.grams import GramStats


def is_finite(tensor: torch.Tensor) -> bool:
    """No NaN or Inf: min and max propagate both, in one pass and without a mask the size of the tensor."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return True
    low, high = torch.aminmax(tensor)
    return bool(torch.isfinite(low) & torch.isfinite(high))


def check_finite(state: Mapping[str, torch.Tensor], what: str) -> None:
    """No NaN or Inf in any floating tensor of ``state``."""
    for key, tensor in state.items():
        if not is_finite(tensor):
            raise MergeError(f"{what}: {key} contains NaN or Inf")


def check_ms_keys(shapes: Mapping[str, tuple[int, ...]], layout: ExpertLayout) -> list[KeyGroup]:
    """Every per-expert key of ``layout`` is among ``shapes`` (key → shape: a state dict's or a file header's)
    with one shape across experts, and no block key lies outside the layout; returns the groups."""
    groups = block_groups(layout)
    for group in groups:
        missing = [k for _, k in group.ms_keys if k not in shapes]
        if missing:
            raise MergeError(
                f"MS state dict lacks {missing[0]} (layout {layout.sharing.value}, {layout.num_layers} layers)"
            )
        expert_shapes = {m.value: tuple(shapes[k]) for m, k in group.ms_keys}
        if len(set(expert_shapes.values())) > 1:
            raise MergeError(f"experts of {group.ma_key} disagree in shape: {expert_shapes}")
    expected = {k for g in groups for _, k in g.ms_keys} | {
        k for layer in range(layout.num_layers) for k in layout.shared_keys(layer)
    }
    stray = sorted(k for k in shapes if k.startswith("transformer.blocks.") and k not in expected)
    if stray:
        raise MergeError(
            f"MS state dict has block keys outside its layout ({layout.sharing.value}, "
            f"{layout.num_layers} layers): {stray[:3]}"
        )
    return groups


def check_ms_state(state: Mapping[str, torch.Tensor], layout: ExpertLayout) -> list[KeyGroup]:
    """:func:`check_ms_keys` of an MS state dict, and every tensor finite; returns the groups."""
    groups = check_ms_keys({k: tuple(t.shape) for k, t in state.items()}, layout)
    check_finite(state, "MS state dict")
    return groups


def check_seed(seed: Mapping[str, torch.Tensor], experts: ExpertTensors) -> None:
    """The seed is an MA state dict holding every merged key, shaped like the experts."""
    try:
        sharing = detect_sharing(seed)
    except CheckpointError as err:
        raise MergeError(f"seed state dict: {err}") from err
    if sharing is not Sharing.SHARED:
        raise MergeError(f"seed state dict is {sharing.value}, expected a modality-agnostic (shared) one")
    for key, tensors in experts.items():
        if key not in seed:
            raise MergeError(f"seed state dict lacks {key}")
        shape = tuple(next(iter(tensors.values())).shape)
        if tuple(seed[key].shape) != shape:
            raise MergeError(f"seed {key} has shape {tuple(seed[key].shape)}, the experts {shape}")
    check_finite({k: seed[k] for k in experts}, "seed state dict")


def check_grams(grams: GramStats, experts: ExpertTensors) -> None:
    """A gram of the right size for every linear weight that merges two or more experts."""
    for key, tensors in experts.items():
        slot = linear_slot(key)
        if slot is None or len(tensors) < 2:
            continue
        dim = next(iter(tensors.values())).shape[1]
        for m in tensors:
            name = slot.gram_name(m)
            if name not in grams.xtx:
                raise GramsError(
                    f"grams lack {name}, needed to merge layer {slot.layer} (expert {m.value}); "
                    "were they collected for this model and task?"
                )
            if tuple(grams.xtx[name].shape) != (dim, dim):
                raise GramsError(
                    f"gram {name} is {tuple(grams.xtx[name].shape)} but layer {slot.layer}'s "
                    f"{key} takes {dim} inputs: grams from another model"
                )


def check_grams_task(grams_task: object, used_experts_only: str | None, source: str) -> None:
    """Grams from the data of the task whose experts ``used_experts_only`` keeps (``retrieval``: coco
    or f30k). The statistics weight each expert by that task's inputs; another task's are refused."""
    if used_experts_only is None or grams_task is None:
        return
    accepted = RETRIEVAL_TASKS if used_experts_only == "retrieval" else (used_experts_only,)
    if grams_task not in accepted:
        raise GramsError(
            f"{source} holds grams of task {grams_task}, but the merge keeps the experts of task "
            f"{used_experts_only} (used_experts_only); collect grams on {used_experts_only} data "
            "(--allow-other-task-grams accepts them)"
        )
