"""BackgroundChecksums: input files hashed on a second thread, mismatches raised where the caller waits."""

from __future__ import annotations

import hashlib
import mmap
import threading
from pathlib import Path
from typing import Any

import pytest

from vlmerge.runtime import atomic, sha256_file
from vlmerge.runtime.checksums import BackgroundChecksums


def _file(path: Path, size: int, fill: int) -> str:
    data = bytes([fill]) * size + b"tail"
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def test_matching_files_pass_and_are_reported(tmp_path: Path) -> None:
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    sums = {a: _file(a, 3 << 20, 1), b: _file(b, 10, 2)}  # several 1 MiB read blocks, and less than one
    seen: dict[Path, str] = {}
    with BackgroundChecksums(lambda p, d: seen.update({p: d})) as checks:
        for path, digest in sums.items():
            checks.add(path, digest, lambda actual: AssertionError(actual))
        checks.verify()
    assert seen == sums


def test_the_first_mismatch_in_order_is_raised_with_the_actual_digest(tmp_path: Path) -> None:
    a, b, c = (tmp_path / n for n in ("a.bin", "b.bin", "c.bin"))
    good, bad_b, bad_c = _file(a, 100, 1), _file(b, 100, 2), _file(c, 100, 3)
    seen: list[Path] = []
    with BackgroundChecksums(lambda p, d: seen.append(p)) as checks:
        checks.add(a, good, lambda actual: ValueError(f"a {actual}"))
        checks.add(b, "0" * 64, lambda actual: ValueError(f"{b} is {actual}"))
        checks.add(c, "1" * 64, lambda actual: ValueError(f"{c} is {actual}"))
        with pytest.raises(ValueError, match=f"{b} is {bad_b}"):
            checks.verify()
    assert seen == [a] and bad_c != "1" * 64


def test_an_unreadable_file_is_an_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "gone.bin"
    with BackgroundChecksums() as checks:
        checks.add(missing, "0" * 64, lambda actual: AssertionError(actual))
        with pytest.raises(OSError, match=f"cannot read {missing} to check its sha256"):
            checks.verify()


@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
@pytest.mark.parametrize("window", [mmap.ALLOCATIONGRANULARITY, atomic.HASH_WINDOW])
def test_sha256_file_hashes_the_whole_file_in_blocks_of_any_size(
    tmp_path: Path, chunk: int, window: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(atomic, "HASH_WINDOW", window)
    data = bytes(range(256)) * 41 + b"tail"  # 10,500 bytes: no chunk or window size above divides it
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert sha256_file(path, chunk) == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty.bin").write_bytes(b"")
    assert sha256_file(tmp_path / "empty.bin", chunk) == hashlib.sha256(b"").hexdigest()


def test_sha256_file_maps_one_window_at_a_time_and_stops_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(atomic, "HASH_WINDOW", mmap.ALLOCATIONGRANULARITY)
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(256)) * 64)  # 16 KiB: several windows
    mapped: list[int] = []
    real_mmap = mmap.mmap

    def counting(fileno: int, length: int, **kwargs: Any) -> mmap.mmap:
        mapped.append(length)
        return real_mmap(fileno, length, **kwargs)

    monkeypatch.setattr(atomic.mmap, "mmap", counting)
    assert sha256_file(path, 1000) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert mapped and max(mapped) == mmap.ALLOCATIONGRANULARITY and sum(mapped) == path.stat().st_size
    stop = threading.Event()
    stop.set()
    mapped.clear()
    assert sha256_file(path, 1000, stop=stop) == hashlib.sha256(b"").hexdigest()
    assert len(mapped) == 1  # given up before the first block
