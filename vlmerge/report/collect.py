"""Read result JSONs (``results/<task>/<method>.json``) and look up their headline numbers.

Every lookup names the file and the key path when the value is missing or not a number, so a
half-written or foreign JSON fails loudly instead of turning into an empty table cell.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmerge.report.errors import ReportError
from vlmerge.report.headline import HEADLINES, Column

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Result:
    """One evaluated method on one task."""

    path: Path
    task: str
    method: str
    data: dict[str, Any]

    def lookup(self, *keys: str) -> Any:
        node: Any = self.data
        for depth, key in enumerate(keys):
            if not isinstance(node, dict) or key not in node:
                raise ReportError(f"{self.path}: missing key {'.'.join(keys[: depth + 1])}")
            node = node[key]
        return node

    def number(self, *keys: str) -> float:
        value = self.lookup(*keys)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ReportError(f"{self.path}: {'.'.join(keys)} is {value!r}, not a finite number")
        return float(value)

    def score(self, column: Column) -> float:
        return self.number("splits", column.split, "metrics", column.metric)

    def baseline(self, column: Column) -> float:
        return self.number("splits", column.split, "baseline", column.metric)

    def merge_param(self, param: str) -> float:
        """A merge hyper-parameter of the weights this result was fine-tuned from (its lineage)."""
        return self.number("lineage", "parent", "merge", "params", param)


def read_result(path: Path) -> Result:
    """Parse and check one result JSON: a known task, a method name, and where it lies."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ReportError(f"{path}: cannot read a result JSON: {err}") from err
    if not isinstance(data, dict):
        raise ReportError(f"{path}: a result JSON is an object, got {type(data).__name__}")
    for key in ("task", "method"):
        if not isinstance(data.get(key), str):
            raise ReportError(f"{path}: missing key {key}")
    task, method = data["task"], data["method"]
    if task not in HEADLINES:
        raise ReportError(f"{path}: task is {task!r}, not one of {sorted(HEADLINES)}")
    # The workflow's layout is results/<task>/<method>.json: a file elsewhere says what it is itself.
    if path.parent.name in HEADLINES and path.parent.name != task:
        raise ReportError(f"{path}: task is {task!r} but the file lies under {path.parent.name}/")
    return Result(Path(path), task, method, data)


def read_results(paths: Iterable[Path]) -> dict[tuple[str, str], Result]:
    """Results keyed by ``(task, method)``; a second file for the same pair is an error."""
    results: dict[tuple[str, str], Result] = {}
    for path in paths:
        result = read_result(Path(path))
        key = (result.task, result.method)
        if key in results:
            raise ReportError(f"{path}: {result.task}/{result.method} was already read from {results[key].path}")
        results[key] = result
    log.info("read %d result files", len(results))
    return results
