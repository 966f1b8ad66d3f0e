"""The one exception the converters raise for bad raw input; the CLI turns it into exit code 2."""

from __future__ import annotations

from vlmerge.errors import InputError


class RawDataError(InputError):
    """A raw input is missing or malformed. The message names the file (and record or key)."""
