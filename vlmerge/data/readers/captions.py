"""Image–caption pairs from caption tables (COCO, Flickr30k, VG, SBU, GCC) for pre-training."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.compute as pc
from torch.utils.data import Dataset

from vlmerge.data.readers.table import ArrowTables, ReaderError, flat_index
from vlmerge.data.schema import CAPTION

if TYPE_CHECKING:
    from vlmerge.data.transforms import ImageTransform


class CaptionPairs(Dataset):
    """One sample per (image, caption) pair across the given caption tables, in file order.

    VG's table carries the same ``image`` and ``caption`` columns, so it mixes in unchanged.
    Sample: ``{"image": Tensor[3, H, W], "text": str, "image_index": int, "text_index": int}``
    where ``image_index`` is the row over all files and ``text_index`` the pair's index.
    """

    def __init__(self, paths: Sequence[Path], transform: ImageTransform) -> None:
        self.tables = ArrowTables(paths, CAPTION, ("image", "caption"))
        self.transform = transform
        lengths = self.tables.list_lengths("caption")
        self.pair_row, self.pair_caption = flat_index(lengths)
        nulls = pc.sum(pc.is_null(pc.list_flatten(self.tables.column("caption")))).as_py() or 0
        if nulls:
            raise ReaderError(f"{[str(p) for p in self.tables.paths]}: {nulls} null captions")

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
