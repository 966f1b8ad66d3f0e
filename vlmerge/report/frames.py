"""The main comparison table and the sweep tables as DataFrames (one row per method or entry).

Values are fractions as in the result JSONs; :mod:`vlmerge.report.tables` prints them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import pandas as pd

from vlmerge.report.collect import Result
from vlmerge.report.errors import ReportError
from vlmerge.report.headline import HEADLINES, Column, columns
from vlmerge.report.series import Series
from vlmerge.report.sweeps import Sweep

log = logging.getLogger(__name__)
Results = dict[tuple[str, str], Result]
MEAN, GAP, BASELINE = "mean", "gap to MA", "trivial baseline"


def tasks_of(results: Results, methods: Sequence[str]) -> list[str]:
    return sorted({task for task, method in results if method in methods})


def score_row(results: Results, method: str, cols: Sequence[Column]) -> list[float]:
    """Headline scores of ``method``; NaN (printed as a dash) where a task was not evaluated."""
    row = []
    for column in cols:
        result = results.get((column.task, method))
        if result is None:
            log.warning("no %s result for %s: its cells stay empty", column.task, method)
        row.append(result.score(column) if result else math.nan)
    return row


def baseline_row(results: Results, methods: Sequence[str], cols: Sequence[Column]) -> list[float]:
    """The trivial baseline of each column, read from the first method's JSON that has the task."""
    row = []
    for column in cols:
        first = next(results[(column.task, m)] for m in methods if (column.task, m) in results)
        row.append(first.baseline(column))
    return row


def main_frame(results: Results, methods: Sequence[str]) -> pd.DataFrame:
    """Rows ``methods`` then the trivial baseline; columns the headline metrics, their mean and
    the gap of that mean to the MA baseline (when ``ma`` is among the methods)."""
    if not methods:
        raise ReportError("no result files of the main comparison (method names without '@')")
    cols = columns(tasks_of(results, methods))
    frame = pd.DataFrame(
        [score_row(results, m, cols) for m in methods] + [baseline_row(results, methods, cols)],
        columns=[c.label for c in cols],
    )
    frame[MEAN] = frame.mean(axis=1, skipna=False)
    if "ma" in methods:
        frame[GAP] = frame[MEAN] - frame[MEAN].iloc[list(methods).index("ma")]
    frame.insert(0, "method", [*methods, BASELINE])
    return frame


def score_columns(frame: pd.DataFrame) -> list[str]:
    """The columns printed as percentages: headline metrics, their mean and the gap to MA."""
    scores = {c.label for cols in HEADLINES.values() for c in cols} | {MEAN, GAP}
    return [c for c in frame.columns if c in scores]


def sweep_frame(results: Results, sweep: Sweep) -> pd.DataFrame:
    """One row per sweep entry: its parameter value (read from the result's lineage) and scores."""
    cols = columns(tasks_of(results, sweep.names))
    rows = []
    for name in sweep.names:
        tasks = [c.task for c in cols if (c.task, name) in results]
        if not tasks:
            raise ReportError(f"sweep {sweep.name}: no result file of {name}")
        value = results[(tasks[0], name)].merge_param(sweep.param)
        rows.append([name, value, *score_row(results, name, cols)])
    return pd.DataFrame(rows, columns=["merge", sweep.param, *[c.label for c in cols]])


def sweep_series(frame: pd.DataFrame, x: str) -> list[Series]:
    """One line per score column of a sweep (or ablation) frame, in percent; NaN cells left out."""
    series = []
    for column in score_columns(frame):
        points = [(float(a), 100 * float(b)) for a, b in zip(frame[x], frame[column]) if not math.isnan(b)]
        if points:
            series.append(Series(column, tuple(p[0] for p in points), tuple(p[1] for p in points)))
    return series
