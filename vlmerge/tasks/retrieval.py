"""COCO and Flickr30k image–text retrieval (docs/tasks.md): a dual encoder fine-tuned with symmetric InfoNCE.

The unimodal image and text paths give [CLS] features, projected by ``itc_image_proj`` /
``itc_text_proj``; evaluation encodes every image and every caption of the split once and ranks
by cosine similarity (no ITM re-ranking, as upstream). Selected on the mean of the six recalls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from vlmerge.data.readers import RetrievalDataset
from vlmerge.data.transforms import ImageTransform
from vlmerge.metrics import chance_retrieval_recall, mean_recall, retrieval_recall
from vlmerge.model import Heads, VLModel
from vlmerge.objectives import retrieval_loss
from vlmerge.tasks.base import Baseline, Batch, Rows, Task, split_files
from vlmerge.tasks.errors import TaskError
from vlmerge.tasks.settings import SplitOptions

IMAGES, TEXTS = 0, 1  # evaluation sides


def image_features(model: VLModel, images: torch.Tensor) -> torch.Tensor:
    """images [B, 3, S, S] → projected, unnormalised [B, D] (the v experts only)."""
    return model.itc_image_proj(model.encode_image(images, first_only=True)[:, 0])


def text_features(model: VLModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """ids, mask [B, T] → projected, unnormalised [B, D] (the l experts only)."""
    return model.itc_text_proj(model.encode_text(ids, mask, first_only=True)[:, 0])


def _complete(rows: Rows, size: int, what: str) -> None:
    if not torch.equal(rows["index"].cpu(), torch.arange(size)):
        raise TaskError(
            f"retrieval needs every {what} of the split ({len(rows['index'])} of {size} evaluated); "
            "evaluate whole splits (no --val-batches limit)"
        )


@dataclass(frozen=True)
class RetrievalTask(Task):
    def train_splits(self, options: SplitOptions) -> tuple[str, ...]:
        if self.name == "coco" and not options.coco_train_restval:
            return tuple(s for s in self.train if s != "restval")
        if self.name == "f30k" and options.f30k_train_val:
            return (*self.train, self.val)
        return self.train

    def selection_split(self, options: SplitOptions) -> str:
        split = "test" if self.name == "f30k" and options.f30k_val_is_test else super().selection_split(options)
        if split in self.train_splits(options):
            # Upstream trains Flickr30k on train + val and validates on test: never select on trained samples.
            raise TaskError(
                f"{self.name} trains on {split} (f30k_train_val) and cannot select on it: "
                "select on test (f30k_val_is_test or select_on test)"
            )
        return split

    def heads(self, arrow: Path) -> Heads:
        return Heads(itc=True)

    def _dataset(self, arrow: Path, splits: Sequence[str], transform: ImageTransform) -> RetrievalDataset:
        return RetrievalDataset(split_files(arrow, self.dataset, splits), transform)

    def train_dataset(self, arrow: Path, splits: Sequence[str], transform: ImageTransform) -> Dataset:
        return self._dataset(arrow, splits, transform)

    def eval_sides(self, arrow: Path, split: str, transform: ImageTransform) -> tuple[Dataset, ...]:
        dataset = self._dataset(arrow, (split,), transform)
        return (dataset.image_side, dataset.text_side)

    def encode(self, model: VLModel, batch: Batch) -> tuple[torch.Tensor, ...]:
        """The two unimodal paths: images [B, 1+G², D] through the v experts, captions [B, T, D] through l."""
        return model.encode_image(batch["image"]), model.encode_text(batch["text_ids"], batch["text_mask"])

    def loss(self, model: VLModel, batch: Batch) -> dict[str, torch.Tensor]:
        images = image_features(model, batch["image"])
        out = retrieval_loss(images, text_features(model, batch["text_ids"], batch["text_mask"]), model.logit_scale)
        return {
            "loss": out.loss,
            "i2t_acc": out.i2t_acc,
            "t2i_acc": out.t2i_acc,
            "logit_scale": model.logit_scale.detach().exp(),
        }

    def eval_rows(self, model: VLModel, batch: Batch, side: int) -> Rows:
        """``feat`` [B, D]: L2-normalised features of the images (side 0) or the texts (side 1)."""
        if side == IMAGES:
            feats = image_features(model, batch["image"])
        else:
            feats = text_features(model, batch["text_ids"], batch["text_mask"])
        return {"index": batch["index"], "feat": F.normalize(feats.float(), dim=-1)}

    def metrics(self, rows: Sequence[Rows], sides: Sequence[Dataset]) -> dict[str, float]:
        images, texts = sides[IMAGES].source, sides[TEXTS].source  # type: ignore[attr-defined]
        _complete(rows[IMAGES], images.num_images, "image")
        _complete(rows[TEXTS], texts.num_texts, "text")
        sims = rows[IMAGES]["feat"] @ rows[TEXTS]["feat"].T  # [images, texts] cosines
        recalls = retrieval_recall(sims.cpu(), torch.from_numpy(texts.text_to_image))
        return recalls | {"mean_recall": mean_recall(recalls)}

    def baseline(self, arrow: Path, train_splits: Sequence[str], sides: Sequence[Dataset]) -> Baseline:
        images = sides[IMAGES].source  # type: ignore[attr-defined]
        chance = chance_retrieval_recall(images.text_to_image.tolist(), images.num_images)
        return Baseline(chance | {"mean_recall": mean_recall(chance)}, "random ranking (chance recall)")
