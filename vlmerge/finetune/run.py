"""A validated fine-tuning run: everything ``python -m vlmerge.finetune`` does, as one frozen value."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmerge.finetune.datamodule import FinetuneDataConfig
from vlmerge.tasks.settings import SplitOptions
from vlmerge.finetune.module import FinetuneConfig
from vlmerge.train.trainer import TrainerConfig
from vlmerge.runtime import jsonable

_MACHINE_KEYS = ("out", "work_dir", "arrow", "tokenizer", "init", "devices", "num_nodes", "num_workers", "verbose",
                 "restart_stale")


@dataclass(frozen=True)
class FinetuneRun:
    task: str
    init: Path
    out: Path
    image_size: int
    drop_path: float | None
    options: SplitOptions
    data: FinetuneDataConfig
    module: FinetuneConfig
    trainer: TrainerConfig
    train_samples: int
    steps_per_epoch: int
    verbose: bool = False
    restart_stale: bool = False

    def resolved(self) -> dict[str, Any]:
        """Everything that determines the run, JSON-ready."""
        return jsonable(dataclasses.asdict(self))

    def config_hash(self) -> str:
        """sha256 of the resolved settings without paths and machine layout (same recipe, same hash)."""
        record = _without(self.resolved(), _MACHINE_KEYS)
        return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def _without(value: Any, keys: tuple[str, ...]) -> Any:
    if isinstance(value, dict):
        return {k: _without(v, keys) for k, v in value.items() if k not in keys}
    return value
