"""What a fine-tuning task provides: its tables, heads, loss, evaluation rows, metrics and baseline.

A task is a frozen description plus functions of (model, batch); it holds no state, so the
LightningModule, the evaluation CLI and the tests drive it the same way. Evaluation produces
*rows*: per-sample tensors keyed by name, always with ``"index"`` (the sample's position in its
dataset), so rows computed on any number of ranks can be merged and de-duplicated
(:mod:`vlmerge.tasks.shards`) before :meth:`Task.metrics` sees them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from vlmerge.data.schema import FILES
from vlmerge.data.transforms import ImageTransform
from vlmerge.model import Heads, VLModel
from vlmerge.tasks.errors import TaskError
from vlmerge.tasks.settings import SplitOptions, TaskSettings

Rows = dict[str, torch.Tensor]  # "index" [N] int64 plus per-sample values [N, ...]
Batch = dict[str, Any]


@dataclass(frozen=True)
class Baseline:
    """A trivial predictor's metrics on one split, and what it is (e.g. "always 'yes'")."""

    metrics: dict[str, float]
    description: str


def split_files(arrow: Path, dataset: str, splits: Sequence[str]) -> list[Path]:
    """The Arrow tables of ``dataset``'s ``splits`` in ``arrow``, each checked to exist."""
    files = []
    for split in splits:
        if split not in FILES[dataset]:
            raise TaskError(f"{dataset} has no split {split!r}; it has {sorted(FILES[dataset])}")
        path = Path(arrow) / FILES[dataset][split]
        if not path.is_file():
            raise TaskError(f"missing {dataset} table {path}")
        files.append(path)
    return files


@dataclass(frozen=True)
class Task(ABC):
    """One downstream task. ``head_modules``: the model attributes that get ``head_lr_mult``."""

    name: str
    dataset: str  # key of vlmerge.data.schema.FILES
    settings: TaskSettings
    head_modules: tuple[str, ...]
    train: tuple[str, ...]  # default training splits
    val: str  # validation split (model selection)
    test: tuple[str, ...]  # splits ``python -m vlmerge.evaluate`` reports

    # ----------------------------------------------------------------- splits
    def train_splits(self, options: SplitOptions) -> tuple[str, ...]:
        return self.train

    def selection_split(self, options: SplitOptions) -> str:
        # The last reported split is the task's test split (NLVR2 reports dev, then test-P).
        return self.val if options.select_on == "val" else self.test[-1]

    # ----------------------------------------------------------------- data
    @abstractmethod
    def heads(self, arrow: Path) -> Heads:
        """The heads the task trains (VQA reads its answer count from ``arrow``)."""

    @abstractmethod
    def train_dataset(self, arrow: Path, splits: Sequence[str], transform: ImageTransform) -> Dataset:
        """Training samples of ``splits``."""

    @abstractmethod
    def eval_sides(self, arrow: Path, split: str, transform: ImageTransform) -> tuple[Dataset, ...]:
        """The datasets one evaluation runs through the model (retrieval: images, then texts)."""

    # ----------------------------------------------------------------- model
    @abstractmethod
    def encode(self, model: VLModel, batch: Batch) -> tuple[torch.Tensor, ...]:
        """The task's route through the encoder, before any head: the hidden states [B, N, D] of each
        forward pass it makes. Fine-tuning builds its logits on these; gram collection runs exactly this,
        so the grams see the experts each task routes through."""

    @abstractmethod
    def loss(self, model: VLModel, batch: Batch) -> dict[str, torch.Tensor]:
        """``"loss"`` (scalar) plus detached extras to log."""

    @abstractmethod
    def eval_rows(self, model: VLModel, batch: Batch, side: int) -> Rows:
        """Per-sample outputs of one evaluation batch of side ``side``, with ``"index"``."""

    # ----------------------------------------------------------------- scores
    @abstractmethod
    def metrics(self, rows: Sequence[Rows], sides: Sequence[Dataset]) -> dict[str, float]:
        """Metrics (each in [0, 1]) from merged rows, one ``Rows`` per side; includes ``settings.headline``."""

    @abstractmethod
    def baseline(self, arrow: Path, train_splits: Sequence[str], sides: Sequence[Dataset]) -> Baseline:
        """The trivial baseline's metrics on ``sides`` (same keys as :meth:`metrics`)."""
