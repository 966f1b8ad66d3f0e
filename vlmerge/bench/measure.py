"""Run a command as a child process and measure its wall time and peak resident memory."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

# Linux carries a process's RSS high-water mark across exec, so a child forked from a large parent
# (a benchmark holding tensors) would report at least the parent's RSS. A bare interpreter
# (``-S``: no site imports, a few MB) starts the command and reports the command's own ``wait4``
# peak on stdout, which keeps the figure the command's alone.
_LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(usage.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status))
"""


@dataclass(frozen=True)
class Measurement:
    seconds: float
    peak_rss_mb: float


@dataclass(frozen=True)
class Spread:
    """The fastest and the median of repeated timings of one thing. The fastest is the least disturbed run
    (time noise is one-sided: a run is slowed, never sped up, by whatever else the machine does); the median
    shows how typical it was, and a ratio that holds for both does not hang on one lucky run."""

    fastest: float
    median: float
    runs: int

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Spread:
        if not seconds:
            raise ValueError("no timings to summarise")
        return cls(min(seconds), statistics.median(seconds), len(seconds))

    def over(self, baseline: Spread) -> tuple[float, float]:
        """(fastest / baseline's fastest, median / baseline's median)."""
        return self.fastest / baseline.fastest, self.median / baseline.median


def run_measured(argv: list[str], env: dict[str, str] | None = None) -> Measurement:
    """Run ``argv``; return its wall time and its own peak RSS (kB from ``wait4``, reported in MB)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-S", "-c", _LAUNCHER, *argv], env=env, capture_output=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr.decode(errors="replace"))
        raise RuntimeError(f"benchmark command failed ({proc.returncode}): {' '.join(argv)}")
    return Measurement(seconds=seconds, peak_rss_mb=int(proc.stdout.split()[-1]) / 1024)


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]
