"""Two-process data-parallel pre-training on CPU (gloo): it completes and only rank zero writes weights."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.builders import PRETRAIN_MODEL_ARG, ROOT, build_pretrain_data, pretrain_cli
from vlmerge.model import Sharing
from vlmerge.model.checkpoint import load_model

pytestmark = pytest.mark.slow  # real snakemake runs / several processes per test


def test_two_process_ddp_run_writes_one_checkpoint(tmp_path: Path) -> None:
    arrow, tokenizer = build_pretrain_data(tmp_path / "data")
    out, work = tmp_path / "out" / "ms.safetensors", tmp_path / "work"
    args = [
        "--arrow",
        arrow,
        "--tokenizer",
        tokenizer,
        "--out",
        out,
        "--work-dir",
        work,
        "--model",
        PRETRAIN_MODEL_ARG,
        "--image-size",
        "32",
        "--sharing",
        "modality_specific",
        "--devices",
        "2",
        "--batch-size",
        "4",
        "--global-batch",
        "16",
        "--steps",
        "3",
        "--ckpt-every",
        "3",
        "--val-every",
        "2",
        "--val-batches",
        "1",
        "--num-workers",
        "0",
    ]
    done = subprocess.run(pretrain_cli(*args), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Starting with 2 processes" in done.stderr  # really two ranks
    assert sorted(p.name for p in out.parent.iterdir()) == ["ms.json", "ms.safetensors"]
    model, meta = load_model(out)
    assert meta.steps == 3 and meta.sharing is Sharing.MODALITY_SPECIFIC
    assert (work / "checkpoints" / "last.ckpt").is_file()
    metrics = next((work / "logs").glob("version_*/metrics.csv")).read_text()
    assert "val/itc_i2t_r1" in metrics.splitlines()[0]
