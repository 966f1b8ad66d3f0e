"""Memory-mapped ViLT Arrow tables: several files read as one table, columns chosen by name.

Selecting columns by name and casting them to the types of ``vlmerge.data.schema`` makes files
written by ViLT (through pandas, with pandas metadata and possibly other column orders) and ours
interchangeable. Columns whose type already matches stay zero-copy views of the memory map.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, UnidentifiedImageError

from vlmerge.data.ipc import ReaderError, open_ipc


def _read_columns(path: Path, schema: pa.Schema, columns: Sequence[str]) -> list[pa.ChunkedArray]:
    table = open_ipc(path).read_all()
    out = []
    for name in columns:
        if name not in table.column_names:
            raise ReaderError(f"{path}: no column {name!r} (has {table.column_names})")
        column, want = table.column(name), schema.field(name).type
        if column.type != want:
            try:
                column = column.cast(want)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
                raise ReaderError(f"{path}: column {name!r} is {column.type}, expected {want}") from err
        out.append(column)
    return out


class ArrowTables:
    """Rows of several arrow files as one table (``paths`` in the order given).

    Pickles as (paths, schema, columns) and re-maps the files on unpickling, so DataLoader
    workers started with ``spawn`` do not copy the data.
    """

    def __init__(self, paths: Sequence[Path], schema: pa.Schema, columns: Sequence[str]) -> None:
        if not paths:
            raise ReaderError("no arrow files given")
        self.paths, self.schema, self.columns = tuple(Path(p) for p in paths), schema, tuple(columns)
        per_file = [_read_columns(p, schema, self.columns) for p in self.paths]
        self.table = pa.table(
            {
                name: pa.chunked_array([c for cols in per_file for c in cols[i].chunks], type=schema.field(name).type)
                for i, name in enumerate(self.columns)
            }
        )
        # First global row of each file, for error messages that name the file.
        self.starts = np.cumsum([0] + [len(cols[0]) for cols in per_file])

    def __reduce__(self) -> tuple[type, tuple[tuple[Path, ...], pa.Schema, tuple[str, ...]]]:
        return ArrowTables, (self.paths, self.schema, self.columns)

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
        lengths = pc.fill_null(pc.list_value_length(self.column(name)), 0)
        return lengths.to_numpy().astype(np.int64)

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
