"""A training work directory belongs to one run: reusing it for different settings is an error.

Resuming continues whatever checkpoint the directory holds. Had an earlier run with another
learning rate, layout or step count left one there, a rerun would silently continue (or, at its
final step, simply re-export) that other run. The first start records the settings that define
the run in ``run.json``; later starts must match them. Settings that do not change what is
computed (paths, loader workers, logging and checkpoint cadence, validation) are not recorded.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from vlmerge.runtime import atomic_write_json
from vlmerge.train.errors import TrainConfigError

log = logging.getLogger(__name__)

RUN_FILE = "run.json"


def _differences(recorded: dict[str, Any], wanted: dict[str, Any], prefix: str = "") -> list[str]:
    keys = sorted(set(recorded) | set(wanted))
    out = []
    for key in keys:
        old, new = recorded.get(key), wanted.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            out += _differences(old, new, f"{prefix}{key}.")
        elif old != new:
            out.append(f"{prefix}{key}: {old!r} → {new!r}")
    return out


def claim_work_dir(work_dir: Path, identity: dict[str, Any], writer: bool) -> None:
    """Check ``identity`` (JSON-ready) against ``work_dir/run.json``; the ``writer`` creates it if absent.

    Raises TrainConfigError listing every differing setting.
    """
    path = work_dir / RUN_FILE
    if path.is_file():
        recorded = json.loads(path.read_text())
        if differences := _differences(recorded, json.loads(json.dumps(identity))):
            raise TrainConfigError(f"work directory {work_dir} belongs to another run ({'; '.join(differences)}); "
                                   "use a fresh --work-dir or remove it")
        return
    if writer:
        work_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, identity)
        log.info("work directory %s: new run", work_dir)
