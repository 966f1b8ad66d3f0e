"""The zero-shot retrieval table and every sweep on the zero-shot metric, from ``results/zeroshot/<method>.json``.

``python -m vlmerge.zeroshot`` scores seed, MA, MS and each merge on COCO and Flickr30k test before any
fine-tuning. The table has one row per method (in the order the files are given) and the chance row;
its columns are image→text (TR) and text→image (IR) Recall@1/5/10 of each dataset and their mean. Each
sweep gets a line plot of the zero-shot mean recall per dataset (and over both) against its parameter,
read from the lineage of the checkpoint each number came from.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from vlmerge.catalog.names import RETRIEVAL_TASKS
from vlmerge.report import outputs
from vlmerge.report.collect import Result
from vlmerge.report.config import ReportConfig
from vlmerge.report.errors import ReportError
from vlmerge.report.frames import BASELINE, MEAN
from vlmerge.report.plots import line_plot, write_plot
from vlmerge.report.series import Series
from vlmerge.report.sweeps import Sweep
from vlmerge.report.tables import write_tables

log = logging.getLogger(__name__)
DATASET_LABELS = {"coco": "COCO", "f30k": "F30K"}
# (metric key of the JSON, column suffix): image→text first, as the paper's retrieval tables print them.
RECALLS = tuple((f"{side}_r{k}", f"{side.upper()}@{k}") for side in ("tr", "ir") for k in (1, 5, 10))
ZeroshotResults = dict[str, Result]


def column_label(dataset: str, suffix: str) -> str:
    return f"{DATASET_LABELS[dataset]} {suffix}"


def read_zeroshot_result(path: Path) -> Result:
    """One zero-shot JSON, checked to hold a method name and at least one known retrieval dataset."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ReportError(f"{path}: cannot read a zero-shot result JSON: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("method"), str):
        raise ReportError(f"{path}: missing key method")
    datasets = data.get("datasets")
    if not isinstance(datasets, dict) or not datasets:
        raise ReportError(f"{path}: missing key datasets")
    unknown = sorted(set(datasets) - set(RETRIEVAL_TASKS))
    if unknown:
        raise ReportError(f"{path}: datasets {unknown} are not among {list(RETRIEVAL_TASKS)}")
    return Result(Path(path), outputs.ZEROSHOT, data["method"], data)


def read_zeroshot(paths: Iterable[Path]) -> ZeroshotResults:
    """Zero-shot results keyed by method, in the order given; a second file of one method is an error."""
    results: ZeroshotResults = {}
    for path in paths:
        result = read_zeroshot_result(Path(path))
        if result.method in results:
            raise ReportError(f"{path}: zero-shot {result.method} was already read from {results[result.method].path}")
        results[result.method] = result
    log.info("read %d zero-shot result files", len(results))
    return results


def datasets_of(results: ZeroshotResults) -> list[str]:
    """The retrieval datasets any result holds, in the paper's order."""
    held = {d for r in results.values() for d in r.data["datasets"]}
    return [d for d in RETRIEVAL_TASKS if d in held]


def recall_columns(datasets: Sequence[str]) -> list[tuple[str, str, str]]:
    """(dataset, metric key, column label) of every recall column."""
    return [(d, key, column_label(d, suffix)) for d in datasets for key, suffix in RECALLS]


def _row(result: Result | None, columns: Sequence[tuple[str, str, str]], part: str) -> list[float]:
    row = []
    for dataset, key, _ in columns:
        if result is None or dataset not in result.data["datasets"]:
            row.append(math.nan)
        else:
            row.append(result.number("datasets", dataset, part, key))
    return row


def zeroshot_frame(results: ZeroshotResults) -> pd.DataFrame:
    """Rows: each method, then chance; columns: TR/IR Recall@1/5/10 per dataset and their mean (NaN, shown
    as a dash, where a method lacks a dataset; its mean is then NaN too)."""
    if not results:
        raise ReportError("no zero-shot result files")
    columns = recall_columns(datasets_of(results))
    rows = []
    for method, result in results.items():
        missing = [d for d in datasets_of(results) if d not in result.data["datasets"]]
        if missing:
            log.warning("zero-shot %s has no %s result: its cells stay empty", method, ", ".join(missing))
        rows.append(_row(result, columns, "metrics"))
    chance = []
    for dataset, key, _ in columns:
        first = next(r for r in results.values() if dataset in r.data["datasets"])
        chance.append(first.number("datasets", dataset, "baseline", key))
    frame = pd.DataFrame([*rows, chance], columns=[label for _, _, label in columns])
    frame[MEAN] = frame.mean(axis=1, skipna=False)
    frame.insert(0, "method", [*results, BASELINE])
    return frame


def percent_columns(frame: pd.DataFrame) -> list[str]:
    """The columns printed as percentages: every recall and the mean."""
    return [c for c in frame.columns if c != "method"]


def mean_recall(result: Result, dataset: str) -> float:
    """The mean of a dataset's six recalls (the table's columns)."""
    return sum(result.number("datasets", dataset, "metrics", key) for key, _ in RECALLS) / len(RECALLS)


def sweep_points(results: ZeroshotResults, sweep: Sweep) -> list[Series]:
    """One line per dataset (its mean recall, in percent) and one over the datasets, against the sweep's
    parameter, read from the lineage of the first dataset's checkpoint."""
    datasets = datasets_of(results)
    xs: list[float] = []
    per_dataset: dict[str, list[float]] = {d: [] for d in datasets}
    for name in sweep.names:
        result = results.get(name)
        if result is None:
            raise ReportError(f"sweep {sweep.name}: no zero-shot result of {name}")
        first = next(iter(result.data["datasets"]))
        xs.append(result.number("datasets", first, "lineage", "merge", "params", sweep.param))
        for dataset in datasets:
            have = dataset in result.data["datasets"]
            per_dataset[dataset].append(100 * mean_recall(result, dataset) if have else math.nan)
    series = [Series(f"{DATASET_LABELS[d]} mean recall", *_points(xs, per_dataset[d])) for d in datasets]
    if len(datasets) > 1:
        means = [sum(v) / len(v) for v in zip(*per_dataset.values())]
        series.append(Series(MEAN, *_points(xs, means)))
    return series


def _points(xs: Sequence[float], ys: Sequence[float]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The points whose y is a number (a dataset a method lacks is left out of its line)."""
    kept = [(x, y) for x, y in zip(xs, ys) if not math.isnan(y)]
    return tuple(x for x, _ in kept), tuple(y for _, y in kept)


def write_zeroshot(config: ReportConfig) -> list[Path]:
    """``zeroshot.{csv,md,tex}`` and, per sweep, ``sweep_<name>_zeroshot.{svg,png}``; returns the paths."""
    results = read_zeroshot(config.zeroshot)
    frame = zeroshot_frame(results)
    written = write_tables(frame, config.tables / outputs.ZEROSHOT, percent_columns(frame))
    for sweep in config.sweeps:
        title = f"{sweep.method}: {sweep.param} sweep, zero-shot retrieval"
        figure = line_plot(sweep_points(results, sweep), title, sweep.param, "zero-shot mean recall (%)")
        written += write_plot(figure, config.plots / outputs.sweep_zeroshot_stem(sweep))
    return written
