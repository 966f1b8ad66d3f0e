"""Axis ticks at round numbers (steps of 1, 2 or 5 times a power of ten)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def nice_step(span: float, target: int) -> float:
    """The smallest 1/2/5·10^k step that cuts ``span`` into at most ``target`` intervals."""
    raw = span / target
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)


def axis_range(values: Sequence[float], target: int = 5) -> tuple[float, float, list[float]]:
    """``(low, high, ticks)``: a range covering ``values`` whose ends are ticks."""
    low, high = min(values), max(values)
    if low == high:  # one value (or all equal): open a window around it
        pad = abs(low) * 0.1 or 1.0
        low, high = low - pad, high + pad
    step = nice_step(high - low, target)
    first, last = math.floor(low / step), math.ceil(high / step)
    # round() removes float noise such as 0.30000000000000004 from the labels
    ticks = [round(i * step, 12) for i in range(first, last + 1)]
    return ticks[0], ticks[-1], ticks


def tick_label(value: float) -> str:
    return f"{value:g}"
