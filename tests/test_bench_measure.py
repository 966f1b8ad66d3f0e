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


def test_the_padding_benchmark_times_both_modes_on_a_padded_batch() -> None:
    from vlmerge.bench.pretrain import padding_rows

    rows = padding_rows(repeats=1, rounds=1)
    assert set(rows) == {"step_compute_s", "step_skip_s", "pair_whole_s", "pair_first_only_s", "real_token_share"}
    assert all(rows[k] > 0 for k in rows)
    assert 0.3 < rows["real_token_share"] < 0.8  # padded: the comparison has pad rows to skip


def test_the_checksum_benchmark_hashes_every_file_both_ways(tmp_path) -> None:
    from vlmerge.bench.merge import _hashing

    paths = []
    for i, size in enumerate((3 << 20, 5000)):
        path = tmp_path / f"f{i}.bin"
        path.write_bytes(bytes([i + 1]) * size)
        paths.append(str(path))
    figures = _hashing(paths)
    assert figures["bytes"] == (3 << 20) + 5000
    assert figures["read_s"] > 0 and figures["mapped_s"] > 0
    assert figures["ratio"] == figures["mapped_s"] / figures["read_s"]
