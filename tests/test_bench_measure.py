"""The benchmark harness measures a child's own peak memory, not its parent's."""

from __future__ import annotations

import sys

import pytest

from vlmerge.bench.measure import Measurement, Spread, run_measured

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


def test_a_spread_is_the_fastest_and_the_median_run() -> None:
    odd, even = Spread.of([3.0, 1.0, 9.0]), Spread.of([4.0, 1.0, 2.0, 10.0])
    assert (odd.fastest, odd.median, odd.runs) == (1.0, 3.0, 3)
    assert (even.fastest, even.median, even.runs) == (1.0, 3.0, 4)
    assert even.over(Spread.of([0.5, 6.0])) == (2.0, 3.0 / 3.25)
    with pytest.raises(ValueError, match="no timings"):
        Spread.of([])


def test_merge_rows_set_each_method_against_its_own_floor() -> None:
    from vlmerge.bench.merge import RUNS, method_rows

    floors = {
        "ms": [Measurement(2.0, 100.0), Measurement(4.0, 110.0), Measurement(3.0, 90.0)],
        "seed": [Measurement(5.0, 200.0), Measurement(4.0, 200.0), Measurement(8.0, 210.0)],
        "grams": [Measurement(1.0, 50.0), Measurement(1.0, 50.0), Measurement(1.0, 50.0)],
    }
    runs = [[Measurement(6.0, 105.0), Measurement(9.0, 210.0), Measurement(12.0, 100.0)] for _ in RUNS]
    rows = method_rows(floors, runs)
    assert [r["method"] for r in rows][:3] == ["interpolation", "arithmetic", "arithmetic mode=upstream_sequential"]
    by_needs = {needs: row for (_, _, needs), row in zip(RUNS, rows, strict=True)}
    ms, seed, grams = by_needs["ms"], by_needs["seed"], by_needs["grams"]
    assert (ms["seconds"], ms["median_s"], ms["floor_s"], ms["floor_median_s"]) == (6.0, 9.0, 2.0, 3.0)
    assert (ms["time_vs_floor"], ms["time_vs_floor_median"]) == (3.0, 3.0)
    assert ms["rss_vs_floor"] == 210.0 / 110.0  # the largest peak of each side
    assert (seed["time_vs_floor"], seed["time_vs_floor_median"], seed["rss_vs_floor"]) == (1.5, 1.8, 1.0)
    assert (grams["time_vs_floor"], grams["time_vs_floor_median"]) == (6.0, 9.0)


def test_the_gram_hook_figure_interleaves_plain_and_hooked_rounds(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from vlmerge.bench.merge import gram_hooks

    gram_hooks("2", "4", "3")
    figures = json.loads(capsys.readouterr().out)
    assert figures["rounds"] == 3 and figures["plain_s_per_batch"] > 0
    assert figures["ratio"] == figures["grams_s_per_batch"] / figures["plain_s_per_batch"]
    assert figures["ratio_median"] > 0


@pytest.mark.parametrize(
    "argv", [["--rounds", "2", "startup"], ["--rounds", "0", "merge"], ["--rounds", "2"], ["--rounds", "2", "demo"]]
)
def test_rounds_go_with_the_rounded_benchmarks_alone(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from vlmerge.bench.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and "--rounds" in capsys.readouterr().err
