"""Atomic outputs, checksums and progress reporting."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest

from vlmerge.runtime import Progress, atomic_path, atomic_write_json, sha256_file


def test_atomic_path_renames_on_success(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.bin"
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"payload")
        assert not target.exists()
    assert target.read_bytes() == b"payload"
    assert [p.name for p in target.parent.iterdir()] == ["out.bin"]


def test_atomic_path_keeps_old_file_when_killed(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_bytes(b"half-writ")
        raise KeyboardInterrupt
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_json_is_stable(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "a.json", {"b": 1, "a": [1, 2]})
    atomic_write_json(tmp_path / "b.json", {"a": [1, 2], "b": 1})
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert json.loads((tmp_path / "a.json").read_text()) == {"a": [1, 2], "b": 1}


def test_sha256_matches_hashlib(tmp_path: Path) -> None:
    data = bytes(range(256)) * 5000
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f", chunk=4096) == hashlib.sha256(data).hexdigest()


def test_progress_logs_rate_and_eta(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with Progress(total=10, desc="rows", unit="row", interval=0.0) as bar:
        for _ in range(4):
            bar.update()
    lines = [r.getMessage() for r in caplog.records]
    assert any("rows: 1/10 row" in line and "ETA" in line for line in lines)
    assert bar.count == 4 and "done" in lines[-1]


def test_a_lightning_record_is_printed_once_after_the_stage_sets_up_logging() -> None:
    """Lightning gives its logger a console handler on import; the training stages import it after the stage's
    logging set-up, whose root handler prints the same records: each line must appear once."""
    import subprocess
    import sys

    code = (
        "import logging\n"
        "from vlmerge.runtime.logs import setup_logging\n"
        "setup_logging()\n"
        "import vlmerge.train.trainer\n"
        "logging.getLogger('lightning.fabric.utilities.distributed').info('Initializing distributed: once')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stderr.count("Initializing distributed: once") == 1, out.stderr
