"""A training work directory belongs to one run; the workflow restarts stale ones instead of failing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlmerge.train.errors import TrainConfigError
from vlmerge.train.work_dir import RUN_FILE, claim_work_dir


def test_same_run_resumes_and_other_run_is_refused(tmp_path: Path) -> None:
    work = tmp_path / "work"
    claim_work_dir(work, {"lr": 1}, writer=True)
    (work / "last.ckpt").write_bytes(b"state")
    claim_work_dir(work, {"lr": 1}, writer=True)
    assert (work / "last.ckpt").read_bytes() == b"state"
    with pytest.raises(TrainConfigError, match=r"belongs to another run \(lr: 1 → 2\)"):
        claim_work_dir(work, {"lr": 2}, writer=True)
    assert (work / "last.ckpt").exists()


def test_restart_stale_moves_the_old_run_aside(tmp_path: Path) -> None:
    work = tmp_path / "work"
    claim_work_dir(work, {"lr": 1}, writer=True)
    (work / "last.ckpt").write_bytes(b"old run")
    claim_work_dir(work, {"lr": 2}, writer=True, restart_stale=True)
    assert json.loads((work / RUN_FILE).read_text()) == {"lr": 2}
    assert not (work / "last.ckpt").exists()
    [stale] = tmp_path.glob("work.stale-*")
    assert (stale / "last.ckpt").read_bytes() == b"old run"


def test_other_ranks_wait_for_the_writer_then_give_up(tmp_path: Path) -> None:
    work = tmp_path / "work"
    claim_work_dir(work, {"lr": 1}, writer=True)
    with pytest.raises(TrainConfigError, match="belongs to another run"):
        claim_work_dir(work, {"lr": 2}, writer=False, restart_stale=True, wait_seconds=1.5)
    claim_work_dir(work, {"lr": 2}, writer=True, restart_stale=True)
    claim_work_dir(work, {"lr": 2}, writer=False, restart_stale=True, wait_seconds=1.5)
