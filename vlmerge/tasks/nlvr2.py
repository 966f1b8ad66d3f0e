"""NLVR2 (docs/tasks.md): is a statement true of an image pair?

Two image+text forwards — the second image with token type 2 — give two pooled vectors whose
concatenation feeds the NLVR2 head; cross-entropy; selected on dev accuracy, reported on dev and
test-P (``test1``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from vlmerge.data.readers import NLVR2Dataset
from vlmerge.data.transforms import ImageTransform, eval_transform
from vlmerge.metrics import accuracy, majority_class
from vlmerge.model import Heads, VLModel
from vlmerge.objectives import nlvr2_loss
from vlmerge.tasks.base import Baseline, Batch, Rows, Task, split_files

SECOND_IMAGE_TOKEN_TYPE = 2


def encode_statement(model: VLModel, batch: Batch, first_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The statement with each image of the pair: two image+text sequences [B, T+1+G², D], the second
    image marked with token type 2 (``first_only``: token 0 alone, [B, 1, D])."""
    ids, mask = batch["text_ids"], batch["text_mask"]
    first = model.encode_pair(ids, mask, batch["image_0"], image_token_type=1, first_only=first_only)
    second = model.encode_pair(
        ids, mask, batch["image_1"], image_token_type=SECOND_IMAGE_TOKEN_TYPE, first_only=first_only
    )
    return first, second


def nlvr2_logits(model: VLModel, batch: Batch) -> torch.Tensor:
    """[B, 2] (False, True) from the two pooled image+text sequences, concatenated."""
    first, second = encode_statement(model, batch, first_only=True)
    return model.nlvr2_classifier(torch.cat([model.pooler(first), model.pooler(second)], dim=-1))


@dataclass(frozen=True)
class NLVR2Task(Task):
    def heads(self, arrow: Path) -> Heads:
        return Heads(nlvr2=True)

    def _dataset(self, arrow: Path, splits: Sequence[str], transform: ImageTransform) -> NLVR2Dataset:
        return NLVR2Dataset(split_files(arrow, self.dataset, splits), transform)

    def train_dataset(self, arrow: Path, splits: Sequence[str], transform: ImageTransform) -> Dataset:
        return self._dataset(arrow, splits, transform)

    def eval_sides(self, arrow: Path, split: str, transform: ImageTransform) -> tuple[Dataset, ...]:
        return (self._dataset(arrow, (split,), transform),)

    def encode(self, model: VLModel, batch: Batch) -> tuple[torch.Tensor, ...]:
        return encode_statement(model, batch)

    def loss(self, model: VLModel, batch: Batch) -> dict[str, torch.Tensor]:
        out = nlvr2_loss(nlvr2_logits(model, batch), batch["label"])
        return {"loss": out.loss, "accuracy": out.accuracy}

    def eval_rows(self, model: VLModel, batch: Batch, side: int) -> Rows:
        """``pred`` [B] and ``label`` [B], 1 = "True"."""
        return {"index": batch["index"], "pred": nlvr2_logits(model, batch).argmax(dim=1), "label": batch["label"]}

    def metrics(self, rows: Sequence[Rows], sides: Sequence[Dataset]) -> dict[str, float]:
        return {"accuracy": accuracy(rows[0]["pred"].tolist(), rows[0]["label"].tolist())}

    def baseline(self, arrow: Path, train_splits: Sequence[str], sides: Sequence[Dataset]) -> Baseline:
        # Only the label column is read: the transform never runs.
        majority = majority_class(self._dataset(arrow, train_splits, eval_transform(32)).label.tolist())
        labels = sides[0].label.tolist()  # type: ignore[attr-defined]
        name = "True" if majority else "False"
        return Baseline(
            {"accuracy": accuracy([majority] * len(labels), labels)}, f"always {name!r}, the majority class in training"
        )
