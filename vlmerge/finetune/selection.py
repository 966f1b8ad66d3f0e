"""Model selection on the validation split: the history of validations and the best weights so far.

Both live in the work directory: ``selection/history.json`` (rewritten after every validation)
and ``selection/step<N>.safetensors`` (the weights of each new best). Lightning saves its
step-N checkpoint *before* the validation of step N and skips that validation when resuming, so
the history must outlive the checkpoint; a resumed run keeps the entries up to its checkpoint's
step and recomputes the later ones. The weights of the best entry up to the newest checkpoint are
therefore kept until a newer checkpoint supersedes them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from vlmerge.runtime import atomic_path, atomic_write_json
from vlmerge.tasks.errors import TaskError


@dataclass
class Selection:
    """Validation results by optimizer step; the best is the first step with the highest ``metric``."""

    metric: str
    history: list[dict[str, Any]] = field(default_factory=list)  # [{"step": int, "metrics": {...}}]

    def record(self, step: int, metrics: Mapping[str, float]) -> bool:
        """Add one validation; True when it is a new best (strictly higher; NaN never is)."""
        if self.metric not in metrics:
            raise TaskError(f"validation metrics {sorted(metrics)} lack the selection metric {self.metric!r}")
        best = self.best
        self.history = [h for h in self.history if h["step"] != step] + [{"step": step, "metrics": dict(metrics)}]
        value = metrics[self.metric]
        return not math.isnan(value) and (best is None or value > best["metrics"][self.metric])

    @property
    def best(self) -> dict[str, Any] | None:
        scored = [h for h in self.history if not math.isnan(h["metrics"][self.metric])]
        return max(scored, key=lambda h: (h["metrics"][self.metric], -h["step"])) if scored else None

    @property
    def steps(self) -> list[int]:
        return [h["step"] for h in self.history]

    def until(self, step: int) -> Selection:
        """The validations of steps up to ``step``."""
        return Selection(self.metric, [h for h in self.history if h["step"] <= step])

    def save(self, path: Path, run_id: str) -> None:
        atomic_write_json(path, {"run_id": run_id, "metric": self.metric, "history": self.history})

    @classmethod
    def load(cls, path: Path, run_id: str, metric: str) -> Selection:
        """The history saved at ``path`` by run ``run_id``; empty when there is none (or another run's)."""
        try:
            record = json.loads(Path(path).read_text())
        except FileNotFoundError:
            return cls(metric)
        except (OSError, json.JSONDecodeError) as err:
            raise TaskError(f"cannot read the selection history {path}: {err}") from err
        if record.get("run_id") != run_id or record.get("metric") != metric:
            return cls(metric)
        return cls(metric, list(record["history"]))


class BestWeights:
    """State dicts of candidate best steps as safetensors files in ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def path(self, step: int) -> Path:
        return self.folder / f"step{step}.safetensors"

    def save(self, step: int, state: Mapping[str, torch.Tensor]) -> None:
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
        with atomic_path(self.path(step)) as tmp:
            save_file(tensors, str(tmp))

    def load(self, step: int) -> dict[str, torch.Tensor]:
        path = self.path(step)
        if not path.is_file():
            raise TaskError(f"the weights of the selected step {step} are missing: {path}")
        return load_file(str(path))

    def prune(self, keep: set[int]) -> None:
        """Delete every step file not in ``keep``."""
        for path in self.folder.glob("step*.safetensors"):
            if int(path.stem.removeprefix("step")) not in keep:
                path.unlink(missing_ok=True)
