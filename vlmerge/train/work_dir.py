"""A training work directory belongs to one run: reusing it for different settings is an error.

Resuming continues whatever checkpoint the directory holds. Had an earlier run with another
learning rate, layout or step count left one there, a rerun would silently continue (or, at its
final step, simply re-export) that other run. The first start records the settings that define
the run in ``run.json``; later starts must match them. Settings that do not change what is
computed (paths, loader workers, logging and checkpoint cadence, validation) are not recorded.

With ``restart_stale`` (what the workflow asks for: a job reruns *because* its inputs or settings
changed) a directory of another run is moved aside to ``<dir>.stale-<time>`` and the run starts
afresh; the directory of the same run is still resumed.

The checkpoint a run resumes from is a file anyone with write access to the directory could have
replaced: :func:`check_resume_checkpoint` reads its pickle's global names before Lightning loads it and
refuses, in one line naming the file, one that is not a checkpoint or that references code.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from vlmerge.runtime import atomic_write_json
from vlmerge.train.errors import ResumeCheckpointError, TrainConfigError

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


def _mismatch(path: Path, identity: dict[str, Any]) -> list[str] | None:
    """Differences between ``path`` (a run.json) and ``identity``; None when there is no run.json."""
    if not path.is_file():
        return None
    return _differences(json.loads(path.read_text()), json.loads(json.dumps(identity)))


def claim_work_dir(
    work_dir: Path, identity: dict[str, Any], writer: bool, restart_stale: bool = False, wait_seconds: float = 600.0
) -> None:
    """Check ``identity`` (JSON-ready) against ``work_dir/run.json``; the ``writer`` creates it if absent.

    Raises TrainConfigError listing every differing setting, unless ``restart_stale``: then the
    writer (global rank zero) moves the directory aside and the other ranks wait for its new record.
    """
    path = work_dir / RUN_FILE
    differences = _mismatch(path, identity)
    if differences and restart_stale and not writer:
        deadline = time.monotonic() + wait_seconds
        while (differences := _mismatch(path, identity)) != [] and time.monotonic() < deadline:
            time.sleep(1.0)
    if differences and restart_stale and writer:
        stale = work_dir.with_name(f"{work_dir.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
        work_dir.rename(stale)
        log.warning(
            "work directory %s held another run (%s): moved to %s, starting afresh",
            work_dir,
            "; ".join(differences),
            stale,
        )
        differences = None
    if differences:
        raise TrainConfigError(
            f"work directory {work_dir} belongs to another run ({'; '.join(differences)}); "
            "use a fresh --work-dir or remove it"
        )
    if differences == []:
        return
    if writer:
        work_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, identity)
        log.info("work directory %s: new run", work_dir)


def check_resume_checkpoint(path: Path | None) -> Path | None:
    """``path`` if it is a loadable Lightning checkpoint that references only tensors and plain data (or None).

    Lightning loads it with ``torch.load(weights_only=True)``, which refuses code-running pickles, but as a
    traceback; this check reads the pickle's global names (not its tensors) and says which file is bad.
    """
    import torch  # here, not at import: the work-directory record is read by torch-free code too

    if path is None:
        return None
    try:
        foreign = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as err:  # not a zip archive, truncated, unreadable: whatever the reader hit first
        raise ResumeCheckpointError(
            f"cannot read the resume checkpoint {path} ({type(err).__name__}: {' '.join(str(err).split())[:200]}); "
            "remove it to resume from an earlier one or start afresh"
        ) from err
    if foreign:
        raise ResumeCheckpointError(
            f"refusing to resume from {path}: it references {sorted(foreign)}, which could run code; remove it"
        )
    return path
