"""Image–caption pairs from caption tables (COCO, Flickr30k, VG, SBU, GCC) for pre-training."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from torch.utils.data import Dataset

from vlmerge.data.readers.table import ArrowTables, ReaderError, flat_index
from vlmerge.data.schema import CAPTION

if TYPE_CHECKING:
    from vlmerge.data.transforms import ImageTransform


def first_occurrences(captions: pa.ChunkedArray) -> np.ndarray:
    """Mask over the flattened captions of a list column: True where a caption is the first of its text in its row."""
    keep: list[bool] = []
    for row in captions.to_pylist():
        seen: set[str] = set()
        for text in row or ():
            keep.append(text not in seen)
            seen.add(text)
    return np.asarray(keep, dtype=bool)


class CaptionPairs(Dataset):
    """One sample per (image, caption) pair across the given caption tables, in file order.

    VG's table carries the same ``image`` and ``caption`` columns, so it mixes in unchanged.
    Sample: ``{"image": Tensor[3, H, W], "text": str, "image_index": int, "text_index": int}``
    where ``image_index`` is the row over all files and ``text_index`` the pair's index.

    ``dedup=True`` keeps each caption of a row once, at its first position (upstream's
    ``list(set(...))`` per image, made deterministic); rows are never merged across images.
    """

    def __init__(self, paths: Sequence[Path], transform: ImageTransform, dedup: bool = False) -> None:
        self.tables = ArrowTables(paths, CAPTION, ("image", "caption"))
        self.transform = transform
        lengths = self.tables.list_lengths("caption")
        self.pair_row, self.pair_caption = flat_index(lengths)
        nulls = pc.sum(pc.is_null(pc.list_flatten(self.tables.column("caption")))).as_py() or 0
        if nulls:
            raise ReaderError(f"{[str(p) for p in self.tables.paths]}: {nulls} null captions")
        if dedup:
            keep = first_occurrences(self.tables.column("caption"))
            self.pair_row, self.pair_caption = self.pair_row[keep], self.pair_caption[keep]

    def __len__(self) -> int:
        return len(self.pair_row)

    def caption(self, index: int) -> str:
        """Text of pair ``index`` without decoding its image."""
        row, position = int(self.pair_row[index]), int(self.pair_caption[index])
        return self.tables.column("caption")[row][position].as_py()

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = int(self.pair_row[index])
        return {
            "image": self.transform(self.tables.image(row)),
            "text": self.caption(index),
            "image_index": row,
            "text_index": int(index),
        }
