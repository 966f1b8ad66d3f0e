"""The fine-tuning LightningModule: composes a built model, a task and the optimiser (docs/tasks.md).

It receives the model with its weights and task head already in place. Each validation runs the
task's evaluation over the selection split on every rank, gathers and de-duplicates the rows
(so the metrics are those of one process over the whole split), logs them, and keeps the weights
of the best step so far (:mod:`vlmerge.finetune.selection`).

Determinism: before each training batch torch is seeded from (seed, rank, batch index), so a run
resumed from a checkpoint draws the same dropout and stochastic-depth masks.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch.utils.data import Dataset

from vlmerge.finetune.selection import BestWeights, Selection
from vlmerge.model import VLModel
from vlmerge.tasks.base import Rows, Task
from vlmerge.tasks.errors import TaskError
from vlmerge.tasks.shards import concat_rows, gather_rows
from vlmerge.train.optim import OptimConfig, SpeedOptions, build_optimizer, loss_scaled, warmup_linear_schedule
from vlmerge.train.seeds import Stream, derive_seed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneConfig:
    max_steps: int
    warmup_steps: int
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = 0


class FinetuneModule(pl.LightningModule):
    """``val_sides``: the selection split's evaluation datasets; ``selection_dir``: where the validation
    history and best weights go; ``run_id``: identifies the run's recipe and init weights, so that a
    work directory left by another run is refused instead of resumed. ``speed`` (attention kernel, compiled
    blocks, AdamW implementation) is applied to ``model`` here, in place. A training step reads no value
    back to the host: logged values stay tensors until Lightning's ``log_every`` steps."""

    def __init__(
        self,
        model: VLModel,
        task: Task,
        val_sides: Sequence[Dataset],
        config: FinetuneConfig,
        selection_dir: Path,
        run_id: str = "",
        speed: SpeedOptions | None = None,
    ) -> None:
        super().__init__()
        self.model, self.task, self.val_sides, self.config = model, task, tuple(val_sides), config
        self.speed = speed or SpeedOptions()
        self.speed.apply(model)
        self.run_id, self.history_file = run_id, Path(selection_dir) / "history.json"
        self.selection = Selection(task.settings.headline)
        self.best_weights = BestWeights(selection_dir)
        self._checkpoint_step = 0  # step of the newest Lightning checkpoint, which a restart resumes
        self._rows: dict[int, list[Rows]] = defaultdict(list)

    # ----------------------------------------------------------------- training
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        torch.manual_seed(derive_seed(self.config.seed, Stream.STEP, 0, self.global_rank, batch_idx))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self.task.loss(self.model, batch)
        for name, value in out.items():
            self.log(f"train/{name}", value.detach(), batch_size=len(batch["draw"]), prog_bar=name == "loss")
        return out["loss"]

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        optimizer = build_optimizer(self.model, self.config.optim, self.speed.optimizer, loss_scaled(self))
        schedule = warmup_linear_schedule(optimizer, self.config.warmup_steps, self.config.max_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # ----------------------------------------------------------------- validation and selection
    def on_validation_epoch_start(self) -> None:
        self._rows = defaultdict(list)

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        rows = self.task.eval_rows(self.model, batch, dataloader_idx)
        self._rows[dataloader_idx].append({k: v.detach() for k, v in rows.items()})

    def on_validation_epoch_end(self) -> None:
        # Every rank gathers every side (a collective), so every rank computes the same metrics.
        rows = [gather_rows(concat_rows(self._rows[side])) for side in range(len(self.val_sides))]
        self._rows = defaultdict(list)
        metrics = self.task.metrics(rows, self.val_sides)
        self.log_dict({f"val/{k}": v for k, v in metrics.items()}, sync_dist=True)
        step = self.global_step
        improved = self.selection.record(step, metrics)
        log.info("step %d: validation %s%s", step, metrics, " (best so far)" if improved else "")
        if improved:
            self._save_best(step)
        if self.trainer.is_global_zero:  # after the weights: the history never names a missing file
            self.selection.save(self.history_file, self.run_id)

    def _save_best(self, step: int) -> None:
        state = self.trainer.strategy.lightning_module_state_dict()  # a collective under FSDP
        if not self.trainer.is_global_zero:
            return
        self.best_weights.save(step, {k.removeprefix("model."): v for k, v in state.items()})
        resumable = self.selection.until(self._checkpoint_step).best  # what a restart would fall back to
        self.best_weights.prune({step} | ({resumable["step"]} if resumable else set()))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["finetune_run_id"] = self.run_id
        self._checkpoint_step = self.global_step

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Called before the weights are loaded: a foreign checkpoint fails here with a clear message.
        if checkpoint.get("finetune_run_id") != self.run_id:
            raise TaskError(
                f"the work directory {self.history_file.parent.parent} holds a checkpoint of another "
                "run (other task, recipe or init weights); use a fresh --work-dir"
            )
        self._checkpoint_step = int(checkpoint["global_step"])
        saved = Selection.load(self.history_file, self.run_id, self.selection.metric)
        self.selection = saved.until(self._checkpoint_step)
