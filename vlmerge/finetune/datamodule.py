"""Training and validation loaders of a fine-tuning run, built like pre-training's (``vlmerge.pretrain.data``).

Training: an endless, resumable, per-rank shuffled stream (``ResumableSampler``) whose samples
draw their augmentation from their key (``KeyedSamples``). Validation: each evaluation side of
the selection split, in padded contiguous shards per rank (:mod:`vlmerge.tasks.shards`), with
the evaluation transform. The datasets are built (and their tables checked) on construction.
"""

from __future__ import annotations

from collections.abc import Sized
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from vlmerge.data.collate import BatchCollator
from vlmerge.data.tokenizer import MAX_TEXT_LEN, load_tokenizer
from vlmerge.data.transforms import eval_transform, train_transform
from vlmerge.tasks.base import Task
from vlmerge.tasks.shards import eval_loader
from vlmerge.train.batches import KeyedSamples
from vlmerge.train.sampler import ResumableSampler


@dataclass(frozen=True)
class FinetuneDataConfig:
    arrow: Path
    tokenizer: Path
    train_splits: tuple[str, ...]
    select_split: str
    image_size: int
    batch_size: int = 32  # per device
    num_workers: int = 0
    seed: int = 0
    horizontal_flip: bool = False
    max_text_len: int = MAX_TEXT_LEN
    augment: bool = True  # False: the evaluation transform for training images too (see PretrainDataConfig)


class FinetuneData(pl.LightningDataModule):
    def __init__(self, task: Task, config: FinetuneDataConfig) -> None:
        super().__init__()
        self.task, self.config = task, config
        self.tokenizer = load_tokenizer(config.tokenizer, config.max_text_len)
        self.collate = BatchCollator(self.tokenizer, config.max_text_len)
        size = config.image_size
        transform = (
            train_transform(size, horizontal_flip=config.horizontal_flip) if config.augment else eval_transform(size)
        )
        self.train = task.train_dataset(config.arrow, config.train_splits, transform)
        self.val_sides = task.eval_sides(config.arrow, config.select_split, eval_transform(size))

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        assert trainer is not None, "the train loader is built by a Trainer"
        start = trainer.global_step * trainer.accumulate_grad_batches
        sampler = ResumableSampler(
            len(cast(Sized, self.train)),  # the task datasets are sized; torch's Dataset type is not
            self.config.batch_size,
            self.config.seed,
            trainer.global_rank,
            trainer.world_size,
            start_batch=start,
        )
        return DataLoader(
            KeyedSamples(self.train),
            batch_size=self.config.batch_size,
            sampler=sampler,
            collate_fn=self.collate,
            num_workers=self.config.num_workers,
            drop_last=True,
            pin_memory=torch.cuda.is_available(),
            generator=torch.Generator().manual_seed(self.config.seed),
        )

    def val_dataloader(self) -> list[DataLoader]:
        trainer = self.trainer
        assert trainer is not None, "the validation loaders are built by a Trainer"
        return [
            eval_loader(
                side,
                self.config.batch_size,
                self.collate,
                self.config.num_workers,
                trainer.global_rank,
                trainer.world_size,
            )
            for side in self.val_sides
        ]
