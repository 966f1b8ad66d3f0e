"""NLVR2 statements (one sample per statement about an image pair) with true/false labels."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.compute as pc
from torch.utils.data import Dataset

from vlmerge.data.readers.table import ArrowTables, ReaderError, flat_index
from vlmerge.data.schema import NLVR2

if TYPE_CHECKING:
    from vlmerge.data.transforms import ImageTransform

_COLUMNS = ("image_0", "image_1", "questions", "answers", "identifier")


class NLVR2Dataset(Dataset):
    """One sample per statement of the given ``nlvr2_*.arrow`` files.

    Sample: ``{"image_0": Tensor[3, H, W], "image_1": Tensor[3, H, W], "text": str, "label": int
    (1 = "True"), "identifier": str (the image pair), "statement_index": int, "pair_index": int}``.
    """

    def __init__(self, paths: Sequence[Path], transform: ImageTransform) -> None:
        self.tables = ArrowTables(paths, NLVR2, _COLUMNS)
        self.transform = transform
        statements = self.tables.list_lengths("questions")
        answers = self.tables.list_lengths("answers")
        if (statements != answers).any():
            row = int(np.flatnonzero(statements != answers)[0])
            raise ReaderError(f"{self.tables.where(row)}: {statements[row]} statements but {answers[row]} answers")
        self.row, self.position = flat_index(statements)
        self.label = self._labels()

    def _labels(self) -> np.ndarray:
        """ "True"/"False" strings → int64 [statements] of 1/0; anything else is an error."""
        flat = pc.list_flatten(self.tables.column("answers"))
        # Compared in Python: a string scalar for pyarrow.compute would load pandas (see numpy_values).
        answers = flat.to_pylist()
        valid = np.array([answer in ("True", "False") for answer in answers], dtype=bool)
        if not valid.all():
            index = int(np.flatnonzero(~valid)[0])
            raise ReaderError(
                f"{self.tables.where(int(self.row[index]))}: answer {flat[index].as_py()!r} "
                "is neither 'True' nor 'False'"
            )
        return np.array([answer == "True" for answer in answers], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.row)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row, position = int(self.row[index]), int(self.position[index])
        return {
            "image_0": self.transform(self.tables.image(row, "image_0")),
            "image_1": self.transform(self.tables.image(row, "image_1")),
            "text": self.tables.column("questions")[row][position].as_py(),
            "label": int(self.label[index]),
            "identifier": self.tables.column("identifier")[row].as_py(),
            "statement_index": position,
            "pair_index": row,
        }
