"""Errors raised on bad merge inputs (the CLIs turn them into one line on stderr and exit code 2)."""

from __future__ import annotations

from vlmerge.errors import InputError


class MergeError(InputError):
    """A state dict, seed, gram file or parameter that cannot be merged, named in the message."""


class GramsError(MergeError):
    """A gram-statistics file that is missing, malformed, or belongs to another model."""
