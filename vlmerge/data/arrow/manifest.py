"""The per-dataset manifest: what was converted, from where, what was skipped, and output checksums.

Written last and atomically: its existence means every listed output is complete, which is why the
workflow declares it as the dataset's output.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from vlmerge.data.arrow.conversion import Conversion
from vlmerge.data.schema import manifest_name
from vlmerge.runtime import atomic_write_json, sha256_file


def write_manifest(run: Conversion, provenance: dict[str, Any]) -> Path:
    """Write ``<out>/<dataset>.manifest.json`` and return its path."""
    skipped_by_reason: dict[str, int] = {}
    for item in run.skipped:
        reason = item["reason"].split(" (")[0]
        skipped_by_reason[reason] = skipped_by_reason.get(reason, 0) + 1
    record = {
        "dataset": run.dataset,
        "raw": str(run.raw),
        "options": asdict(run.options),
        "splits": run.splits,
        "details": run.details,
        "skipped_count": len(run.skipped),
        "skipped_by_reason": skipped_by_reason,
        "skipped": run.skipped,
        "files": {path.name: sha256_file(path) for path in sorted(run.outputs)},
        "provenance": provenance,
    }
    path = run.out / manifest_name(run.dataset)
    atomic_write_json(path, record)
    return path
