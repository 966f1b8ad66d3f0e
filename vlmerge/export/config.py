"""Settings of ``python -m vlmerge.export``. No torch."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from vlmerge.runtime.settings import Settings


class ExportSettings(Settings):
    format: Literal["vl-merging"] = Field("vl-merging", description="the checkpoint format written")
    text_rows_for: int = Field(
        196,
        ge=2,
        description="upstream's max_text_len_of_initckpt: the text length its bias table is laid out for "
        "(196 in its configs); the loading run must use the same",
    )
