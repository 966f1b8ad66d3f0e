"""Small self-contained SVG charts: line plots (sweeps) and scatter plots (distance vs score).

One ``<circle class="marker">`` per data point, axes with round ticks, axis labels, a title and a
legend. Deterministic text: identical input gives identical bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape

from vlmerge.report.ticks import axis_range, tick_label

WIDTH, HEIGHT = 600, 360
LEFT, RIGHT, TOP, BOTTOM = 64, 210, 36, 52  # margins: the legend sits in the right one
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


@dataclass(frozen=True)
class Series:
    label: str
    x: tuple[float, ...]
    y: tuple[float, ...]


class _Frame:
    """Maps data coordinates to pixels inside the plotting area."""

    def __init__(self, series: Sequence[Series]) -> None:
        self.x0, self.x1, self.xticks = axis_range([v for s in series for v in s.x])
        self.y0, self.y1, self.yticks = axis_range([v for s in series for v in s.y])

    def px(self, x: float) -> float:
        return LEFT + (x - self.x0) / (self.x1 - self.x0) * (WIDTH - LEFT - RIGHT)

    def py(self, y: float) -> float:
        return HEIGHT - BOTTOM - (y - self.y0) / (self.y1 - self.y0) * (HEIGHT - TOP - BOTTOM)


def _text(x: float, y: float, text: str, anchor: str = "middle", extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{extra}>{escape(text)}</text>'


def _axes(frame: _Frame, xlabel: str, ylabel: str) -> list[str]:
    bottom, right = HEIGHT - BOTTOM, WIDTH - RIGHT
    parts = [f'<path d="M{LEFT} {TOP}V{bottom}H{right}" fill="none" stroke="#000"/>']
    for x in frame.xticks:
        px = frame.px(x)
        parts.append(f'<path d="M{px:.1f} {bottom}v5" stroke="#000"/>')
        parts.append(_text(px, bottom + 18, tick_label(x)))
    for y in frame.yticks:
        py = frame.py(y)
        parts.append(f'<path d="M{LEFT} {py:.1f}h-5" stroke="#000"/>')
        parts.append(f'<path d="M{LEFT} {py:.1f}H{right}" stroke="#ddd"/>')
        parts.append(_text(LEFT - 8, py + 4, tick_label(y), "end"))
    parts.append(_text((LEFT + right) / 2, HEIGHT - 12, xlabel))
    parts.append(_text(16, (TOP + bottom) / 2, ylabel, extra=f' transform="rotate(-90 16 {(TOP + bottom) / 2:.1f})"'))
    return parts


def _series(frame: _Frame, series: Series, colour: str, connect: bool) -> list[str]:
    points = [(frame.px(x), frame.py(y)) for x, y in zip(series.x, series.y)]
    parts = []
    if connect and len(points) > 1:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in sorted(points))
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
    parts += [f'<circle class="marker" cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{colour}"/>' for x, y in points]
    return parts


def _legend(series: Sequence[Series]) -> list[str]:
    x = WIDTH - RIGHT + 16
    parts = []
    for i, s in enumerate(series):
        y = TOP + 8 + 18 * i
        parts.append(f'<circle cx="{x}" cy="{y}" r="4" fill="{COLOURS[i % len(COLOURS)]}"/>')
        parts.append(_text(x + 10, y + 4, s.label, "start"))
    return parts


def plot(series: Sequence[Series], title: str, xlabel: str, ylabel: str, connect: bool) -> str:
    """An SVG document: a line plot (``connect``, points joined in x order) or a scatter plot."""
    series = [s for s in series if s.x]
    if not series:
        raise ValueError(f"{title}: nothing to plot")
    frame = _Frame(series)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">',
             f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#fff"/>',
             _text((LEFT + WIDTH - RIGHT) / 2, 20, title, extra=' font-size="13"')]
    parts += _axes(frame, xlabel, ylabel)
    for i, s in enumerate(series):
        parts += _series(frame, s, COLOURS[i % len(COLOURS)], connect)
    parts += _legend(series)
    return "\n".join([*parts, "</svg>"]) + "\n"


def line_plot(series: Sequence[Series], title: str, xlabel: str, ylabel: str) -> str:
    return plot(series, title, xlabel, ylabel, connect=True)


def scatter_plot(series: Sequence[Series], title: str, xlabel: str, ylabel: str) -> str:
    return plot(series, title, xlabel, ylabel, connect=False)
