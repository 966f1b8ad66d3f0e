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

from vlmerge.catalog.methods import METHOD_INFO, MethodInfo
from vlmerge.errors import ConfigError
from vlmerge.merging.errors import MergeError
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
    """A catalogued method (:data:`vlmerge.catalog.methods.METHOD_INFO`) with its function."""

    info: MethodInfo
    fn: Callable[..., Merged]

    name = property(lambda self: self.info.name)
    params = property(lambda self: self.info.params)
    needs_seed = property(lambda self: self.info.needs_seed)
    needs_grams = property(lambda self: self.info.needs_grams)
    paper = property(lambda self: self.info.paper)

    @property
    def summary(self) -> str:
        return (inspect.getdoc(self.fn) or "").split("\n")[0]

    def resolve(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults overridden by ``given``, each value parsed; an unknown name is an error."""
        try:
            return self.info.resolve(given)
        except ConfigError as err:
            raise MergeError(str(err)) from None

    def describe(self) -> dict[str, Any]:
        return {"summary": self.summary, **self.info.describe()}


METHODS: dict[str, MethodSpec] = {}


def register(name: str) -> Callable[[Callable[..., Merged]], Callable[..., Merged]]:
    """Decorator attaching a function to the catalogued method ``name``; its keyword-only arguments must
    be the catalogued parameters (plus ``grams`` for methods that need them)."""

    def add(fn: Callable[..., Merged]) -> Callable[..., Merged]:
        info = METHOD_INFO[name]
        keyword = {n for n, p in inspect.signature(fn).parameters.items() if p.kind is p.KEYWORD_ONLY}
        declared = {p.name for p in info.params} | ({"grams"} if info.needs_grams else set())
        if keyword != declared:
            raise TypeError(f"method {name!r}: keyword arguments {sorted(keyword)} != declared {sorted(declared)}")
        if name in METHODS:
            raise TypeError(f"method {name!r} registered twice")
        METHODS[name] = MethodSpec(info, fn)
        return fn

    return add


def get_method(name: str) -> MethodSpec:
    if name not in METHODS:
        raise MergeError(f"unknown merge method {name!r}; choose one of {sorted(METHODS)}")
    return METHODS[name]
