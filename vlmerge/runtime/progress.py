"""Progress reporting for long loops: a tqdm bar on a terminal, periodic log lines otherwise.

Batch jobs (SLURM, Snakemake logs) get one line every ``interval`` seconds with count, rate and
ETA instead of carriage-return bar updates that make log files unreadable.
"""

from __future__ import annotations

import logging
import sys
import time

from tqdm import tqdm


class Progress:
    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "it",
        interval: float = 10.0,
        logger: logging.Logger | None = None,
    ) -> None:
        self.total, self.desc, self.unit, self.interval = total, desc, unit, interval
        self.count = 0
        self._log = logger or logging.getLogger("vlmerge.progress")
        self._start = self._last = time.perf_counter()
        self._bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True) if sys.stderr.isatty() else None

    def update(self, n: int = 1) -> None:
        self.count += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.perf_counter()
        if now - self._last >= self.interval:
            self._last = now
            self._log.info("%s", self.status())

    @property
    def rate(self) -> float:
        elapsed = time.perf_counter() - self._start
        return self.count / elapsed if elapsed > 0 else 0.0

    def status(self) -> str:
        rate = self.rate
        done = f"{self.count}/{self.total}" if self.total else str(self.count)
        eta = ""
        if self.total and rate > 0:
            eta = f", ETA {max(self.total - self.count, 0) / rate:.0f}s"
        return f"{self.desc}: {done} {self.unit} ({rate:.1f} {self.unit}/s{eta})"

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._log.info("%s done in %.1fs", self.status(), time.perf_counter() - self._start)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
