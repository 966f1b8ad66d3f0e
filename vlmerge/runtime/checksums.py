"""Checksums of input files computed on a second thread while the stage reads the same files.

A stage that streams its inputs (the merge CLI) need not hash a file before it starts reading it: it
queues the file here, works, and calls :meth:`BackgroundChecksums.verify` before it writes anything.
The hashing thread reads each file once more (from the page cache, as a rule) and ``hashlib`` releases
the GIL on large blocks, so on two or more cores the hashing costs no wall time. A mismatch raises the
error its caller built, naming the file, and the stage writes nothing: the same outcome as checking
first, later.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vlmerge.runtime.atomic import sha256_file


@dataclass
class _Job:
    path: Path
    expected: str
    mismatch: Callable[[str], Exception]  # the error for a file whose sha256 is this, not the expected one
    digest: str | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


class BackgroundChecksums:
    """A queue of (file, expected sha256) pairs hashed in order on one daemon thread.

    Usable as a context manager: leaving the block stops the thread after its current block of 1 MiB.
    ``on_digest(path, sha256)`` is called (on the hashing thread) for every file that matched.
    """

    def __init__(self, on_digest: Callable[[Path, str], None] | None = None) -> None:
        self._jobs: list[_Job] = []
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._stop = threading.Event()
        self._on_digest = on_digest
        self._thread: threading.Thread | None = None

    def add(self, path: str | os.PathLike[str], expected: str, mismatch: Callable[[str], Exception]) -> None:
        """Queue ``path``, whose sha256 should be ``expected``; ``mismatch(actual)`` builds the error if not."""
        job = _Job(Path(path), expected, mismatch)
        self._jobs.append(job)
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="sha256", daemon=True)
            self._thread.start()
        self._queue.put(job)

    def verify(self) -> None:
        """Wait for every queued file; raise the first mismatch (or read error) in the order they were added."""
        for job in self._jobs:
            job.done.wait()
            if job.error is not None:
                raise job.error
            assert job.digest is not None
            if job.digest != job.expected:
                raise job.mismatch(job.digest)

    def close(self) -> None:
        self._stop.set()
        self._queue.put(None)

    def __enter__(self) -> BackgroundChecksums:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            try:
                job.digest = sha256_file(job.path, stop=self._stop)
                if job.digest == job.expected and self._on_digest is not None:
                    self._on_digest(job.path, job.digest)
            except BaseException as err:  # handed to verify(), which re-raises it on the caller's thread
                job.error = OSError(f"cannot read {job.path} to check its sha256: {err}")
            finally:
                job.done.set()
