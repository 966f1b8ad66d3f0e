"""The registry of merge methods: name → function, parameters, required inputs and paper.

A method is a pure function ``fn(experts, base, **params) -> Merged`` where ``experts`` maps each
MA key to its experts' tensors ``{Modality: Tensor}`` and ``base`` holds the seed (MA) tensors of
the same keys, or None. Methods that need gram statistics also receive ``grams=``. Methods never
modify their inputs and do no I/O; the orchestration (key mapping, expert selection, copying the
rest) lives in :mod:`vlmerge.merging.apply`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from vlmerge.merging.errors import MergeError
from vlmerge.merging.params import Param, to_json
from vlmerge.model import Modality

ExpertTensors = Mapping[str, Mapping[Modality, torch.Tensor]]
BaseTensors = Mapping[str, torch.Tensor] | None


@dataclass(frozen=True)
class Merged:
    """A method's output: merged MA tensors and what it wants recorded (per key or global)."""

    state: dict[str, torch.Tensor]
    diagnostics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodSpec:
    name: str
    fn: Callable[..., Merged]
    params: tuple[Param, ...]
    needs_seed: bool
    needs_grams: bool
    paper: str

    @property
    def summary(self) -> str:
        return (inspect.getdoc(self.fn) or "").split("\n")[0]

    def resolve(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults overridden by ``given``, each value parsed; an unknown name is an error."""
        known = {p.name: p for p in self.params}
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise MergeError(f"method {self.name!r} has no parameter(s) {unknown}; it takes {sorted(known)}")
        return {name: p.resolve(given[name]) if name in given else p.default for name, p in known.items()}

    def describe(self) -> dict[str, Any]:
        return {"summary": self.summary, "paper": self.paper, "needs_seed": self.needs_seed,
                "needs_grams": self.needs_grams,
                "params": {p.name: {"default": to_json(p.default), "help": p.help} for p in self.params}}


METHODS: dict[str, MethodSpec] = {}


def register(name: str, *, paper: str, params: tuple[Param, ...] = (), needs_seed: bool = False,
             needs_grams: bool = False) -> Callable[[Callable[..., Merged]], Callable[..., Merged]]:
    """Decorator adding a method to :data:`METHODS`; its keyword-only arguments must be ``params``."""
    def add(fn: Callable[..., Merged]) -> Callable[..., Merged]:
        keyword = {n for n, p in inspect.signature(fn).parameters.items() if p.kind is p.KEYWORD_ONLY}
        declared = {p.name for p in params} | ({"grams"} if needs_grams else set())
        if keyword != declared:
            raise TypeError(f"method {name!r}: keyword arguments {sorted(keyword)} != declared {sorted(declared)}")
        if name in METHODS:
            raise TypeError(f"method {name!r} registered twice")
        METHODS[name] = MethodSpec(name, fn, params, needs_seed, needs_grams, paper)
        return fn
    return add


def get_method(name: str) -> MethodSpec:
    if name not in METHODS:
        raise MergeError(f"unknown merge method {name!r}; choose one of {sorted(METHODS)}")
    return METHODS[name]
