"""Spearman's rank correlation for the distance table: :func:`scipy.stats.spearmanr`, except
where ρ says nothing about the lineages.

With one side constant, ρ is undefined (scipy returns NaN and emits a ``ConstantInputWarning``);
with fewer than three points it is undefined or trivially ±1 (any two distinct points are
monotone). This wrapper returns NaN in those cases without calling scipy (so no warning reaches
the stage's log) and logs why; the tables print NaN as an empty cell (CSV) or a dash.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from scipy.stats import spearmanr

log = logging.getLogger(__name__)
MIN_POINTS = 3


def undefined_because(x: Sequence[float], y: Sequence[float]) -> str | None:
    """Why ρ of ``x`` and ``y`` is not worth reporting, or None when it is."""
    if len(x) < MIN_POINTS:
        return f"{len(x)} point(s), fewer than {MIN_POINTS}"
    constant = [name for name, values in (("x", x), ("y", y)) if len(set(values)) == 1]
    return f"constant {' and '.join(constant)}" if constant else None


def spearman(x: Sequence[float], y: Sequence[float], what: str = "paired samples") -> float:
    """Spearman's ρ of paired samples (ties share their mean rank), NaN where undefined.

    ``what`` names the samples in the log line that explains a NaN.
    """
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} values but y has {len(y)}")
    reason = undefined_because(x, y)
    if reason is not None:
        log.info("Spearman's rho of %s left empty: %s", what, reason)
        return math.nan
    return float(spearmanr(x, y).statistic)
