"""The one wrapper every stage's ``main`` runs in: logging, then exit codes from the error hierarchy.

- success → 0;
- :class:`~vlmerge.errors.InputError` (bad file, key, value or layer) → one line
  ``vlmerge.<stage>: error: <message>`` on stderr, exit code 2, no traceback;
- an :class:`OSError` that the user's disk or paths cause (disk full, quota, read-only file system,
  permission denied, a directory or a missing folder where a file is written) → one line naming the file,
  exit code 2;
- :class:`~vlmerge.errors.IncompleteRun` (stopped before its last step, resumable) → one line, exit code 1;
  so is a termination signal that the training loop turned into a bare ``SystemExit`` subclass (Lightning's
  SIGTERM exit) after the resumable checkpoint was saved: a run cut short never exits 0.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable

from vlmerge.errors import IncompleteRun, InputError
from vlmerge.runtime.experiment import set_experiment
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


# errno values that name a problem with the user's file system, not with vlmerge
USER_OS_ERRORS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EISDIR: "is a directory",
    errno.ENOTDIR: "a component of the path is not a directory",
}


def os_error_message(err: OSError) -> str | None:
    """One line naming the file of a user-caused :class:`OSError`, or None for any other."""
    reason = USER_OS_ERRORS.get(err.errno or -1)
    if reason is None:
        return None
    files = " → ".join(str(f) for f in (err.filename, err.filename2) if f is not None)
    return f"{files or 'a file'}: {err.strerror or reason}"


def _terminated(err: SystemExit) -> bool:
    """A ``SystemExit`` subclass with no error code: how a training loop ends on SIGTERM."""
    return type(err) is not SystemExit and err.code in (None, 0)


def run_stage(stage: str, body: Callable[[], object], *, verbose: bool = False) -> int:
    """Run ``body`` (the stage's work, arguments already parsed) and map errors to exit codes."""
    setup_logging(verbose)
    try:
        body()
    except (InputError, IncompleteRun) as err:
        return fail(stage, err)
    except OSError as err:
        message = os_error_message(err)
        if message is None:
            raise
        print(f"vlmerge.{stage}: error: {message}", file=sys.stderr)
        return 2
    except SystemExit as err:
        if not _terminated(err):
            raise
        return fail(
            stage, IncompleteRun("terminated by a signal before the last step; rerun the same command to resume")
        )
    finally:
        set_experiment(None)  # the stage's experiment ends with it (stages also run in-process, one after another)
    return 0
