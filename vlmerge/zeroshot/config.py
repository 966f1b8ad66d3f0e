"""Settings of the zero-shot retrieval stage: the fields of ``python -m vlmerge.zeroshot``'s ``--config`` and flags.

Paths (the checkpoints, tables, tokenizer and result) are flags of their own. Whether a device name exists
needs torch, so :mod:`vlmerge.zeroshot.cli` checks it; this module stays torch-free.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from vlmerge.catalog.names import RETRIEVAL_TASKS
from vlmerge.runtime.settings import Settings

RetrievalDataset = Literal[RETRIEVAL_TASKS]  # type: ignore[valid-type]


class ZeroshotSettings(Settings):
    """How to score one method's checkpoints on image↔text retrieval without fine-tuning."""

    datasets: tuple[RetrievalDataset, ...] = Field(
        RETRIEVAL_TASKS, min_length=1, description="retrieval datasets scored on their test split"
    )
    method: str | None = Field(
        None, min_length=1, description="method name recorded in the result; None: the --out file name"
    )
    batch_size: int = Field(64, ge=1, description="images or captions per forward pass")
    num_workers: int = Field(0, ge=0, description="data loading processes")
    image_size: int | None = Field(None, ge=1, description="evaluation resolution in pixels; None: the checkpoint's")
    device: str = Field("auto", min_length=1, description="auto (CUDA when available), cpu, cuda, cuda:N")

    @field_validator("datasets")
    @classmethod
    def _distinct(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError(f"datasets repeat: {list(value)}")
        return value


__all__ = ["ZeroshotSettings"]
