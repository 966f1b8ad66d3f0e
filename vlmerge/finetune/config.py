"""Settings of the fine-tuning stage: one typed model from ``config.yaml`` to ``python -m vlmerge.finetune``.

- :class:`TaskOverrides`: what ``finetune.settings.<task>`` may change of a task's paper settings
  (``vlmerge.tasks.registry``); ``None`` keeps the paper's value, which only the stage knows.
- :class:`FinetuneRecipe`: the keys every task shares, with the stage's defaults.
- :class:`FinetuneSettings`: one run (recipe + overrides + task and geometry); the stage's ``--config``
  and its flags are generated from it (:mod:`vlmerge.runtime.settings`).
- :class:`FinetuneSection`: the ``finetune:`` block of ``config.yaml``; :meth:`FinetuneSection.task_settings`
  is what the workflow passes to each fine-tuning job.

Ranges live here, so a bad value fails once, with its key named, before any job starts. Checks that need
the data or the task's code (batch splits, split choices) stay in :mod:`vlmerge.finetune.run`.
Pydantic only: the workflow imports this module, and ``snakemake -n`` must not import torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from vlmerge.catalog.names import TASKS
from vlmerge.runtime.settings import Settings, build
from vlmerge.train.launch import LaunchSettings
from vlmerge.train.settings import Geometry, TrainingRecipe

TaskName = Literal[TASKS]  # type: ignore[valid-type]


class TaskOverrides(Settings):
    """Changes to one task's paper settings; every key is optional (``None``: the paper's value)."""

    steps: int | None = Field(None, ge=1, description="optimizer steps; None: epochs")
    epochs: int | None = Field(None, ge=1, description="passes over the training split; None: the task's")
    global_batch: int | None = Field(None, ge=1, description="samples per optimizer step; None: the task's")
    batch_size: int | None = Field(None, ge=1, description="per-device micro-batch; None: global batch / devices")
    lr: float | None = Field(None, gt=0, description="peak learning rate; None: the task's")
    image_size: int | None = Field(None, ge=16, description="fine-tuning resolution in pixels; None: the task's")
    drop_path: float | None = Field(
        None, ge=0, lt=1, description="stochastic depth; None: the task's, else the checkpoint's"
    )
    embed_dropout: float | None = Field(
        None, ge=0, lt=1, description="text-embedding dropout; None: the task's, else the checkpoint's"
    )
    head_lr_mult: float | None = Field(
        None, gt=0, description="learning-rate factor of the task head; None: the task's"
    )
    horizontal_flip: bool | None = Field(
        None, description="random horizontal flips; None: the task's (off where the text names left and right)"
    )
    val_every: int | None = Field(None, ge=1, description="optimizer steps between validations; None: one epoch")

    @field_validator("epochs")
    @classmethod
    def _one_schedule(cls, epochs: int | None, info: ValidationInfo) -> int | None:
        """A run length is steps or epochs: with both, one would silently lose."""
        if epochs is not None and info.data.get("steps") is not None:
            raise ValueError("give steps or epochs, not both")
        return epochs


class FinetuneRecipe(TrainingRecipe):
    """The keys every task of a fine-tuning run shares (the stage's defaults)."""

    warmup_ratio: float = Field(0.1, ge=0, le=1, description="fraction of the steps spent warming up")
    ckpt_every: int | None = Field(None, ge=1, description="steps between Lightning checkpoints; None: val_every")
    select_on: Literal["val", "test"] = Field(
        "val",
        description="split that selects the checkpoint; 'test' reproduces an upstream quirk for retrieval and "
        "NLVR2 (VQA keeps val: its test answers are not public)",
    )
    f30k_val_is_test: bool = Field(False, description="upstream quirk: Flickr30k validation on test")
    coco_train_restval: bool = Field(True, description="train COCO on train + restval (upstream left restval out)")
    vqa_trainable_val: bool = Field(False, description="VQA: also train on trainable_val")
    f30k_train_val: bool = Field(
        False, description="upstream quirk: train Flickr30k on train + val (select on test with it)"
    )


class FinetuneSettings(FinetuneRecipe, TaskOverrides, Geometry):
    """Everything one fine-tuning run is asked to do, except its paths (flags of their own)."""

    task: TaskName = Field(description="downstream task")


class FinetuneSection(FinetuneRecipe):
    """The ``finetune:`` block of ``config.yaml``: which runs to make, and their settings."""

    tasks: tuple[TaskName, ...] = Field(min_length=1, description="downstream tasks to fine-tune and evaluate")
    baselines: tuple[Literal["ma", "ms"], ...] = Field(description="pre-trained models fine-tuned beside the merges")
    launch: LaunchSettings
    settings: dict[TaskName, TaskOverrides | None] = Field(
        default_factory=dict, description="per task, overrides of the paper's settings (null: none)"
    )

    @field_validator("tasks", "baselines")
    @classmethod
    def _unique(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        """A name listed twice would plan the same jobs twice."""
        if len(set(names)) != len(names):
            raise ValueError(f"names repeat: {list(names)}")
        return names

    def task_settings(self, task: str) -> FinetuneSettings:
        """The settings of ``task``'s run: the shared recipe, the task's overrides and the launch geometry."""
        recipe = {name: getattr(self, name) for name in FinetuneRecipe.model_fields}
        overrides = self.settings.get(task) or TaskOverrides()
        values = {
            **recipe,
            **overrides.model_dump(),
            "task": task,
            "devices": self.launch.devices,
            "nodes": self.launch.nodes,
        }
        return build(FinetuneSettings, values, where=f"finetune.settings.{task}")


__all__ = ["FinetuneRecipe", "FinetuneSection", "FinetuneSettings", "TaskOverrides"]
