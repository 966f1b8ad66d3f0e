"""Settings of ``python -m vlmerge.prepare`` (the ``data.prepare`` block of config.yaml). No torch."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from vlmerge.runtime.settings import Settings


class PrepareSettings(Settings):
    """How raw datasets become ViLT Arrow tables; the field names are those of ``ConvertOptions``."""

    strict: bool = Field(False, description="an unusable image is an error instead of a skipped, reported item")
    shard_size: int = Field(100_000, ge=1, description="rows per file of the sharded tables (SBU, GCC)")
    min_answer_count: int = Field(
        9,
        ge=1,
        description="VQA answer vocabulary: answers seen at least this often "
        "in train+val (3,129 answers on the real VQAv2)",
    )
    rest_val_images: int = Field(1000, ge=0, description="VQA: last images of val held out as rest_val")
    vqa_answer_counting: Literal["raw", "normalized"] = Field(
        "normalized",
        description="VQA soft scores: count the ten human answers as typed, looked up in the normalised "
        "vocabulary unchanged ('raw', ViLT's write_vqa.py: 'Two' is not '2') or after normalising them "
        "('normalized'); label ids follow ViLT's first-seen order either way",
    )
    batch_rows: int = Field(256, ge=1, description="rows per Arrow record batch (bounds memory)")
    max_skip_rate: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="more skipped (missing or unreadable) images than this fraction of those read is an "
        "error and the previous outputs stay; SBU/GCC dead links are not counted; 1.0 never fails",
    )
