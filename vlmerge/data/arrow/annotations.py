"""Loading annotation files and reading their records with errors that name the file and record.

Annotation JSON is loaded whole (it is small next to the images, and the published files are single
JSON documents); every access to a required field goes through :func:`field` so that a malformed
record stops the run with ``<file>: <record>: missing field 'x'`` instead of a ``KeyError`` deep inside.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlmerge.data.arrow.errors import RawDataError


def require_dir(path: Path) -> Path:
    """``path`` if it is a directory, else :class:`RawDataError` naming it."""
    if not path.is_dir():
        raise RawDataError(f"missing image folder: {path}")
    return path


def require_file(path: Path) -> Path:
    """``path`` if it is a file, else :class:`RawDataError` naming it."""
    if not path.is_file():
        raise RawDataError(f"missing annotation file: {path}")
    return path


def load_json(path: Path) -> Any:
    """Parse one JSON document; a missing or invalid file is a :class:`RawDataError` naming it."""
    require_file(path)
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RawDataError(f"{path}: not valid JSON ({err})") from None


def load_json_lines(path: Path) -> list[tuple[str, Any]]:
    """Parse a JSON-lines file into ``(where, record)`` pairs; ``where`` is ``"<path>:<line>"``.

    Blank lines are ignored (the NLVR2 files end with a newline).
    """
    require_file(path)
    records = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                records.append((where, json.loads(line)))
            except json.JSONDecodeError as err:
                raise RawDataError(f"{where}: not valid JSON ({err})") from None
    return records


def field(record: Any, key: str, where: str, kind: type | tuple[type, ...] = object) -> Any:
    """``record[key]``, checked to be an instance of ``kind``; else :class:`RawDataError` naming ``where``."""
    if not isinstance(record, dict):
        raise RawDataError(f"{where}: expected an object, found {type(record).__name__}")
    if key not in record:
        raise RawDataError(f"{where}: missing field {key!r}")
    value = record[key]
    # bool is an int subclass; a JSON true where a number belongs is malformed, not 1.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not object):
        raise RawDataError(f"{where}: field {key!r} has type {type(value).__name__}")
    return value


def integer(record: Any, key: str, where: str) -> int:
    """An integer field; integral floats (``12.0``) are accepted, as some exports write them."""
    value = field(record, key, where, (int, float))
    if isinstance(value, float) and not value.is_integer():
        raise RawDataError(f"{where}: field {key!r} is not an integer ({value})")
    return int(value)


def json_list(data: Any, where: str) -> list[Any]:
    """``data`` if it is a JSON list, else :class:`RawDataError`."""
    if not isinstance(data, list):
        raise RawDataError(f"{where}: expected a list, found {type(data).__name__}")
    return data
