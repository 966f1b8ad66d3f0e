"""Atomic file outputs: write to a temporary sibling, fsync, then rename over the target.

A job killed half-way leaves at most a ``.tmp-<name>.*`` file behind, never a file under the final
name that looks complete; :func:`remove_stale_temps` clears those of one target when its stage runs
again. :func:`atomic_pair` writes a weights file and its JSON sidecar as one unit: the sidecar records
the weights' sha256, so a reader can tell a pair from two different writes.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import mmap
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def temp_prefix(target: Path) -> str:
    """The name prefix of ``target``'s temporary siblings (``.tmp-<name>.``, then random characters)."""
    return f".tmp-{target.name}."


def remove_stale_temps(target: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary siblings of ``target`` a killed earlier write left; returns them.

    Only names made by :func:`atomic_path` for this very target are touched (``.tmp-<name>.<random>``).
    """
    target = Path(target)
    if not target.parent.is_dir():
        return []
    stale = [p for p in target.parent.glob(f"{temp_prefix(target)}*") if p.is_file() and not p.is_symlink()]
    for path in stale:
        path.unlink(missing_ok=True)
        log.info("removed %s, left by an interrupted write of %s", path, target)
    return stale


def _temp_sibling(target: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(target), dir=target.parent)
    os.close(fd)
    return Path(tmp)


def _disk_full(err: BaseException) -> bool:
    """ENOSPC/EDQUOT, also as writers outside Python report it (safetensors: "No space left on device")."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)
    return "No space left on device" in text or "os error 28" in text or "Disk quota exceeded" in text


def _named(err: BaseException, target: Path) -> BaseException | None:
    """``err`` as an OSError naming ``target`` when it is a full disk without a file name, else None."""
    if not _disk_full(err) or (isinstance(err, OSError) and err.filename is not None):
        return None
    return OSError(errno.ENOSPC, "No space left on device", str(target))


def _fsync(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success it is renamed to ``target``.

    On any exception the temporary file is removed and ``target`` is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _temp_sibling(target)
    try:
        yield tmp_path
        _fsync(tmp_path)
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, target)
    except BaseException as err:
        tmp_path.unlink(missing_ok=True)
        if (named := _named(err, target)) is not None:
            raise named from err
        raise


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def atomic_pair(
    target: str | os.PathLike[str],
    sidecar: str | os.PathLike[str],
    write: Callable[[Path], None],
    record: Mapping[str, Any],
) -> str:
    """Write a weights file (``write(tmp)``) and its sidecar (``record`` + the weights' sha256) as one unit.

    Both go to temporary siblings first; then the weights are renamed into place, then the sidecar.
    A kill before the first rename leaves the old pair; a kill between the renames leaves new weights
    beside a sidecar that does not record their sha256, which readers refuse. Returns the sha256.
    """
    target, sidecar = Path(target), Path(sidecar)
    target.parent.mkdir(parents=True, exist_ok=True)
    sidecar.parent.mkdir(parents=True, exist_ok=True)
    tmp_weights = tmp_sidecar = None
    try:
        tmp_weights = _temp_sibling(target)
        tmp_sidecar = _temp_sibling(sidecar)
        write(tmp_weights)
        _fsync(tmp_weights)
        digest = sha256_file(tmp_weights)
        tmp_sidecar.write_bytes(_json_bytes(dict(record) | {"weights_sha256": digest}))
        _fsync(tmp_sidecar)
        os.chmod(tmp_weights, 0o644)
        os.chmod(tmp_sidecar, 0o644)
        os.replace(tmp_weights, target)
        os.replace(tmp_sidecar, sidecar)
    except BaseException as err:
        for tmp in (tmp_weights, tmp_sidecar):
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        if (named := _named(err, target)) is not None:
            raise named from err
        raise
    return digest


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(target: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON (stable bytes for identical content)."""
    atomic_write_bytes(target, _json_bytes(obj))


# Bytes of a file mapped at once while it is hashed (a multiple of every mmap allocation granularity).
HASH_WINDOW = 8 << 20


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20, stop: threading.Event | None = None) -> str:
    """The file's sha256, hashed in blocks of ``chunk`` bytes straight from read-only mappings of the
    file (with ``stop``: given up, between blocks, once it is set).

    Mappings hash the page cache in place: reading into a buffer first copied every byte once more,
    about a third of the hashing time (system time of the copy). The file is mapped
    :data:`HASH_WINDOW` bytes at a time, each window unmapped once hashed, so its pages count in the
    process's resident set one window at a time. A file shortened by another process while it is hashed
    ends the process with SIGBUS, as it would a merge that maps its inputs.
    """
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as fh:
        size = os.fstat(fh.fileno()).st_size
        for offset in range(0, size, HASH_WINDOW):
            length = min(HASH_WINDOW, size - offset)
            with (
                mmap.mmap(fh.fileno(), length, offset=offset, access=mmap.ACCESS_READ) as mapped,
                memoryview(mapped) as view,
            ):
                for start in range(0, length, chunk):
                    if stop is not None and stop.is_set():
                        return digest.hexdigest()
                    digest.update(view[start : start + chunk])
    return digest.hexdigest()
