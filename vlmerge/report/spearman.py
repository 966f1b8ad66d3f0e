"""Spearman rank correlation, written out: Pearson correlation of average ranks (ties share a rank)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks of ``values``; a group of tied values gets the mean of the ranks it spans."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for i in order[start:end + 1]:
            ranks[i] = (start + end) / 2 + 1  # mean of the 1-based ranks start+1 .. end+1
        start = end + 1
    return ranks


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; NaN when fewer than two points or either side is constant."""
    n = len(x)
    if n != len(y):
        raise ValueError(f"x has {n} values but y has {len(y)}")
    if n < 2:
        return math.nan
    mean_x, mean_y = sum(x) / n, sum(y) / n
    dx, dy = [v - mean_x for v in x], [v - mean_y for v in y]
    sxx, syy = sum(d * d for d in dx), sum(d * d for d in dy)
    if sxx == 0 or syy == 0:
        return math.nan
    return sum(a * b for a, b in zip(dx, dy)) / math.sqrt(sxx * syy)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's ρ of paired samples (NaN when undefined: n < 2 or all ranks tied on one side)."""
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} values but y has {len(y)}")
    return pearson(average_ranks(x), average_ranks(y))
