"""Evaluation on any number of ranks: padded shards of a dataset, rows gathered and de-duplicated.

Every rank evaluates ``ceil(n / world)`` samples (the last rank's block is padded with samples
from the start, like ``DistributedSampler``), so every rank holds rows of the same shape and a
plain all-gather collects them. Rows carry their dataset index; merging keeps one row per index,
so the padding never counts twice and the result equals a one-process evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from vlmerge.data.collate import BatchCollator
from vlmerge.objectives import all_gather_no_grad
from vlmerge.tasks.base import Rows


def shard_indices(size: int, rank: int = 0, world: int = 1) -> list[int]:
    """This rank's contiguous block of ``ceil(size / world)`` indices of a dataset padded by wrapping."""
    if size < 1 or not 0 <= rank < world:
        raise ValueError(f"cannot shard {size} samples for rank {rank} of {world}")
    per_rank = math.ceil(size / world)
    return [i % size for i in range(rank * per_rank, (rank + 1) * per_rank)]


class Indexed(Dataset):
    """``dataset[i]`` plus ``"index": i``, the key that rows are merged by."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.dataset[index] | {"index": index}


def concat_rows(parts: Sequence[Rows]) -> Rows:
    """Rows of several batches (same keys) as one set of rows."""
    if not parts:
        raise ValueError("no evaluation rows to concatenate")
    return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}


def merge_rows(rows: Rows) -> Rows:
    """One row per ``"index"``, sorted by index (the first of duplicate rows is kept)."""
    index = rows["index"]
    order = torch.argsort(index, stable=True)
    sorted_index = index[order]
    first = torch.ones_like(sorted_index, dtype=torch.bool)
    first[1:] = sorted_index[1:] != sorted_index[:-1]
    keep = order[first]
    return {key: value[keep] for key, value in rows.items()}


def gather_rows(local: Rows) -> Rows:
    """Rows of every rank (identity on one process), merged by index. Every rank must hold as many rows."""
    return merge_rows({key: all_gather_no_grad(value.contiguous()) for key, value in local.items()})


def eval_loader(
    dataset: Dataset, batch_size: int, collate: BatchCollator, num_workers: int = 0, rank: int = 0, world: int = 1
) -> DataLoader:
    """This rank's padded shard of ``dataset`` in order, samples carrying ``"index"``."""
    indices = shard_indices(len(dataset), rank, world)  # type: ignore[arg-type]
    return DataLoader(
        Indexed(dataset),
        batch_size=batch_size,
        sampler=indices,
        collate_fn=collate,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
    )
