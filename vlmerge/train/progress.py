"""A Lightning callback reporting optimizer steps through :class:`vlmerge.runtime.Progress`.

On a terminal that is a tqdm bar; in batch logs (SLURM, Snakemake) a line every ``interval``
seconds with steps done, rate and ETA, where Lightning's bar would write carriage returns.
Only global rank zero reports.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl

from vlmerge.runtime import Progress

log = logging.getLogger(__name__)


class StepProgress(pl.Callback):
    def __init__(self, interval: float = 30.0) -> None:
        self.interval = interval
        self._progress: Progress | None = None
        self._last_step = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self._last_step = trainer.global_step
            self._progress = Progress(
                trainer.max_steps - trainer.global_step,
                type(pl_module).__name__,
                unit="step",
                interval=self.interval,
                logger=log,
            )

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._progress is not None and trainer.global_step > self._last_step:
            self._progress.update(trainer.global_step - self._last_step)
            self._last_step = trainer.global_step

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None
