"""Where a checkpoint comes from, read from sidecars: the chain of stages that made its weights.

Each node names the checkpoint (weights sha256), its sharing layout, training steps, input
checksums and the stage's essentials (pre-training init, merge method and parameters,
fine-tuning task); ``parent`` is the node of the checkpoint it was fine-tuned from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlmerge.model.checkpoint import CheckpointMeta, sidecar_path
from vlmerge.model.errors import CheckpointError


def weights_sha256(path: Path) -> str:
    """The weights checksum recorded in the sidecar (``load_state`` verifies it against the file)."""
    try:
        return str(json.loads(sidecar_path(path).read_text())["weights_sha256"])
    except (OSError, json.JSONDecodeError, KeyError) as err:
        raise CheckpointError(f"cannot read weights_sha256 from the sidecar of {path}: {err}") from err


def stage_of(meta: CheckpointMeta) -> str:
    extra = meta.extra
    if "stage" in extra:
        return str(extra["stage"])
    return "merge" if "merge" in extra else "unknown"


def lineage(path: Path, meta: CheckpointMeta) -> dict[str, Any]:
    """The lineage node of checkpoint ``path`` (whose sidecar is ``meta``), parents included."""
    extra = meta.extra
    node: dict[str, Any] = {
        "checkpoint": Path(path).name,
        "checkpoint_sha256": weights_sha256(path),
        "stage": stage_of(meta),
        "sharing": meta.sharing.value,
        "steps": meta.steps,
        "inputs": dict(meta.inputs),
    }
    if "init" in extra:
        node["init"] = extra["init"]
    if "merge" in extra:
        node["merge"] = {"method": extra["merge"].get("method"), "params": extra["merge"].get("params")}
    if "task" in extra:
        node["task"] = extra["task"]
    if "lineage" in extra:
        node["parent"] = extra["lineage"]
    return node
