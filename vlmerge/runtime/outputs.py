"""Inputs are never overwritten: the check every writing stage runs before it reads anything.

A stage's outputs are named by flags (``--out``) and so are its inputs (``--ms``, ``--init`` …). A typo
or a copied command that points ``--out`` at an input — or at an input's sidecar, which a checkpoint
writes beside its weights — would replace the user's file with the result. :func:`check_outputs` refuses
that before any work is done, comparing resolved paths and, for files that exist, device and inode (a
hard link is the same file under another name). It also refuses an output that is an existing
directory or lies below a file, and a checkpoint output whose own sidecar would be itself (``--out m.json``). Once the
outputs are known to be safe, it removes the ``.tmp-*`` files a killed earlier run of the same outputs
left beside them (:func:`~vlmerge.runtime.atomic.remove_stale_temps`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from vlmerge.errors import InputError
from vlmerge.runtime.atomic import remove_stale_temps

SIDECAR_SUFFIX = ".json"

Named = tuple[str, "str | os.PathLike[str] | None"]


class OutputError(InputError):
    """An output path that would overwrite an input, or that cannot be a file."""


def with_sidecar(flag: str, path: str | os.PathLike[str] | None) -> list[Named]:
    """A checkpoint-like file and its JSON sidecar, named for messages (``--out`` and ``--out's sidecar``).

    The file may not itself carry the sidecar's suffix: the pair would be one file.
    """
    if path is None:
        return []
    path = Path(path)
    if path.suffix == SIDECAR_SUFFIX:
        raise OutputError(
            f"{flag} {path}: a {SIDECAR_SUFFIX} name is the sidecar of a weights file; give the weights' name "
            f"(e.g. {path.with_suffix('.safetensors').name})"
        )
    return [(flag, path), (f"{flag}'s sidecar", path.with_suffix(SIDECAR_SUFFIX))]


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether ``a`` and ``b`` name one file: equal resolved paths, or (both existing) equal device and inode."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    ia, ib = _identity(a), _identity(b)
    return ia is not None and ia == ib


def check_outputs(outputs: Iterable[Named], inputs: Iterable[Named], *, clean_temps: bool = True) -> None:
    """Refuse outputs that are directories or that are one of ``inputs``; then clear their stale temp files.

    ``outputs`` and ``inputs`` are (name for messages, path) pairs; ``None`` paths are skipped. Use
    :func:`with_sidecar` for checkpoint and gram files, whose sidecar is written (or read) too.
    """
    outs = [(name, Path(p)) for name, p in outputs if p is not None]
    ins = [(name, Path(p)) for name, p in inputs if p is not None]
    for name, out in outs:
        if out.is_dir():
            raise OutputError(f"{name} {out} is an existing directory, not a file")
        blocked = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
        if blocked is not None:
            raise OutputError(f"{name} {out}: {blocked} is a file, not a directory")
        for in_name, source in ins:
            if same_file(out, source):
                raise OutputError(
                    f"{name} {out} is the input {in_name} {source}; writing it would destroy that input "
                    "(choose another output path)"
                )
    for i, (name, out) in enumerate(outs):
        for other_name, other in outs[i + 1 :]:
            if same_file(out, other):
                raise OutputError(f"{name} {out} and {other_name} {other} are the same file")
    if clean_temps:
        for _, out in outs:
            remove_stale_temps(out)


__all__ = ["OutputError", "check_outputs", "same_file", "with_sidecar"]
