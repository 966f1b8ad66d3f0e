"""Settings of ``python -m vlmerge.distance`` (``merge.distance_topk`` in config.yaml). No torch."""

from __future__ import annotations

from pydantic import Field

from vlmerge.runtime.settings import Settings


class DistanceSettings(Settings):
    k: float = Field(20.0, gt=0, le=100, description="percent of magnitudes kept by the truncated sign dissimilarity")
