"""Typed merge parameters: each one parses a CLI string or a Python value once, at the edge.

``python -m vlmerge.merge --param ratio=0.3`` and ``merge("interpolation", ms, ratio=0.3)`` go through
the same :meth:`Param.resolve`, so the methods only ever see validated, typed values.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from vlmerge.catalog.names import Modality
from vlmerge.errors import ConfigError

Parser = Callable[[Any], Any]


@dataclass(frozen=True)
class Param:
    """One named parameter: its parser (text or value → typed value, ValueError if invalid), default, help."""

    name: str
    parse: Parser
    default: Any
    help: str

    def resolve(self, value: Any) -> Any:
        try:
            return self.parse(value)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"parameter {self.name}={value!r}: {err}") from None


def real(low: float | None = None, high: float | None = None, *, below_high: bool = False) -> Parser:
    """A float in [low, high] (or [low, high) with ``below_high``)."""

    def parse(value: Any) -> float:
        x = float(value)
        if x != x or (low is not None and x < low) or (high is not None and (x > high or (below_high and x == high))):
            raise ValueError(f"must lie in [{low}, {high}{')' if below_high else ']'}")
        return x

    return parse


def integer(low: int | None = None) -> Parser:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError("not an integer")
        x = int(value)
        if low is not None and x < low:
            raise ValueError(f"must be at least {low}")
        return x

    return parse


def choice(*options: str) -> Parser:
    def parse(value: Any) -> str:
        if value not in options:
            raise ValueError(f"choose one of {list(options)}")
        return str(value)

    return parse


def flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ValueError("expected true or false")


def _items(value: Any) -> list[Any]:
    """``"a,b"`` or an iterable → list of items (strings stripped)."""
    if isinstance(value, str):
        return [s.strip() for s in value.split(",") if s.strip()]
    return list(value)


def optional(parse: Parser) -> Parser:
    """``None``, ``""`` or ``"none"`` → None; anything else through ``parse``."""

    def wrapped(value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
            return None
        return parse(value)

    return wrapped


def modalities(value: Any) -> tuple[Modality, ...]:
    """``"v,l"`` or Modality values → a non-empty tuple in enum order (v, l, vl)."""
    try:
        chosen = {item if isinstance(item, Modality) else Modality(item) for item in _items(value)}
    except ValueError:
        raise ValueError(f"experts are among {[m.value for m in Modality]}") from None
    if not chosen:
        raise ValueError("no expert named")
    return tuple(m for m in Modality if m in chosen)


def modality(value: Any) -> Modality:
    found = modalities(value)
    if len(found) != 1:
        raise ValueError("name exactly one expert")
    return found[0]


def layer_set(value: Any) -> tuple[int, ...]:
    """``"0,2,5-7"`` or ints → sorted distinct layer indices."""
    layers: set[int] = set()
    for item in _items(value):
        text = str(item)
        low, _, high = text.partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise ValueError(f"{text!r} is not a layer index or range 'a-b'")
        layers.update(range(int(low), int(high or low) + 1))
    if not layers:
        raise ValueError("no layer named")
    return tuple(sorted(layers))


def names(*allowed: str) -> Parser:
    """A comma list of some of ``allowed`` → sorted distinct tuple."""

    def parse(value: Any) -> tuple[str, ...]:
        chosen = set(_items(value))
        if not chosen or not chosen <= set(allowed):
            raise ValueError(f"choose among {list(allowed)}")
        return tuple(sorted(chosen))

    return parse


def to_json(value: Any) -> Any:
    """A resolved value as JSON (enums by value, tuples as lists) for sidecars and ``--list``."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, Iterable) and not isinstance(value, str):
        return [to_json(v) for v in value]
    return value
