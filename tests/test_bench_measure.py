"""The benchmark harness measures a child's own peak memory, not its parent's."""

from __future__ import annotations

import sys

import pytest

from vlmerge.bench.measure import run_measured

_ALLOCATE = "import sys; b = bytearray(int(sys.argv[1]) << 20); b[::4096] = b'x' * len(b[::4096])"


def test_peak_rss_grows_with_the_child_allocation() -> None:
    small = run_measured([sys.executable, "-c", _ALLOCATE, "10"])
    large = run_measured([sys.executable, "-c", _ALLOCATE, "300"])
    assert 280 < large.peak_rss_mb - small.peak_rss_mb < 330


def test_parent_memory_does_not_leak_into_the_figure() -> None:
    ballast = bytearray(400 << 20)
    ballast[::4096] = b"x" * len(ballast[::4096])
    child = run_measured([sys.executable, "-c", "pass"])
    assert child.peak_rss_mb < 100
    del ballast


def test_failing_command_raises() -> None:
    with pytest.raises(RuntimeError, match="benchmark command failed"):
        run_measured([sys.executable, "-c", "raise SystemExit(3)"])
