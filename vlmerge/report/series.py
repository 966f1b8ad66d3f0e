"""The points of one plotted line or scatter group.

Kept apart from :mod:`vlmerge.report.plots` so that the frame builders can make series without
importing matplotlib.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Series:
    """``label`` in the legend; points ``(x[i], y[i])`` in data units."""

    label: str
    x: tuple[float, ...]
    y: tuple[float, ...]
