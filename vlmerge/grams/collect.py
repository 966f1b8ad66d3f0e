"""Gram collection over a task's data: which table, which forward, and the no-grad loop.

Each task's samples take the route its fine-tuning takes: the task's own ``encode`` (one function
for both, :meth:`vlmerge.tasks.base.Task.encode`): VQA questions and NLVR2 statements run as
image+text pairs (text → l and image → v below F, the vl expert from F on; NLVR2 twice, image token
types 1 and 2); COCO / Flickr30k pairs run both unimodal paths (image → v, caption → l). The ``vl``
experts only fire on image+text input, so their grams need VQA/NLVR2 data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from vlmerge.data.readers import CaptionPairs, NLVR2Dataset, VQADataset
from vlmerge.data.schema import FILES
from vlmerge.data.transforms import eval_transform
from vlmerge.grams.hooks import GramCollector, ProductDtype
from vlmerge.merging.grams import GramStats
from vlmerge.model import VLModel
from vlmerge.runtime import Progress
from vlmerge.tasks.registry import get_task
from vlmerge.tasks.vqa import answer_vocabulary

# Our split names → each dataset's table name (NLVR2 calls its validation split "dev").
SPLITS: dict[str, dict[str, str]] = {
    "vqa": {"train": "train", "val": "val"},
    "coco": {"train": "train", "val": "val"},
    "f30k": {"train": "train", "val": "val"},
    "nlvr2": {"train": "train", "val": "dev"},
}
Batch = dict[str, Any]


def task_dataset(task: str, split: str, arrow_dir: Path, image_size: int) -> Dataset:
    """The evaluation-transformed samples of ``task``'s ``split`` table in ``arrow_dir``."""
    path = Path(arrow_dir) / FILES[task][SPLITS[task][split]]
    transform = eval_transform(image_size)
    if task == "vqa":
        # vqav2_answers.json, or the list rebuilt from the tables of a folder written by ViLT.
        return VQADataset([path], transform, len(answer_vocabulary(Path(arrow_dir))))
    if task == "nlvr2":
        return NLVR2Dataset([path], transform)
    return CaptionPairs([path], transform)


_TENSORS = ("text_ids", "text_mask", "image", "image_0", "image_1")


@torch.no_grad()
def collect_grams(
    model: VLModel,
    batches: Any,
    task: str,
    include_pad: bool = False,
    total: int | None = None,
    products: ProductDtype = "float32",
) -> GramStats:
    """Run ``model`` (eval mode, no grad) over ``batches`` with gram hooks; ``total`` sizes the progress bar;
    ``products`` is the dtype of each batch's XᵀX (:mod:`vlmerge.grams.hooks`: its error bound)."""
    model.eval()
    device = next(model.parameters()).device
    route = get_task(task)
    with (
        GramCollector(model, include_pad, products) as collector,
        Progress(total, f"grams {task}", "batch") as progress,
    ):
        for batch in batches:
            moved = {k: v.to(device, non_blocking=True) if k in _TENSORS else v for k, v in batch.items()}
            with collector.text(moved["text_mask"]):  # v experts see images only, whatever the mask
                route.encode(model, moved)
            progress.update()
        return collector.result()


def sample_indices(size: int, max_samples: int | None, shard: tuple[int, int] = (0, 1)) -> list[int]:
    """Evenly spaced ``max_samples`` of ``size`` rows (all by default), then every n-th for shard (i, n)."""
    count = size if max_samples is None else min(size, max_samples)
    chosen = [i * size // count for i in range(count)] if count else []
    index, shards = shard
    return chosen[index::shards]
