"""What every merge method needs and takes: inputs, parameters with types and ranges, the paper.

One table, no torch: :mod:`vlmerge.merging` attaches each function to its entry here (its keyword
arguments must be exactly the parameters listed), the workflow checks every ``merge.methods`` entry of
the config against it when the DAG is built, and ``python -m vlmerge.merge --list`` prints it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vlmerge.catalog.names import TASK_EXPERTS, TASKS, Part
from vlmerge.catalog.params import (
    Param,
    choice,
    flag,
    integer,
    layer_set,
    modalities,
    modality,
    names,
    optional,
    real,
    to_json,
)
from vlmerge.errors import ConfigError

SUNG = "Sung et al. 2023, https://arxiv.org/abs/2304.14933"
REGMEAN = "Jin et al. 2023, https://arxiv.org/abs/2212.09849"
NORMALIZE = ("sum", "mean")  # gram statistics: raw token sums (upstream) or per-token means

# Partial merging: parts of a block that merge together.
PARTS: dict[str, frozenset[Part]] = {
    "attention": frozenset({Part.NORM1, Part.ATTN}),
    "ffn": frozenset({Part.NORM2, Part.MLP}),
}

# Options every method takes: which experts merge in each layer, and which keys merge at all.
SELECTION_PARAMS = (
    Param(
        "used_experts_only",
        optional(choice(*TASK_EXPERTS)),
        None,
        "task whose used experts alone merge in layers >= F (coco, f30k, retrieval: v,l; vqa, nlvr2: vl)",
    ),
    Param("layers", optional(layer_set), None, "merge only these layers, e.g. 0-5,9 (default: all)"),
    Param("parts", optional(names(*PARTS)), None, "merge only these parts: attention, ffn (default: all)"),
    Param("rest_from", optional(modality), None, "expert whose weights fill every key that does not merge"),
)


@dataclass(frozen=True)
class MethodInfo:
    """A merge method's contract: its parameters and the inputs it needs besides the MS checkpoint."""

    name: str
    paper: str
    params: tuple[Param, ...] = ()
    needs_seed: bool = False
    needs_grams: bool = False

    def resolve(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults overridden by ``given`` (the method's own parameters only), each value parsed."""
        known = {p.name: p for p in self.params}
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ConfigError(
                f"method {self.name!r} has no parameter(s) {unknown}; it takes "
                f"{sorted(known) + [p.name for p in SELECTION_PARAMS]}"
            )
        return {name: p.resolve(given[name]) if name in given else p.default for name, p in known.items()}

    def describe(self) -> dict[str, Any]:
        return {
            "paper": self.paper,
            "needs_seed": self.needs_seed,
            "needs_grams": self.needs_grams,
            "params": {p.name: {"default": to_json(p.default), "help": p.help} for p in self.params},
        }


# λ scales task vectors added to θ₀: the paper's main table uses 0.75, the sweeps overlay 0.25-1 and
# TIES defaults to 1. [0, 2] leaves room to extrapolate past the plain sum of the task vectors; far
# outside it the merged weights leave the region the experts span (λ = 1e6 overflows float32), so the
# range is checked like ratio, α, k and p.
LAM_RANGE = (0.0, 2.0)
_LAM = Param("lam", real(*LAM_RANGE), 0.5, "scale λ ∈ [0, 2] of the combined task vectors")
_SUBSET = Param("subset", optional(modalities), None, "expert subset, e.g. v,l (default: every expert of a layer)")
_REGMEAN = (
    Param("alpha", real(0.0, 1.0), 1.0, "scale α of the grams' off-diagonal entries (upstream runs: 1.0)"),
    Param("normalize", choice(*NORMALIZE), "sum", "sum: raw token sums (upstream); mean: per-token averages"),
    Param(
        "max_cond",
        real(1.0, 1e15),
        1e10,
        "condition estimate (cond₂, from power iterations) above which a ridge is added; at most 1e15, "
        "as beyond 1/ε a float64 solve keeps no correct digit",
    ),
    Param(
        "unseen",
        choice("error", "skip"),
        "error",
        "an expert whose gram saw no tokens: error, or leave it out of that layer's solve (upstream; recorded)",
    ),
)

METHOD_INFO: dict[str, MethodInfo] = {
    info.name: info
    for info in (
        MethodInfo(
            "interpolation", SUNG, (Param("ratio", real(0.0, 1.0), 0.5, "weight r of the v expert; l gets 1−r"),)
        ),
        MethodInfo(
            "arithmetic",
            SUNG,
            (
                Param("lam", real(*LAM_RANGE), 0.5, "scale λ ∈ [0, 2] of the summed modality vectors"),
                Param(
                    "mode",
                    choice("formula", "upstream_sequential"),
                    "formula",
                    "formula: θ₀ + λΣ(θ_m − θ₀); upstream_sequential: the released in-place recursion",
                ),
                Param(
                    "single_expert",
                    choice("formula", "copy"),
                    "formula",
                    "a layer merging one expert (used_experts_only): the formula θ₀ + λ(θ_m − θ₀), "
                    "or copy θ_m (coefficient 1, as the released code)",
                ),
            ),
            needs_seed=True,
        ),
        MethodInfo("regmean", REGMEAN, _REGMEAN, needs_grams=True),
        MethodInfo("regmean_exact_bias", f"{REGMEAN} (bias variant ours)", _REGMEAN, needs_grams=True),
        MethodInfo(
            "task_arithmetic", "Ilharco et al. 2023, https://arxiv.org/abs/2212.04089", (_LAM, _SUBSET), needs_seed=True
        ),
        MethodInfo(
            "ties",
            "Yadav et al. 2023, https://arxiv.org/abs/2306.01708",
            (
                Param("lam", real(*LAM_RANGE), 1.0, "scale λ ∈ [0, 2] of the merged task vector"),
                Param("k", real(0.0, 100.0), 20.0, "percent of task-vector entries kept, by magnitude"),
                Param(
                    "topk_scope",
                    choice("per_tensor", "global"),
                    "per_tensor",
                    "rank magnitudes within each tensor, or across an expert's whole task vector",
                ),
                _SUBSET,
            ),
            needs_seed=True,
        ),
        MethodInfo(
            "dare",
            "Yu et al. 2023, https://arxiv.org/abs/2311.03099",
            (
                _LAM,
                Param("p", real(0.0, 1.0, below_high=True), 0.5, "drop rate of task-vector entries"),
                Param("seed", integer(0), 0, "seed of the per-tensor drop masks"),
                Param("rescale", flag, True, "rescale kept entries by 1/(1−p)"),
                Param(
                    "consensus", flag, False, "elect signs and take the disjoint mean (DARE-TIES) instead of the sum"
                ),
                _SUBSET,
            ),
            needs_seed=True,
        ),
    )
}


def method_info(name: str) -> MethodInfo:
    if name not in METHOD_INFO:
        raise ConfigError(f"unknown merge method {name!r}; choose one of {sorted(METHOD_INFO)}")
    return METHOD_INFO[name]


def split_params(params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``params`` → (the method's own, the shared selection options)."""
    shared = {p.name for p in SELECTION_PARAMS}
    return ({k: v for k, v in params.items() if k not in shared}, {k: v for k, v in params.items() if k in shared})


def resolve_selection(given: Mapping[str, Any]) -> dict[str, Any]:
    """The selection options with defaults, each value parsed."""
    return {p.name: p.resolve(given[p.name]) if p.name in given else p.default for p in SELECTION_PARAMS}


# ``used_experts_only`` values that stand for the downstream task of each result:
# - ``task``: the experts the task's forward routes through in layers >= F (retrieval v, l; VQA and NLVR2 vl);
# - ``task_upstream``: the released runs' choice, the same but NLVR2 merging all three experts there.
PER_TASK_EXPERTS: dict[str, dict[str, str | None]] = {
    "task": {task: task for task in TASKS},
    "task_upstream": {"vqa": "vqa", "coco": "coco", "f30k": "f30k", "nlvr2": None},
}


def for_task(params: Mapping[str, Any], task: str) -> dict[str, Any]:
    """``params`` with a per-task ``used_experts_only`` resolved for ``task`` (None values dropped)."""
    resolved = dict(params)
    choice = resolved.get("used_experts_only")
    if isinstance(choice, str) and choice in PER_TASK_EXPERTS:
        resolved["used_experts_only"] = PER_TASK_EXPERTS[choice][task]
    return {k: v for k, v in resolved.items() if v is not None}


def check_merge(method: str, params: Mapping[str, Any], *, task: str | None = None) -> dict[str, Any]:
    """Every parameter of one merge parsed and range-checked, for ``task`` when the entry depends on it.

    Raises :class:`ConfigError` naming the method and the key. The workflow calls this for every
    ``merge.methods`` entry (and every task it is made for) before any job runs.
    """
    info = method_info(method)
    choice = params.get("used_experts_only")
    if isinstance(choice, str) and choice in PER_TASK_EXPERTS and task is None:
        return check_merge(method, params, task="vqa") | {"used_experts_only": choice}
    params = for_task(params, task) if task is not None else {k: v for k, v in params.items() if v is not None}
    own, shared = split_params(params)
    return to_json(info.resolve(own) | resolve_selection(shared))


def per_task(method: str, params: Mapping[str, Any]) -> bool:
    """A merge that depends on the downstream task: it needs grams of the task's data, or names used experts."""
    return method_info(method).needs_grams or params.get("used_experts_only") is not None
