"""Settings of ``python -m vlmerge.grams`` (the ``merge.grams`` block of config.yaml). No torch."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from vlmerge.runtime.settings import Settings


class GramsSettings(Settings):
    """How the MS model's gram statistics XᵀX are collected on a task's data (RegMean)."""

    split: Literal["train", "val"] = Field("train", description="task split the grams see: train, or val (upstream)")
    max_samples: int | None = Field(None, ge=1, description="evenly spaced subset of this many samples (None: all)")
    batch_size: int = Field(32, ge=1, description="samples per forward pass")
    include_pad: bool = Field(
        False, description="count text pad tokens too, texts padded to the full text length (upstream)"
    )
    image_size: int | None = Field(None, ge=1, description="pixels (None: the checkpoint's; upstream 224)")
    products: Literal["float32", "float64"] = Field(
        "float32",
        description="dtype of each batch's XᵀX before it is added into the float64 sums: float32 (fast, error "
        "bound in docs/merging.md) or float64 (the reference, several times slower on a CPU)",
    )
