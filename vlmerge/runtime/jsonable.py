"""Resolved configs as JSON: dataclass fields with paths and tuples turned into JSON values."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def jsonable(value: Any) -> Any:
    """``value`` with dicts/lists/tuples walked, paths as strings (for ``dataclasses.asdict`` output)."""
    if hasattr(value, "model_dump"):  # a pydantic settings model
        return jsonable(value.model_dump(mode="json"))
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return str(value) if isinstance(value, Path) else value
