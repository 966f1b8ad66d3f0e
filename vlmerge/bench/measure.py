"""Run a command as a child process and measure its wall time and peak resident memory."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Measurement:
    seconds: float
    peak_rss_mb: float


def run_measured(argv: list[str], env: dict[str, str] | None = None) -> Measurement:
    """Run ``argv``; return its wall time and its own peak RSS (``wait4`` rusage, not the parent's)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.stderr.write(stderr.decode(errors="replace"))
        raise RuntimeError(f"benchmark command failed ({proc.returncode}): {' '.join(argv)}")
    # ru_maxrss is in kilobytes on Linux.
    return Measurement(seconds=seconds, peak_rss_mb=usage.ru_maxrss / 1024)


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def self_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
