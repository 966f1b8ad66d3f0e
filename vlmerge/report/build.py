"""Everything the report stage writes, from a validated :class:`ReportConfig`."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from vlmerge.catalog.lineages import split_method
from vlmerge.report import outputs
from vlmerge.report.ablations import distance_frame, distance_points, lineages, seed_frame, sharing_frame
from vlmerge.report.collect import read_results
from vlmerge.report.config import ReportConfig
from vlmerge.report.distances import METRICS, PAIR, read_distances
from vlmerge.report.errors import ReportError
from vlmerge.report.frames import Results, main_frame, score_columns, sweep_frame, sweep_series
from vlmerge.report.plots import line_plot, scatter_plot, write_plot
from vlmerge.report.series import Series
from vlmerge.report.tables import write_tables
from vlmerge.report.zeroshot import write_zeroshot

log = logging.getLogger(__name__)


def _table(frame: pd.DataFrame, config: ReportConfig, stem: str) -> list[Path]:
    return write_tables(frame, config.tables / stem, score_columns(frame))


def _seed_series(frame: pd.DataFrame) -> list[Series]:
    """One line per ablated method and headline column over seed lengths."""
    series = []
    for method in dict.fromkeys(frame["method"]):
        rows = frame[frame["method"] == method]
        series += [Series(f"{method}: {s.label}", s.x, s.y) for s in sweep_series(rows, "seed steps")]
    return series


def _ablations(results: Results, config: ReportConfig) -> list[Path]:
    written: list[Path] = []
    sharing = sharing_frame(results, config.defaults)
    if sharing is not None:
        written += _table(sharing, config, outputs.SHARING)
    seed = seed_frame(results, config.defaults)
    if seed is not None:
        written += _table(seed, config, outputs.SEED)
        figure = line_plot(_seed_series(seed), "Seed pre-training length", "seed steps", "score (%)")
        written += write_plot(figure, config.plots / outputs.SEED)
    distances = read_distances(config.distances, config.defaults)
    correlations = distance_frame(results, distances, config.defaults)
    if correlations is None:
        raise ReportError(
            f"ablation results of {sorted(lineages(results, config.defaults))} but no distance "
            f"file of their MS runs among {[str(p) for p in config.distances]}"
        )
    written += _table(correlations, config, outputs.DISTANCE)
    for metric in METRICS:
        points = distance_points(results, distances, config.defaults, metric)
        figure = scatter_plot(points, f"Expert distance ({PAIR} {metric}) vs score", f"{PAIR} {metric}", "score (%)")
        written += write_plot(figure, config.plots / outputs.distance_plot(metric))
    return written


def build(config: ReportConfig) -> list[Path]:
    """Read every input, then write the tables and plots; returns the written paths."""
    results = read_results(config.results)
    main_methods = list(dict.fromkeys(m for _, m in results if split_method(m)[1] is None))
    written = _table(main_frame(results, main_methods), config, outputs.MAIN)
    if config.zeroshot:
        written += write_zeroshot(config)
    for sweep in config.sweeps:
        frame = sweep_frame(results, sweep)
        written += _table(frame, config, outputs.sweep_stem(sweep))
        title = f"{sweep.method}: {sweep.param} sweep"
        figure = line_plot(sweep_series(frame, sweep.param), title, sweep.param, "score (%)")
        written += write_plot(figure, config.plots / outputs.sweep_stem(sweep))
    if lineages(results, config.defaults):
        written += _ablations(results, config)
    return written
