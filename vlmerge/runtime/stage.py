"""The one wrapper every stage's ``main`` runs in: logging, then exit codes from the error hierarchy.

- success → 0;
- :class:`~vlmerge.errors.InputError` (bad file, key, value or layer) → one line
  ``vlmerge.<stage>: error: <message>`` on stderr, exit code 2, no traceback;
- :class:`~vlmerge.errors.IncompleteRun` (stopped before its last step, resumable) → one line, exit code 1.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from vlmerge.errors import IncompleteRun, InputError
from vlmerge.runtime.logs import setup_logging


def fail(stage: str, err: BaseException) -> int:
    """Print the one-line message of ``err`` for ``stage``; return its exit code."""
    # Our messages are one line; an error re-raised from a DataLoader worker arrives wrapped in the worker's
    # traceback text, with its own message on the last line.
    message = (str(err).strip().splitlines() or [type(err).__name__])[-1]
    if isinstance(err, IncompleteRun):
        print(f"vlmerge.{stage}: {message}", file=sys.stderr)
        return 1
    print(f"vlmerge.{stage}: error: {message}", file=sys.stderr)
    return 2


def run_stage(stage: str, body: Callable[[], object], *, verbose: bool = False) -> int:
    """Run ``body`` (the stage's work, arguments already parsed) and map errors to exit codes."""
    setup_logging(verbose)
    try:
        body()
    except (InputError, IncompleteRun) as err:
        return fail(stage, err)
    return 0
