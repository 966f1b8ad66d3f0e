"""Training errors: an invalid set-up (one-line message, exit 2) and a run stopped before its last step (exit 1)."""

from __future__ import annotations

from vlmerge.errors import IncompleteRun, InputError


class TrainConfigError(InputError):
    """Inconsistent sizes, an unusable strategy or device choice, missing training data."""


class ResumeCheckpointError(TrainConfigError):
    """A checkpoint in the work directory that is not a loadable, code-free Lightning checkpoint."""


class TrainingIncomplete(IncompleteRun):
    """fit() returned before max_steps (a requeue or termination signal): nothing is written."""


def require_finished(global_step: int, max_steps: int, work_dir: object) -> None:
    """Raise TrainingIncomplete unless the run reached ``max_steps``."""
    if global_step < max_steps:
        raise TrainingIncomplete(
            f"training stopped at step {global_step} of {max_steps}; rerun to resume from {work_dir}"
        )
