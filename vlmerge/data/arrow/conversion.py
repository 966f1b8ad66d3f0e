"""One converter run: options, the tables it writes, and the record of what it kept and skipped.

Converters read annotations, then for each split stream rows through :meth:`Conversion.table`,
fetching images with :meth:`Conversion.image`; the run accumulates row counts, images read and
skipped (with reasons) and the output files that the manifest later lists with their checksums.
:meth:`Conversion.check` then refuses a result that lost its data (an empty split, too many skipped
images) before anything replaces the previous outputs.
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

# read_image's reason for an image file that is not there.
MISSING_IMAGE = "missing image file"
# Web crawls whose annotation lists name images behind dead links: every copy misses some, so their
# missing files do not count towards ``max_skip_rate`` (an empty folder still ends with zero rows).
CRAWLED = frozenset({"sbu", "gcc"})


@dataclass(frozen=True)
class ConvertOptions:
    """Converter settings (defaults are ViLT's)."""

    strict: bool = False  # an unusable image is an error instead of a skipped item
    shard_size: int = 100_000  # rows per file of the sharded tables (SBU, GCC)
    min_answer_count: int = 9  # VQA vocabulary: answers seen at least this often in train+val
    rest_val_images: int = 1000  # images of vqav2_val held out as vqav2_rest_val
    vqa_answer_counting: str = "normalized"  # VQA human answers counted "raw" (ViLT) or "normalized"
    batch_rows: int = 256  # rows per Arrow record batch (bounds memory)
    max_skip_rate: float = 0.05  # more unusable images than this fraction is an error (1.0: never)


class Conversion:
    """State of converting ``dataset`` from ``raw`` into ``out``."""

    def __init__(self, dataset: str, raw: Path, out: Path, options: ConvertOptions) -> None:
        self.dataset, self.raw, self.out, self.options = dataset, raw, out, options
        self.splits: dict[str, dict[str, int]] = {}
        self.skipped: list[dict[str, str]] = []
        self.outputs: list[Path] = []
        self.details: dict[str, Any] = {}
        # Per split: images asked for, images skipped, and of those the missing files (dead links).
        self.images: dict[str, dict[str, int]] = {}

    def image(self, path: Path, split: str) -> bytes | None:
        """The image's bytes, or None after recording why it is skipped (an error if ``strict``)."""
        counts = self.images.setdefault(split, {"read": 0, "skipped": 0, "missing": 0})
        counts["read"] += 1
        try:
            return read_image(path)
        except ImageError as err:
            if self.options.strict:
                raise RawDataError(f"{path}: {err.reason}") from None
            counts["skipped"] += 1
            counts["missing"] += err.reason == MISSING_IMAGE
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

    def check(self) -> None:
        """Refuse a result that lost its data: a split with no rows, or too many unusable images.

        The skip rate is over the whole dataset: images skipped / images read, where a crawled
        dataset's missing files (dead links, ``CRAWLED``) count in neither.

        Raises:
            RawDataError: with the counts, naming the raw folder.
        """
        for split, counts in self.splits.items():
            if counts.get("rows", 0) == 0 and not self._may_be_empty(split):
                images = self.images.get(split, {"read": 0, "skipped": 0})
                raise RawDataError(
                    f"{self.dataset} {split}: 0 rows written ({images['read']} images read, "
                    f"{images['skipped']} skipped{self._reasons(split)}) from {self.raw}"
                )
        read = skipped = 0
        for counts in self.images.values():
            excused = counts["missing"] if self.dataset in CRAWLED else 0
            read += counts["read"] - excused
            skipped += counts["skipped"] - excused
        if read and skipped / read > self.options.max_skip_rate:
            per_split = ", ".join(f"{s} {c['skipped']}/{c['read']}" for s, c in self.images.items() if c["skipped"])
            raise RawDataError(
                f"{self.dataset}: {skipped} of {read} images skipped ({skipped / read:.1%}; {per_split}"
                f"{self._reasons()}) from {self.raw}, above max_skip_rate {self.options.max_skip_rate:g}"
            )

    def _may_be_empty(self, split: str) -> bool:
        # VQA's trainable_val is deliberately empty when val has no more images than rest_val takes.
        return (
            self.dataset == "vqa"
            and split == "trainable_val"
            and self.splits.get("val", {}).get("rows", 0) <= self.options.rest_val_images
        )

    def _reasons(self, split: str | None = None) -> str:
        """``"; <count> <reason>, …"`` over the skipped items (of ``split``), most frequent first."""
        reasons: dict[str, int] = {}
        for item in self.skipped:
            if split is None or item["split"] == split:
                reason = item["reason"].split(" (")[0]
                reasons[reason] = reasons.get(reason, 0) + 1
        ranked = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
        return "".join(f"; {n} {reason}" for reason, n in ranked)

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
