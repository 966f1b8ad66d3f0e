"""Ablation tables: sharing layout, seed length, and weight distance against downstream scores.

Rows come from the results of methods named ``<name>@<variant>`` (:mod:`vlmerge.catalog.lineages`)
next to ``<name>`` itself, the main lineage.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter
from typing import Any

import pandas as pd

from vlmerge.catalog.lineages import SHARINGS, Defaults, Lineage, resolve, split_method
from vlmerge.report.distances import METRICS, PAIR
from vlmerge.report.frames import Results, score_row, tasks_of
from vlmerge.report.headline import columns
from vlmerge.report.series import Series
from vlmerge.report.spearman import spearman


def lineages(results: Results, defaults: Defaults) -> dict[str, list[Lineage]]:
    """Per ablated method (base name): the main lineage then its variants, in name order."""
    variants: dict[str, set[str]] = {}
    for _, method in results:
        base, variant = split_method(method)
        if variant is not None:
            variants.setdefault(base, set()).add(variant)
    return {
        base: [resolve(None, defaults), *(resolve(v, defaults) for v in sorted(found))]
        for base, found in sorted(variants.items())
    }


def _name(base: str, lineage: Lineage) -> str:
    return base if lineage.variant is None else f"{base}@{lineage.variant}"


def _frame(
    results: Results,
    defaults: Defaults,
    label: str,
    keep: Callable[[Lineage], bool],
    value: Callable[[Lineage], Any],
    order: Callable[[Lineage], Any],
) -> pd.DataFrame | None:
    rows, names = [], []
    for base, found in lineages(results, defaults).items():
        chosen = [lin for lin in found if keep(lin)]
        if any(lin.variant for lin in chosen):
            rows += [(base, value(lin), _name(base, lin)) for lin in sorted(chosen, key=order)]
            names += [_name(base, lin) for lin in chosen if lin.variant]
    if not rows:
        return None
    # The tasks the ablation ran on (the main lineage may have more).
    cols = columns(tasks_of(results, names))
    return pd.DataFrame(
        [[base, v, *score_row(results, name, cols)] for base, v, name in rows],
        columns=["method", label, *[c.label for c in cols]],
    )


def sharing_frame(results: Results, defaults: Defaults) -> pd.DataFrame | None:
    """Rows: each ablated method under the configured sharing layout and each ablation layout."""
    return _frame(
        results,
        defaults,
        "sharing",
        lambda lin: lin.seed_steps == defaults.seed_steps,
        lambda lin: lin.sharing,
        lambda lin: SHARINGS.index(lin.sharing),
    )


def seed_frame(results: Results, defaults: Defaults) -> pd.DataFrame | None:
    """Rows: each ablated method after each seed pre-training length."""
    steps = attrgetter("seed_steps")
    return _frame(results, defaults, "seed steps", lambda lin: lin.sharing == defaults.sharing, steps, steps)


def distance_points(
    results: Results, distances: dict[str | None, dict[str, float]], defaults: Defaults, metric: str
) -> list[Series]:
    """Per ablated method and headline column: (distance, score in percent) of every lineage with both."""
    series = []
    for base, found in lineages(results, defaults).items():
        for column in columns(tasks_of(results, [_name(base, lin) for lin in found if lin.variant])):
            points = [
                (distances[lin.variant][metric], 100 * results[(column.task, _name(base, lin))].score(column))
                for lin in found
                if lin.variant in distances and (column.task, _name(base, lin)) in results
            ]
            if points:
                series.append(Series(f"{base}: {column.label}", *map(tuple, zip(*points))))
    return series


def distance_frame(
    results: Results, distances: dict[str | None, dict[str, float]], defaults: Defaults
) -> pd.DataFrame | None:
    """Spearman's ρ between each distance metric and each (method, headline) score across lineages
    (NaN where undefined: :mod:`vlmerge.report.spearman`)."""
    rows = []
    for metric in METRICS:
        for series in distance_points(results, distances, defaults, metric):
            distance = f"{PAIR} {metric}"
            rho = spearman(series.x, series.y, what=f"{distance} and {series.label}")
            rows.append([distance, series.label, len(series.x), rho])
    if not rows:
        return None
    return pd.DataFrame(rows, columns=["distance", "score", "n", "spearman"])
