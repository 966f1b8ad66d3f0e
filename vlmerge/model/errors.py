"""Errors raised on bad model configurations and bad weight files (CLIs turn them into one line)."""

from __future__ import annotations

from vlmerge.errors import ConfigError, InputError


class ModelConfigError(ConfigError):
    """An unknown preset, sharing layout or override, or inconsistent sizes."""


class CheckpointError(InputError):
    """A weight file that cannot be read, or whose keys or shapes do not fit the model it is meant for."""
