"""Hyper-parameter sweeps among the configured merges (``merge.methods``).

Entries that run the same merge method with the same parameters except one numeric parameter
form a sweep over that parameter (e.g. interpolation at ratio 0.25, 0.5, 0.75). Pure Python: the
workflow imports it to name the report's outputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Sweep:
    """Merge entries ``names`` (ordered by ``param``) of one ``method``; ``name`` names its files."""

    name: str
    method: str
    param: str
    names: tuple[str, ...]

    def arg(self) -> str:
        """The report CLI's ``--sweep`` value: ``NAME:METHOD:PARAM=entry,entry,...``."""
        return f"{self.name}:{self.method}:{self.param}={','.join(self.names)}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def find_sweeps(entries: Mapping[str, Mapping[str, Any]]) -> list[Sweep]:
    """Every sweep among ``entries`` (name → ``{"method": ..., "params": {...}}``), in a stable order.

    A parameter given as null is absent. A group needs at least two distinct values.
    """
    groups: dict[tuple[str, str, str], dict[str, float]] = {}
    for name in sorted(entries):
        spec = entries[name]
        params = {k: v for k, v in (spec.get("params") or {}).items() if v is not None}
        for param, value in params.items():
            if _is_number(value):
                rest = repr(sorted((k, v) for k, v in params.items() if k != param))
                groups.setdefault((spec["method"], param, rest), {})[name] = float(value)
    sweeps: list[Sweep] = []
    for (method, param, _), values in sorted(groups.items()):
        if len(set(values.values())) < 2:
            continue
        names = tuple(sorted(values, key=lambda n: (values[n], n)))
        sweeps.append(Sweep(f"{method}_{param}", method, param, names))
    return _unique_names(sweeps)


def _unique_names(sweeps: list[Sweep]) -> list[Sweep]:
    """Two sweeps of one parameter (other parameters fixed differently) get numbered names."""
    counts: dict[str, int] = {}
    for sweep in sweeps:
        counts[sweep.name] = counts.get(sweep.name, 0) + 1
    seen: dict[str, int] = {}
    unique = []
    for sweep in sweeps:
        if counts[sweep.name] == 1:
            unique.append(sweep)
            continue
        seen[sweep.name] = seen.get(sweep.name, 0) + 1
        unique.append(Sweep(f"{sweep.name}_{seen[sweep.name]}", sweep.method, sweep.param, sweep.names))
    return unique
