"""The one error the synthetic generator raises for bad requests (unknown names, bad counts, foreign folders)."""

from __future__ import annotations

from vlmerge.errors import InputError


class SynthError(InputError):
    """A generation request that cannot be honoured; the message names the offending value or path."""
