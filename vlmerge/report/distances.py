"""Read the weight-distance files (``results/distance/<ms run>.json``, :mod:`vlmerge.distance`).

The report correlates the overall distance between the vision and language experts (the one expert
pair every sharing layout has) with downstream scores across lineages.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from vlmerge.catalog.lineages import Defaults, variant_of_ms_run
from vlmerge.report.errors import ReportError

METRICS = ("l2", "cosine", "sign", "soft_sign", "truncated_sign")
PAIR = "v-l"


def read_distance(path: Path) -> dict[str, float]:
    """The overall ``v-l`` distance metrics of one MS checkpoint."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ReportError(f"{path}: cannot read a distance JSON: {err}") from err
    node = data
    for key in ("overall", "pairs", PAIR):
        if not isinstance(node, dict) or key not in node:
            raise ReportError(f"{path}: missing key overall.pairs.{PAIR} (at {key})")
        node = node[key]
    values = {}
    for metric in METRICS:
        value = node.get(metric)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ReportError(f"{path}: overall.pairs.{PAIR}.{metric} is {value!r}, not a number")
        values[metric] = float(value)
    return values


def read_distances(paths: Iterable[Path], defaults: Defaults) -> dict[str | None, dict[str, float]]:
    """Distances keyed by lineage variant (None: the main lineage), from files named after MS runs."""
    distances: dict[str | None, dict[str, float]] = {}
    for path in paths:
        try:
            variant = variant_of_ms_run(Path(path).stem, defaults)
        except ValueError as err:
            raise ReportError(f"{path}: {err}") from err
        distances[variant] = read_distance(Path(path))
    return distances
