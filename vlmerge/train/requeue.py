"""SLURM auto-requeue at a step boundary: on SIGUSR1 save ``hpc_ckpt_<n>.ckpt``, requeue the job, stop.

Submit with ``--signal=SIGUSR1@<seconds>``: SLURM signals every task that long before the time limit.
Lightning's own auto-requeue (``SLURMEnvironment(auto_requeue=True)``) saves its checkpoint inside
the signal handler, and saving ends in a barrier: under DDP a rank that takes the signal between
two steps then meets, in that barrier, a rank already blocked in the next step's gradient
all-reduce, and the job hangs until killed (seen with gloo on 2 nodes x 2 ranks). Here the handler
only records the signal; at the end of every optimizer step all ranks agree whether any of them got
it (one boolean all-reduce), then save, requeue and stop together. The requeued job resumes from
the newest checkpoint (:func:`vlmerge.train.trainer.resume_checkpoint`).

SIGTERM (a scheduler's preemption, ``kill``, ``scancel`` without a signal option) is handled by
:class:`TerminationCheckpoint`, installed on every trainer: Lightning's handler only records the
signal and its loops then raise ``SIGTERMException`` — a ``SystemExit`` without an error code, which
would end the process with exit code 0 and nothing saved. The callback saves ``hpc_ckpt_<n>.ckpt`` at
the end of the step in flight (or, if the signal arrived outside a training step, when the exception
passes), and :func:`vlmerge.runtime.stage.run_stage` turns the bare exit into exit code 1
(:class:`~vlmerge.errors.IncompleteRun`): rerunning the same command resumes from the checkpoint.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)

HPC_PREFIX = "hpc_ckpt_"


def hpc_checkpoint_path(work_dir: Path) -> Path:
    """``work_dir/hpc_ckpt_<n>.ckpt`` with n one above the highest already there (Lightning's naming)."""
    numbers = [
        int(p.stem.removeprefix(HPC_PREFIX))
        for p in work_dir.glob(f"{HPC_PREFIX}*.ckpt")
        if p.stem.removeprefix(HPC_PREFIX).isdigit()
    ]
    return work_dir / f"{HPC_PREFIX}{max(numbers, default=0) + 1}.ckpt"


def slurm_job_id() -> str:
    """The id ``scontrol requeue`` takes: ``<array job>_<task>`` inside a job array."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job is not None:
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ["SLURM_JOB_ID"]


class SlurmRequeue(pl.Callback):
    def __init__(self, work_dir: Path, signum: int = signal.SIGUSR1) -> None:
        self.work_dir = work_dir
        self.signum = signum
        self.signalled = False
        self._previous: Any = None

    def _record(self, signum: int, frame: FrameType | None) -> None:
        # Only a flag: anything collective here could interleave with an in-flight all-reduce.
        self.signalled = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._previous = signal.signal(self.signum, self._record)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # mid-accumulation: wait for the optimizer step (every rank skips the same batches)
        if not trainer.strategy.reduce_boolean_decision(self.signalled, all=False):
            return
        path = hpc_checkpoint_path(self.work_dir)
        trainer.save_checkpoint(path)  # every rank: a collective under DDP/FSDP
        trainer.should_stop = True
        if trainer.is_global_zero:
            job = slurm_job_id()
            done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
            if done.returncode == 0:
                log.info(
                    "signal %d at step %d: saved %s, requeued SLURM job %s", self.signum, trainer.global_step, path, job
                )
            else:
                log.warning("saved %s but `scontrol requeue %s` failed: %s", path, job, done.stderr.strip())


class TerminationCheckpoint(pl.Callback):
    """On SIGTERM or SIGINT, save a resumable ``hpc_ckpt_<n>.ckpt`` in the work directory before the run stops.

    SIGINT (Ctrl-C, or the signal a workflow manager sends its jobs on interrupt) is handled like SIGTERM:
    the handler only records it, and the run saves and stops after the step in flight. A second SIGINT
    interrupts at once (Python's ``KeyboardInterrupt``), keeping the last periodic checkpoint.
    """

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.saved: Path | None = None
        self.interrupted = False
        self._previous: Any = None

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        self.interrupted = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops at once
        log.warning("SIGINT: stopping after the step in flight with a checkpoint (again to stop at once)")

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _save(self, trainer: pl.Trainer, when: str) -> None:
        if self.saved is not None or trainer.global_step == 0:
            return  # already saved, or nothing trained yet: a rerun starts from the same place
        self.saved = hpc_checkpoint_path(self.work_dir)
        trainer.save_checkpoint(self.saved)
        name = "SIGINT" if self.interrupted else "SIGTERM"
        log.warning("%s %s step %d: saved %s; rerun to resume", name, when, trainer.global_step, self.saved)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # mid-accumulation: the loop stops at the next batch; save at an optimizer step only
        # Every rank asks whether any rank got the signal (one boolean all-reduce, as for the SLURM requeue):
        # all of them then save together (a collective under DDP/FSDP) and stop after this step.
        if trainer.strategy.reduce_boolean_decision(trainer.received_sigterm or self.interrupted, all=False):
            self._save(trainer, "after")
            trainer.should_stop = True

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and trainer.world_size == 1 and trainer.accumulate_grad_batches == 1:
            # the signal came outside a step boundary (validation, data loading): the last completed step is
            # still consistent on one process without accumulation; several ranks could be anywhere, and
            # half-accumulated gradients are not saved, so those keep their last periodic checkpoint instead
            self._save(trainer, "at")
