"""One evaluation pass of a task over its sides in a single process (``python -m vlmerge.evaluate``).

``rank``/``world`` select a padded shard, as each rank of a distributed validation does; merging
the rows of every shard gives the rows of ``world=1``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from vlmerge.data.collate import BatchCollator
from vlmerge.model import VLModel
from vlmerge.runtime import Progress
from vlmerge.tasks.base import Rows, Task
from vlmerge.tasks.shards import concat_rows, eval_loader, merge_rows

log = logging.getLogger(__name__)


def resolve_device(name: str) -> str:
    """A stage's ``--device``: ``auto`` made concrete (CUDA when present); a name torch does not know is bad input."""
    from vlmerge.tasks.errors import TaskError

    device = ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name
    try:
        torch.device(device)
    except RuntimeError as err:
        raise TaskError(f"device {name!r}: {err}") from None
    return device


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def evaluation_rows(
    task: Task,
    model: VLModel,
    sides: Sequence[Dataset],
    collate: BatchCollator,
    batch_size: int,
    num_workers: int = 0,
    rank: int = 0,
    world: int = 1,
) -> list[Rows]:
    """Merged rows (CPU) of every side of one split, computed on the model's device in eval mode."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        for side, dataset in enumerate(sides):
            loader = eval_loader(dataset, batch_size, collate, num_workers, rank, world)
            parts = []
            with Progress(len(loader), f"evaluate {task.name} side {side}", unit="batch", logger=log) as progress:
                for batch in loader:
                    rows = task.eval_rows(model, to_device(batch, device), side)
                    parts.append({k: v.cpu() for k, v in rows.items()})
                    progress.update()
            out.append(merge_rows(concat_rows(parts)))
    finally:
        model.train(was_training)
    return out
