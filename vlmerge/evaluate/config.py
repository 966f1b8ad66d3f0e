"""Settings of the evaluation stage: the fields of ``python -m vlmerge.evaluate``'s ``--config`` and flags.

Paths (the checkpoint, tables, tokenizer, result and VQA annotations) are flags of their own. Whether a
device name exists needs torch, so :mod:`vlmerge.evaluate.cli` checks it; this module stays torch-free.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from vlmerge.catalog.names import TASKS
from vlmerge.runtime.settings import Settings


class EvaluateSettings(Settings):
    """How to evaluate one checkpoint on one task."""

    task: Literal[TASKS] = Field(description="downstream task")  # type: ignore[valid-type]
    method: str | None = Field(
        None, min_length=1, description="method name recorded in the result; None: the --out file name"
    )
    batch_size: int = Field(32, ge=1, description="samples per evaluation batch")
    num_workers: int = Field(2, ge=0, description="data loading processes")
    image_size: int | None = Field(None, ge=1, description="evaluation resolution in pixels; None: the checkpoint's")
    device: str = Field("auto", min_length=1, description="auto (CUDA when available), cpu, cuda, cuda:N")
    vqa_submission_split: Literal["test-dev", "test"] = Field(
        "test-dev", description="VQA questions of the evaluation-server file (test: all of test2015)"
    )


__all__ = ["EvaluateSettings"]
