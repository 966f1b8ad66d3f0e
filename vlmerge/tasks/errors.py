"""The error raised on unusable task input (the CLIs turn it into a one-line message, exit code 2)."""

from __future__ import annotations

from vlmerge.errors import InputError


class TaskError(InputError):
    """A missing task table, an option the task does not support, a checkpoint without the task's head."""
