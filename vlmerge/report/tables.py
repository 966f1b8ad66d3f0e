"""One table, three files: ``<stem>.csv`` (full precision), ``<stem>.md`` and ``<stem>.tex``.

Score columns (fractions in the result JSONs) are printed as percentages with two decimals in the
Markdown and LaTeX files, as the paper prints them; the CSV keeps the fractions. Missing cells are
empty in the CSV and a dash elsewhere. pandas writes all three: Markdown through tabulate
(``DataFrame.to_markdown``), LaTeX through its Styler (which needs jinja2); both print the same
cell strings, made by :func:`formatters`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import pandas as pd
from pandas.api.types import is_float_dtype, is_numeric_dtype

from vlmerge.runtime import atomic_write_bytes

log = logging.getLogger(__name__)
Formatter = Callable[[Any], str]


def _percent(value: float) -> str:
    return f"{100 * value:.2f}"


def _compact(value: float) -> str:
    return f"{value:.4g}"


def formatters(frame: pd.DataFrame, percent: Collection[str]) -> dict[str, Formatter]:
    """How each column's (non-missing) cells print: scores as percentages, other floats compactly,
    anything else (integers, text) as it is."""
    return {
        column: _percent if column in percent else _compact if is_float_dtype(frame[column]) else str
        for column in frame.columns
    }


def right_aligned(frame: pd.DataFrame) -> list[bool]:
    """Numbers are right-aligned (so that their decimal points line up), text left."""
    return [is_numeric_dtype(frame[column]) for column in frame.columns]


def _markdown_escape(text: str) -> str:
    return text.replace("|", r"\|")  # a bare pipe would end the cell


def _markdown_cells(frame: pd.DataFrame, percent: Collection[str]) -> pd.DataFrame:
    """``frame`` as the strings the Markdown table shows, header included."""
    fmt = formatters(frame, percent)
    return pd.DataFrame(
        {
            _markdown_escape(str(column)): [
                _markdown_escape("–" if pd.isna(v) else fmt[column](v)) for v in frame[column]
            ]
            for column in frame.columns
        }
    )


def to_markdown(frame: pd.DataFrame, percent: Collection[str]) -> str:
    """A pipe table; the cells are formatted here, so tabulate's own number parsing is off."""
    align = ["right" if right else "left" for right in right_aligned(frame)]
    return (
        _markdown_cells(frame, percent).to_markdown(index=False, tablefmt="pipe", colalign=align, disable_numparse=True)
        + "\n"
    )


def to_latex(frame: pd.DataFrame, percent: Collection[str]) -> str:
    """A booktabs ``tabular`` (include it in a ``table`` float of your own)."""
    spec = "".join("r" if right else "l" for right in right_aligned(frame))
    styler = (
        frame.style.hide(axis="index")
        .format(formatters(frame, percent), na_rep="--", escape="latex")
        .format_index(escape="latex", axis=1)
    )
    return styler.to_latex(column_format=spec, hrules=True)


def to_csv(frame: pd.DataFrame) -> str:
    return frame.to_csv(index=False, float_format="%.10g", lineterminator="\n")


def write_tables(frame: pd.DataFrame, stem: Path, percent: Collection[str]) -> list[Path]:
    """Write ``frame`` (its index is not written) as ``stem``.csv/.md/.tex; returns the three paths."""
    texts = {".csv": to_csv(frame), ".md": to_markdown(frame, percent), ".tex": to_latex(frame, percent)}
    paths = []
    for suffix, text in texts.items():
        path = stem.parent / f"{stem.name}{suffix}"
        atomic_write_bytes(path, text.encode("utf-8"))
        paths.append(path)
    log.info("wrote %s.{csv,md,tex} (%d rows)", stem, len(frame))
    return paths
