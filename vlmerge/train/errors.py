"""The error raised on an invalid training set-up (the CLIs turn it into a one-line message, exit 2)."""

from __future__ import annotations


class TrainConfigError(ValueError):
    """Inconsistent sizes, an unusable strategy or device choice, missing training data."""
