"""One merge as config.yaml names it (a ``merge.methods`` entry), checked against the catalogue. No torch."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from vlmerge.catalog.methods import METHOD_INFO, check_merge
from vlmerge.catalog.names import TASKS
from vlmerge.runtime.settings import Settings

Scalar = str | int | float | bool | list[str] | list[int] | None


class MergeEntry(Settings):
    """``{method: NAME, params: {...}}``: a registered method and its parameters (``used_experts_only: task``
    stands for the downstream task of each result, so the entry is checked for every task)."""

    method: str = Field(description=f"one of {sorted(METHOD_INFO)}")
    params: dict[str, Scalar] = Field(default_factory=dict, description="the method's and the shared parameters")

    @model_validator(mode="after")
    def _known(self) -> MergeEntry:
        for task in TASKS:
            check_merge(self.method, self.params, task=task)  # ConfigError → ValueError → pydantic names the entry
        return self

    def resolved(self, task: str | None = None) -> dict[str, Any]:
        """Every parameter parsed, defaults filled in (``used_experts_only: task`` resolved for ``task``)."""
        return check_merge(self.method, self.params, task=task)
