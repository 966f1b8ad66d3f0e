"""Line plots (sweeps, seed length) and scatter plots (distance against score) with matplotlib.

The object-oriented API (:class:`matplotlib.figure.Figure`, no pyplot) needs no GUI backend and
keeps no global registry of open figures. Every plot is written as SVG (for the HTML report) and
PNG (to view or paste anywhere). Identical input gives identical bytes, so a rerun leaves the files
as they were: the figure is drawn in matplotlib's default style whatever the user's matplotlibrc
says, SVG element ids derive from a fixed salt instead of random UUIDs, and neither file records a
date or a matplotlib version.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.style import context as style_context

from vlmerge.report.outputs import PLOT_SUFFIXES
from vlmerge.report.series import Series
from vlmerge.runtime import atomic_write_bytes

log = logging.getLogger(__name__)
# text.parse_math off: a "$" in a method name is text, not the start of a formula.
STYLE: list[str | dict[str, Any]] = ["default", {"svg.hashsalt": "vlmerge.report", "text.parse_math": False}]
SIZE, DPI = (7.5, 4.5), 100  # inches; the PNG is 750 x 450 pixels
METADATA = {".svg": {"Date": None}, ".png": {"Software": None}}


def series_gid(index: int) -> str:
    """The SVG group id of the ``index``-th series: its line and one ``<use>`` per marker."""
    return f"series{index}"


def plot(series: Sequence[Series], title: str, xlabel: str, ylabel: str, connect: bool) -> Figure:
    """A line plot (``connect``: each series' points joined in x order) or a scatter plot.

    Series without points are left out (nor do they get a legend entry); with none left there is
    no plot to make, which is a caller's error.
    """
    series = [s for s in series if s.x]
    if not series:
        raise ValueError(f"{title}: nothing to plot")
    with style_context(STYLE):
        figure = Figure(figsize=SIZE, dpi=DPI, layout="constrained")
        axes = figure.add_subplot()
        for i, s in enumerate(series):
            if connect:
                x, y = zip(*sorted(zip(s.x, s.y)))
                axes.plot(x, y, marker="o", markersize=5, label=s.label, gid=series_gid(i))
            else:
                axes.scatter(s.x, s.y, s=25, label=s.label, gid=series_gid(i))
        axes.set(title=title, xlabel=xlabel, ylabel=ylabel)
        axes.grid(axis="y", color="#dddddd")
        figure.legend(loc="outside right upper")  # long labels must not hide points
    return figure


def line_plot(series: Sequence[Series], title: str, xlabel: str, ylabel: str) -> Figure:
    return plot(series, title, xlabel, ylabel, connect=True)


def scatter_plot(series: Sequence[Series], title: str, xlabel: str, ylabel: str) -> Figure:
    return plot(series, title, xlabel, ylabel, connect=False)


def write_plot(figure: Figure, stem: Path) -> list[Path]:
    """Write ``figure`` as ``stem``.svg and ``stem``.png (atomically); returns the paths."""
    paths = []
    with style_context(STYLE):  # savefig reads the svg.* settings when it writes
        for suffix in PLOT_SUFFIXES:
            buffer = io.BytesIO()
            figure.savefig(buffer, format=suffix.removeprefix("."), metadata=METADATA[suffix])
            path = stem.parent / f"{stem.name}{suffix}"
            atomic_write_bytes(path, buffer.getvalue())
            paths.append(path)
    log.info("wrote %s", ", ".join(map(str, paths)))
    return paths
