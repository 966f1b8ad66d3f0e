"""Per-task fine-tuning settings (docs/tasks.md) and the options that choose a task's splits.

The defaults are the paper's settings; the upstream quirks are options, off by default. Both are
keyword-only: eight numbers in a row are easy to misorder, and a misordered learning rate runs silently.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlmerge.tasks.errors import TaskError


@dataclass(frozen=True, kw_only=True)
class TaskSettings:
    """Paper-scale fine-tuning of one task: what ``python -m vlmerge.finetune`` uses where
    :class:`~vlmerge.finetune.config.TaskOverrides` leaves a key ``None``."""

    image_size: int  # pixels; the checkpoint's relative positions are resampled when it differs
    global_batch: int
    lr: float
    epochs: int
    drop_path: float | None  # None keeps the checkpoint's rate
    embed_dropout: float | None  # text-embedding dropout; None keeps the checkpoint's rate
    head_lr_mult: float  # learning-rate factor of the task head (OptimConfig.lr_multipliers)
    horizontal_flip: bool  # off where the text names left and right
    headline: str  # the validation metric that selects the checkpoint


@dataclass(frozen=True, kw_only=True)
class SplitOptions:
    """Which splits a run trains on and selects on.

    ``select_on="test"``, ``f30k_val_is_test``, ``coco_train_restval=False`` and ``f30k_train_val``
    reproduce upstream quirks: retrieval and NLVR2 checkpoints were selected on test numbers,
    Flickr30k's "val" was its test split, COCO training left out restval, Flickr30k trained on
    train + val. ``select_on="test"`` applies where the test split has answers: VQA's test answers
    are not public, so VQA keeps selecting on its val split (rest_val), as upstream did.
    """

    select_on: str = "val"  # "val" or "test"
    f30k_val_is_test: bool = False
    coco_train_restval: bool = True
    vqa_trainable_val: bool = False  # VQA: train on train + trainable_val
    f30k_train_val: bool = False  # Flickr30k: train on train + val

    def __post_init__(self) -> None:
        if self.select_on not in ("val", "test"):
            raise TaskError(f"select_on must be 'val' or 'test', not {self.select_on!r}")
