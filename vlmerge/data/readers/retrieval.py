"""Image–text retrieval data (COCO / Flickr30k Karpathy splits): pairs for training, sides for evaluation.

Evaluation encodes every image once and every caption once, then ranks; ``image_side`` and
``text_side`` are the two datasets to run through the unimodal encoders, and ``text_to_image``
says which image each caption belongs to.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from vlmerge.data.readers.captions import CaptionPairs

if TYPE_CHECKING:
    from vlmerge.data.transforms import ImageTransform


class RetrievalDataset(CaptionPairs):
    """Unique images and all their captions; ``__getitem__`` is the training pair view.

    ``captions_per_image`` keeps only each image's first n captions (the usual 5 on COCO, where a
    few images have 6 or 7); None keeps all, as ViLT does.
    """

    def __init__(self, paths: Sequence[Path], transform: ImageTransform, captions_per_image: int | None = None) -> None:
        super().__init__(paths, transform)
        if captions_per_image is not None:
            keep = self.pair_caption < captions_per_image
            self.pair_row, self.pair_caption = self.pair_row[keep], self.pair_caption[keep]

    @property
    def num_images(self) -> int:
        return len(self.tables)

    @property
    def num_texts(self) -> int:
        return len(self.pair_row)

    @property
    def text_to_image(self) -> np.ndarray:
        """Image index of each caption: int64 [num_texts]."""
        return self.pair_row

    @property
    def image_to_texts(self) -> list[np.ndarray]:
        """Caption indices of each image (possibly empty)."""
        return np.split(np.arange(self.num_texts), np.searchsorted(self.pair_row, np.arange(1, self.num_images)))

    @property
    def image_side(self) -> ImageSide:
        return ImageSide(self)

    @property
    def text_side(self) -> TextSide:
        return TextSide(self)


class ImageSide(Dataset):
    """Each image once: ``{"image": Tensor[3, H, W], "image_index": int}``."""

    def __init__(self, source: RetrievalDataset) -> None:
        self.source = source

    def __len__(self) -> int:
        return self.source.num_images

    def __getitem__(self, index: int) -> dict[str, Any]:
        image: torch.Tensor = self.source.transform(self.source.tables.image(index))
        return {"image": image, "image_index": int(index)}


class TextSide(Dataset):
    """Each caption once: ``{"text": str, "text_index": int, "image_index": int}``."""

    def __init__(self, source: RetrievalDataset) -> None:
        self.source = source

    def __len__(self) -> int:
        return self.source.num_texts

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_index = int(self.source.pair_row[index])
        return {"text": self.source.caption(index), "text_index": int(index), "image_index": image_index}
