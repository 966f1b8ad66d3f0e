"""The error raised on unusable task input (the CLIs turn it into a one-line message, exit code 2)."""

from __future__ import annotations


class TaskError(ValueError):
    """A missing task table, an option the task does not support, a checkpoint without the task's head."""
