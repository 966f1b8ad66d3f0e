"""The experiment a run belongs to, recorded in every file it writes and compared on every file it reads.

One checkout can hold two experiments: the embedded default (tiny preset, synthetic data) and the paper's
(base preset, real data). Their files have the same names; a paper-scale job that picked up an embedded
seed checkpoint, gram file or Arrow set would train on it without a word. So every stage takes
``--experiment NAME`` (the workflow passes the top-level ``experiment`` of the config); the name is kept
here for the process, written into every sidecar, gram record and manifest, and :func:`check_experiment`
refuses an input made under another one, naming both.

Files without the record (written before it existed, or imported from released checkpoints: ``None`` or
``"released"``) are accepted, and so is everything when the run itself names no experiment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from vlmerge.errors import InputError

RECORD_KEY = "experiment"
NEUTRAL = (None, "released")  # inputs every experiment may read

_current: str | None = None


class ExperimentMismatch(InputError):
    """An input made under another experiment than the running one."""


def set_experiment(name: str | None) -> None:
    """Declare the experiment of this process (``None``: compare nothing)."""
    global _current
    if name is not None and not name.strip():
        raise InputError("--experiment: an empty name")
    _current = name


def current_experiment() -> str | None:
    """The experiment of this process, or None when the run named none."""
    return _current


def check_experiment(
    source: str | os.PathLike[str],
    record: Mapping[str, Any],
    *,
    preset: str | None = None,
    this_preset: str | None = None,
) -> None:
    """Refuse ``source`` (whose record says which experiment made it) when it is another experiment's.

    ``preset`` is the input's preset and ``this_preset`` the run's, when known, for the message.
    """
    theirs = record.get(RECORD_KEY)
    ours = _current
    if ours is None or theirs in NEUTRAL or theirs == ours:
        return
    made = f"experiment {theirs!r}" + (f" (preset {preset})" if preset else "")
    this = f"{ours!r}" + (f" (preset {this_preset})" if this_preset else "")
    raise ExperimentMismatch(
        f"{source} was made under {made}, this run is {this}; keep the experiments' files apart "
        "(a separate checkout or `snakemake --directory`)"
    )


def experiment_record() -> dict[str, Any]:
    """What a writer adds to its record: ``{"experiment": <name or None>}``."""
    return {RECORD_KEY: _current}


__all__ = [
    "ExperimentMismatch",
    "check_experiment",
    "current_experiment",
    "experiment_record",
    "set_experiment",
]
