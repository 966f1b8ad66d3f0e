"""The report stage's validated arguments."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmerge.catalog.lineages import Defaults
from vlmerge.report.sweeps import Sweep


@dataclass(frozen=True)
class ReportConfig:
    results: tuple[Path, ...]
    distances: tuple[Path, ...]
    sweeps: tuple[Sweep, ...]
    defaults: Defaults
    tables: Path
    plots: Path
    zeroshot: tuple[Path, ...] = ()  # zero-shot retrieval JSONs (results/zeroshot/<method>.json)

    def resolved(self) -> dict[str, Any]:
        return {
            "results": [str(p) for p in self.results],
            "distances": [str(p) for p in self.distances],
            "sweeps": [s.arg() for s in self.sweeps],
            "sharing": self.defaults.sharing,
            "seed_steps": self.defaults.seed_steps,
            "tables": str(self.tables),
            "plots": str(self.plots),
            "zeroshot": [str(p) for p in self.zeroshot],
        }
