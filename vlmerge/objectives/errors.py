"""The error raised when an objective receives tensors of the wrong shape or content."""

from __future__ import annotations

from vlmerge.errors import InputError


class ObjectiveInputError(InputError):
    """Inputs of a loss do not match its documented contract (shape, range, length)."""
