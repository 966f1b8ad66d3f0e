"""Memory-mapped ViLT Arrow tables: several files read as one table, columns chosen by name.

Selecting columns by name and casting them to the types of ``vlmerge.data.schema`` makes files
written by ViLT (through pandas, with pandas metadata and possibly other column orders) and ours
interchangeable, ViLT's VQA test and test-dev tables included: pandas types their always-empty answer
columns ``list<null>``, and a null-typed column casts to any declared type. Columns whose type already
matches stay zero-copy views of the memory map.

Integrity: before a table is used, its sha256 is compared with the one its dataset's manifest
(``<dataset>.manifest.json`` beside it, written by ``python -m vlmerge.prepare``) lists, once per
process and file version (cached by resolved path, inode, size and mtime). Hashing streams the file
in blocks (about 0.6 GB/s on one core). A table no manifest lists (folders written by ViLT's scripts)
is read unchecked. ``VLMERGE_SKIP_SHA256=1`` (or ``verify=False``) skips the check for very large corpora;
structural validation of the chosen columns always runs. Every pyarrow error while opening, reading
or validating a table becomes a :class:`ReaderError` naming the file.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, UnidentifiedImageError

from vlmerge.data.ipc import ReaderError, open_ipc
from vlmerge.errors import ConfigError
from vlmerge.runtime import sha256_file
from vlmerge.runtime.experiment import check_experiment

log = logging.getLogger(__name__)

SKIP_SHA256_ENV = "VLMERGE_SKIP_SHA256"
MANIFEST_GLOB = "*.manifest.json"

# (resolved path, inode, size, mtime_ns) → sha256 of that file version, computed at most once per process.
_DIGESTS: dict[tuple[str, int, int, int], str] = {}
# manifest path → ((size, mtime_ns), {table name: sha256}).
_MANIFESTS: dict[Path, tuple[tuple[int, int], dict[str, str], dict[str, Any]]] = {}


def skip_sha256() -> bool:
    """Whether ``VLMERGE_SKIP_SHA256`` asks to skip the manifest check (1/true/yes/on; 0/false/no/off/unset)."""
    value = os.environ.get(SKIP_SHA256_ENV, "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise ConfigError(f"{SKIP_SHA256_ENV}={value!r}: expected 1 or 0")


def _manifest_files(manifest: Path) -> dict[str, str]:
    """``{table name: sha256}`` of one manifest, re-read only when the file changes."""
    return _manifest(manifest)[0]


def _manifest(manifest: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """``({table name: sha256}, record)`` of one manifest, re-read only when the file changes."""
    try:
        st = manifest.stat()
        stamp = (st.st_size, st.st_mtime_ns)
        cached = _MANIFESTS.get(manifest)
        if cached is not None and cached[0] == stamp:
            return cached[1], cached[2]
        record = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ReaderError(f"{manifest}: unreadable manifest ({err})") from err
    files = record.get("files") if isinstance(record, dict) else None
    if not (isinstance(files, dict) and all(isinstance(v, str) for v in files.values())):
        raise ReaderError(f"{manifest}: no 'files' mapping of table name to sha256")
    _MANIFESTS[manifest] = (stamp, files, record)
    return files, record


def manifest_entry(path: Path) -> tuple[Path, str] | None:
    """The manifest beside ``path`` that lists it and the sha256 it records, or None."""
    for manifest in sorted(Path(path).parent.glob(MANIFEST_GLOB)):
        digest = _manifest_files(manifest).get(Path(path).name)
        if digest is not None:
            return manifest, digest
    return None


def file_sha256(path: Path) -> str:
    """sha256 of ``path``, streamed; cached per process by resolved path, inode, size and mtime."""
    resolved = Path(path).resolve()
    st = resolved.stat()
    key = (str(resolved), st.st_ino, st.st_size, st.st_mtime_ns)
    digest = _DIGESTS.get(key)
    if digest is None:
        digest = _DIGESTS[key] = sha256_file(resolved)
    return digest


def verify_table(path: Path, verify: bool | None = None) -> bool:
    """Check ``path`` against the sha256 its dataset's manifest lists; returns whether a check was done.

    ``verify=None`` follows ``VLMERGE_SKIP_SHA256``; a table no manifest lists is not checked. The
    manifest's experiment is compared with the running one's whether or not the digest is checked.

    Raises:
        ReaderError: the digests differ (naming the table and the manifest), or the manifest is unreadable.
        ExperimentMismatch: the manifest was written under another experiment than this run's.
    """
    if verify is None:
        verify = not skip_sha256()
    entry = manifest_entry(path)
    if entry is None:
        log.debug("%s: listed in no manifest beside it, read without a sha256 check", path)
        return False
    manifest, expected = entry
    # A table converted under another experiment (its manifest says which) is refused, naming both.
    check_experiment(manifest, _manifest(manifest)[1])
    if not verify:
        return False
    try:
        actual = file_sha256(path)
    except OSError as err:
        raise ReaderError(f"{path}: cannot read ({err.strerror or err})") from err
    if actual != expected:
        raise ReaderError(
            f"{path}: sha256 {actual[:16]}… differs from {expected[:16]}… listed in {manifest} "
            "(a damaged table, or one from another prepare run: run prepare again)"
        )
    return True


def _read_columns(path: Path, schema: pa.Schema, columns: Sequence[str], verify: bool | None) -> list[pa.ChunkedArray]:
    if not Path(path).is_file():
        raise ReaderError(f"arrow file not found: {path}")
    verify_table(path, verify)
    try:
        table = open_ipc(path).read_all()
    except ReaderError:
        raise
    except (pa.ArrowException, OSError) as err:
        raise ReaderError(f"{path}: unreadable Arrow table ({err})") from err
    out = []
    for name in columns:
        if name not in table.column_names:
            raise ReaderError(f"{path}: no column {name!r} (has {table.column_names})")
        column, want = table.column(name), schema.field(name).type
        try:
            column.validate(full=True)
        except (pa.ArrowException, OSError) as err:
            raise ReaderError(f"{path}: column {name!r} is damaged ({err})") from err
        if column.type != want:
            try:
                column = column.cast(want)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
                raise ReaderError(f"{path}: column {name!r} is {column.type}, expected {want}") from err
        out.append(column)
    return out


_FLOATS = {"halffloat": "float16", "float": "float32", "double": "float64"}


def _bits(buffer: pa.Buffer, offset: int, length: int) -> np.ndarray:
    """bool [length]: an Arrow bitmap (least significant bit first) from bit ``offset``."""
    return np.unpackbits(np.frombuffer(buffer, np.uint8), bitorder="little")[offset : offset + length].astype(bool)


def numpy_values(values: pa.Array | pa.ChunkedArray, null: float | None = None, what: str = "a column") -> np.ndarray:
    """A boolean or fixed-width numeric column as a numpy array, read from its Arrow buffers.

    pyarrow's own ``to_numpy`` imports pandas on first use (about 0.1 s per process). Nulls become ``null``
    (``np.nan`` gives float64 with NaN at nulls, as ``to_numpy`` does); with ``null=None`` a null is a
    :class:`ReaderError` naming ``what``.
    """
    kind = values.type
    if pa.types.is_boolean(kind):
        dtype = np.dtype(bool)
    elif pa.types.is_integer(kind) or pa.types.is_floating(kind):
        dtype = np.dtype(_FLOATS.get(str(kind), str(kind)))
    else:
        raise TypeError(f"numpy_values takes a boolean or numeric column, got {kind}")
    parts = []
    for chunk in values.chunks if isinstance(values, pa.ChunkedArray) else [values]:
        offset, length = chunk.offset, len(chunk)
        validity, data = chunk.buffers()[:2]
        if length == 0:
            continue
        if pa.types.is_boolean(kind):
            part = _bits(data, offset, length)
        else:
            part = np.frombuffer(data, dtype, count=offset + length)[offset:]
        if chunk.null_count:
            if null is None:
                raise ReaderError(f"{what}: {chunk.null_count} null values")
            part = part.astype(np.result_type(part.dtype, np.asarray(null).dtype))
            part[~_bits(validity, offset, length)] = null
        parts.append(part)
    return np.concatenate(parts) if parts else np.empty(0, dtype)


class ArrowTables:
    """Rows of several arrow files as one table (``paths`` in the order given).

    Each file is checked against its manifest's sha256 first (``verify``: None follows
    ``VLMERGE_SKIP_SHA256``; module docstring). Pickles as (paths, schema, columns) and re-maps the
    files on unpickling without hashing them again, so DataLoader workers started with ``spawn``
    neither copy nor re-read the data.
    """

    def __init__(
        self, paths: Sequence[Path], schema: pa.Schema, columns: Sequence[str], verify: bool | None = None
    ) -> None:
        if not paths:
            raise ReaderError("no arrow files given")
        self.paths, self.schema, self.columns = tuple(Path(p) for p in paths), schema, tuple(columns)
        per_file = [_read_columns(p, schema, self.columns, verify) for p in self.paths]
        self.table = pa.table(
            {
                name: pa.chunked_array([c for cols in per_file for c in cols[i].chunks], type=schema.field(name).type)
                for i, name in enumerate(self.columns)
            }
        )
        # First global row of each file, for error messages that name the file.
        self.starts = np.cumsum([0] + [len(cols[0]) for cols in per_file])

    def __reduce__(self) -> tuple[type, tuple[tuple[Path, ...], pa.Schema, tuple[str, ...], bool]]:
        return ArrowTables, (self.paths, self.schema, self.columns, False)  # checked where it was built

    def __len__(self) -> int:
        return self.table.num_rows

    def column(self, name: str) -> pa.ChunkedArray:
        return self.table.column(name)

    def where(self, row: int) -> str:
        """``"<file> row <local row>"`` for a global row index."""
        index = int(np.searchsorted(self.starts, row, side="right")) - 1
        return f"{self.paths[index]} row {row - int(self.starts[index])}"

    def list_lengths(self, name: str) -> np.ndarray:
        """Length of each row's list in column ``name`` (null lists count 0): int64 [rows]."""
        return numpy_values(pc.list_value_length(self.column(name)), null=0).astype(np.int64)

    def image(self, row: int, name: str = "image") -> Image.Image:
        """Decode the encoded image bytes at ``row`` as an RGB PIL image."""
        data = self.column(name)[row].as_py()
        if data is None:
            raise ReaderError(f"{self.where(row)}: column {name!r} is null")
        try:
            with Image.open(io.BytesIO(data)) as img:
                return img.convert("RGB")
        except (UnidentifiedImageError, OSError) as err:
            raise ReaderError(f"{self.where(row)}: cannot decode {name!r} ({err})") from err


def flat_index(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Enumerate every list element: (row, position within the row), each int64 [sum(lengths)]."""
    rows = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    starts = np.cumsum(lengths) - lengths
    return rows, np.arange(len(rows), dtype=np.int64) - np.repeat(starts, lengths)
