"""SLURM requeue at a step boundary (``vlmerge.train.requeue``) in one process, with a stand-in ``scontrol``.

tests/test_slurm_cluster.py runs the same path on a real 2-node cluster; this checks the callback's own
contract quickly: the signal only sets a flag, the step in flight finishes, then the checkpoint is saved,
the job requeued and training stops; a rerun resumes from that checkpoint to the full step count.
"""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from vlmerge.train.requeue import SlurmRequeue, hpc_checkpoint_path
from vlmerge.train.trainer import resume_checkpoint


class Linear(pl.LightningModule):
    def __init__(self, signal_at: int | None) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.signal_at = signal_at

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        if self.signal_at is not None and self.global_step == self.signal_at:
            os.kill(os.getpid(), signal.SIGUSR1)  # arrives mid-step, as SLURM's warning would
        return self.layer(batch).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(work: Path, signal_at: int | None, ckpt: Path | None = None) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=8,
        default_root_dir=work,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[SlurmRequeue(work)],
    )
    trainer.fit(Linear(signal_at), DataLoader(torch.randn(64, 4), batch_size=4), ckpt_path=ckpt)
    return trainer


def test_a_signal_saves_requeues_and_stops_after_the_step_in_flight(tmp_path: Path, monkeypatch) -> None:
    calls = tmp_path / "scontrol.calls"
    fake = tmp_path / "bin" / "scontrol"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    previous = signal.getsignal(signal.SIGUSR1)

    trainer = fit(tmp_path, signal_at=3)
    assert trainer.global_step == 4  # the signalled step completed, nothing after it
    assert calls.read_text().split() == ["requeue", "4242"]
    saved = tmp_path / "hpc_ckpt_1.ckpt"
    assert saved.is_file() and torch.load(saved, weights_only=False)["global_step"] == 4
    assert signal.getsignal(signal.SIGUSR1) == previous  # handler restored at the end of training
    assert hpc_checkpoint_path(tmp_path).name == "hpc_ckpt_2.ckpt"

    assert resume_checkpoint(tmp_path) == saved
    resumed = fit(tmp_path, signal_at=None, ckpt=saved)
    assert resumed.global_step == 8 and calls.read_text().count("requeue") == 1


def test_no_signal_no_requeue(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no scontrol at all: calling it would raise
    trainer = fit(tmp_path, signal_at=None)
    assert trainer.global_step == 8 and not list(tmp_path.glob("hpc_ckpt_*.ckpt"))
