"""Streaming writer of one Arrow table, optionally sharded into files of a fixed number of rows.

Rows are buffered ``batch_rows`` at a time and written as record batches through
``pyarrow.ipc.new_file``, so memory holds at most one batch of images whatever the dataset size.
Each file is written under a temporary name and renamed when complete (vlmerge.runtime.atomic_path).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import pyarrow as pa

from vlmerge.runtime import atomic_path

log = logging.getLogger(__name__)

SHARD_FIELD = "{shard}"


class TableWriter:
    """Write rows (dicts keyed by column name) to ``pattern``.

    If the file name contains ``{shard}``, a new file ``shard = 0, 1, …`` starts every
    ``shard_size`` rows; otherwise everything goes to one file. A table with no rows still gets one
    (empty) file, so that every declared output exists.
    """

    def __init__(self, pattern: Path, schema: pa.Schema, batch_rows: int, shard_size: int | None = None) -> None:
        self.pattern, self.schema, self.batch_rows = pattern, schema, batch_rows
        self.sharded = SHARD_FIELD in pattern.name
        self.shard_size = shard_size if self.sharded else None
        self.rows = 0
        self.files: list[Path] = []
        self._columns: dict[str, list[Any]] = {name: [] for name in schema.names}
        self._pending = 0
        self._shard_rows = 0
        self._stack: contextlib.ExitStack | None = None
        self._file: pa.ipc.RecordBatchFileWriter | None = None

    def write(self, row: dict[str, Any]) -> None:
        for name, values in self._columns.items():
            values.append(row[name])
        self._pending += 1
        if self._pending == self.batch_rows or self._shard_rows + self._pending == self.shard_size:
            self._flush()

    def close(self) -> list[Path]:
        """Finish the last file, remove stale shards of an earlier, larger run; return the files written."""
        self._flush()
        if not self.files and self._file is None:
            self._open()
        self._finish()
        if self.sharded:
            self._remove_stale_shards()
        return self.files

    def _path(self, shard: int) -> Path:
        return self.pattern.with_name(self.pattern.name.replace(SHARD_FIELD, str(shard)))

    def _open(self) -> pa.ipc.RecordBatchFileWriter:
        """Start the next file; returns its writer (also kept as ``_file``)."""
        path = self._path(len(self.files))
        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic_path(path))
        sink = self._stack.enter_context(pa.OSFile(str(tmp), "wb"))
        file = self._file = self._stack.enter_context(pa.ipc.new_file(sink, self.schema))
        self.files.append(path)
        return file

    def _flush(self) -> None:
        if not self._pending:
            return
        file = self._file if self._file is not None else self._open()
        file.write_batch(pa.RecordBatch.from_pydict(self._columns, schema=self.schema))
        self.rows += self._pending
        self._shard_rows += self._pending
        self._pending = 0
        self._columns = {name: [] for name in self.schema.names}
        if self._shard_rows == self.shard_size:
            self._finish()

    def _finish(self) -> None:
        if self._stack is not None:
            self._stack.close()  # closes the IPC writer (footer), the file, then renames it into place
        self._stack, self._file, self._shard_rows = None, None, 0

    def _remove_stale_shards(self) -> None:
        # A rerun with fewer rows or a larger shard size must not leave old shards that a reader
        # globbing `sbu_*.arrow` would pick up.
        shard = len(self.files)
        while (stale := self._path(shard)).exists():
            log.warning("removing stale shard %s from an earlier run", stale)
            stale.unlink()
            shard += 1

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            self.close()
        elif self._stack is not None:
            # Propagate the error into atomic_path so the half-written temporary file is removed.
            self._stack.__exit__(type(exc), exc, exc.__traceback__)
