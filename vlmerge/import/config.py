"""Settings of ``python -m vlmerge.import``. No torch."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from vlmerge.runtime.settings import Settings


class ImportSettings(Settings):
    preset: Literal["tiny", "base", "large"] | None = Field(
        None, description="preset the file's shapes must fit; None: the first that fits"
    )
    overrides: dict[str, int | float] = Field(
        default_factory=dict,
        description="model config fields over the preset (sizes of a non-preset model; image_size resamples the "
        "bias table); vocab_size, image_size and max_text_len otherwise come from the file",
    )
