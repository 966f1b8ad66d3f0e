"""One converter run: options, the tables it writes, and the record of what it kept and skipped.

Converters read annotations, then for each split stream rows through :meth:`Conversion.table`,
fetching images with :meth:`Conversion.image`; the run accumulates row counts, skipped items with
reasons and the output files that the manifest later lists with their checksums.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmerge.data import schema
from vlmerge.data.arrow.errors import RawDataError
from vlmerge.data.arrow.images import ImageError, read_image
from vlmerge.data.arrow.writer import TableWriter
from vlmerge.runtime import Progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConvertOptions:
    """Converter settings (defaults are ViLT's)."""

    strict: bool = False  # an unusable image is an error instead of a skipped item
    shard_size: int = 100_000  # rows per file of the sharded tables (SBU, GCC)
    min_answer_count: int = 9  # VQA vocabulary: answers seen at least this often in train+val
    rest_val_images: int = 1000  # images of vqav2_val held out as vqav2_rest_val
    batch_rows: int = 256  # rows per Arrow record batch (bounds memory)


class Conversion:
    """State of converting ``dataset`` from ``raw`` into ``out``."""

    def __init__(self, dataset: str, raw: Path, out: Path, options: ConvertOptions) -> None:
        self.dataset, self.raw, self.out, self.options = dataset, raw, out, options
        self.splits: dict[str, dict[str, int]] = {}
        self.skipped: list[dict[str, str]] = []
        self.outputs: list[Path] = []
        self.details: dict[str, Any] = {}

    def image(self, path: Path, split: str) -> bytes | None:
        """The image's bytes, or None after recording why it is skipped (an error if ``strict``)."""
        try:
            return read_image(path)
        except ImageError as err:
            if self.options.strict:
                raise RawDataError(f"{path}: {err.reason}") from None
            self.skip(split, self.relative(path), err.reason)
            return None

    def skip(self, split: str, item: str, reason: str) -> None:
        log.debug("%s %s: skipped %s (%s)", self.dataset, split, item, reason)
        self.skipped.append({"split": split, "item": item, "reason": reason})

    def relative(self, path: Path) -> str:
        """``path`` relative to the raw root, as listed in the manifest."""
        try:
            return path.relative_to(self.raw).as_posix()
        except ValueError:
            return str(path)

    def count(self, split: str, **counts: int) -> None:
        self.splits.setdefault(split, {}).update(counts)

    @contextlib.contextmanager
    def table(self, split: str) -> Iterator[TableWriter]:
        """A writer for ``split``'s table (file name and schema from vlmerge.data.schema)."""
        pattern = self.out / schema.FILES[self.dataset][split]
        writer = TableWriter(pattern, schema.SCHEMAS[self.dataset], self.options.batch_rows, self.options.shard_size)
        skipped_before = len(self.skipped)
        with writer:
            yield writer
        self.outputs.extend(writer.files)
        self.count(split, rows=writer.rows)
        skipped = len(self.skipped) - skipped_before
        if skipped:
            log.warning("%s %s: skipped %d items (listed in the manifest)", self.dataset, split, skipped)
        log.info("%s %s: %d rows in %s", self.dataset, split, writer.rows, ", ".join(f.name for f in writer.files))

    def progress(self, split: str, total: int, unit: str = "img") -> Progress:
        return Progress(total, f"{self.dataset} {split}", unit, logger=log)
