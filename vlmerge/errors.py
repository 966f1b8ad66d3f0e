"""The one error hierarchy of vlmerge; :func:`vlmerge.runtime.stage.run_stage` maps it to exit codes.

- :class:`InputError` (exit code 2): bad input the user can fix — a file, key, value or layer named in
  a one-line message. Every library's own error (``MergeError``, ``TaskError``, ``RawDataError`` …)
  derives from it.
- :class:`IncompleteRun` (exit code 1): a run that stopped before its end (a requeue or termination
  signal) and wrote nothing final; rerunning the same command resumes it.
"""

from __future__ import annotations


class VlmergeError(Exception):
    """Base of every error vlmerge raises on purpose."""


class InputError(VlmergeError, ValueError):
    """Unusable input: the message names the file, key, value or layer."""


class ConfigError(InputError):
    """A configuration value outside its range, of the wrong type, or an unknown key."""


class IncompleteRun(VlmergeError):
    """A run stopped before its last step; nothing final was written."""
