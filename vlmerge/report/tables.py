"""One table, three files: ``<stem>.csv`` (full precision), ``<stem>.md`` and ``<stem>.tex``.

Score columns (fractions in the result JSONs) are printed as percentages with two decimals in the
Markdown and LaTeX files, as the paper prints them; the CSV keeps the fractions. Missing cells are
empty in the CSV and a dash elsewhere. Written by hand so that no optional pandas dependency
(tabulate, jinja2) is needed and the bytes are stable.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection
from pathlib import Path

import pandas as pd
from pandas.api.types import is_numeric_dtype

from vlmerge.runtime import atomic_write_bytes

log = logging.getLogger(__name__)
_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def cell(value: object, percent: bool, missing: str) -> str:
    """How one value prints: a score as a percentage, another number compactly, text as is."""
    if isinstance(value, float) and math.isnan(value):
        return missing
    if isinstance(value, float):
        return f"{100 * value:.2f}" if percent else f"{value:.4g}"
    return str(value)


def _rows(frame: pd.DataFrame, percent: Collection[str], missing: str,
          escape: Callable[[str], str]) -> list[list[str]]:
    header = [escape(str(c)) for c in frame.columns]
    body = [[escape(cell(value, column in percent, missing)) for column, value in zip(frame.columns, row)]
            for row in frame.itertuples(index=False)]
    return [header, *body]


def to_markdown(frame: pd.DataFrame, percent: Collection[str]) -> str:
    header, *body = _rows(frame, percent, "–", lambda s: s.replace("|", r"\|"))
    align = ["---:" if is_numeric_dtype(frame[c]) else "---" for c in frame.columns]
    lines = [header, align, *body]
    return "".join("| " + " | ".join(line) + " |\n" for line in lines)


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(frame: pd.DataFrame, percent: Collection[str]) -> str:
    """A booktabs ``tabular`` (include it in a ``table`` float of your own)."""
    header, *body = _rows(frame, percent, "--", latex_escape)
    spec = "".join("r" if is_numeric_dtype(frame[c]) else "l" for c in frame.columns)
    lines = [f"\\begin{{tabular}}{{{spec}}}", "\\toprule", " & ".join(header) + r" \\", "\\midrule"]
    lines += [" & ".join(row) + r" \\" for row in body]
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


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
