"""Settings of ``python -m vlmerge.synth`` (the ``data.synthetic`` block of config.yaml). No torch."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from vlmerge.catalog.names import DATASETS
from vlmerge.runtime.settings import Settings


class SynthSettings(Settings):
    """What the generator writes: which datasets, how many items, from which seed, at which image size."""

    seed: int = Field(0, ge=0, description="seed of every scene, caption, question and image")
    size: Literal["tiny", "small"] = Field(
        "tiny", description="count preset: tiny (tests, seconds) | small (the embedded demo)"
    )
    image_size: int = Field(48, ge=16, description="image side in pixels; one 3x3-grid cell per 16-pixel patch")
    datasets: tuple[str, ...] | None = Field(
        None,
        description=f"subset of {list(DATASETS)} to write (None: all); the workflow passes those without a real root",
    )
    count: dict[str, int] = Field(
        {}, description="per-split counts replacing the preset's, DATASET.SPLIT → N, e.g. sbu.train=20000"
    )

    @field_validator("datasets")
    @classmethod
    def _known_datasets(cls, datasets: tuple[str, ...] | None) -> tuple[str, ...] | None:
        """Refuse a misspelt or repeated name here, where the message can name the key."""
        if datasets is None:
            return None
        unknown = [d for d in datasets if d not in DATASETS]
        if unknown:
            raise ValueError(f"unknown datasets {unknown}; choose from {list(DATASETS)}")
        if not datasets or len(set(datasets)) != len(datasets):
            raise ValueError(f"{list(datasets)}: need at least one, each once")
        return datasets

    @field_validator("count")
    @classmethod
    def _dotted_keys(cls, count: dict[str, int]) -> dict[str, int]:
        """Each key names one split as DATASET.SPLIT (the generator checks the names against its presets)."""
        for key in count:
            dataset, dot, split = key.partition(".")
            if not (dot and dataset and split):
                raise ValueError(f"key {key!r}: expected DATASET.SPLIT, e.g. sbu.train")
        return count
