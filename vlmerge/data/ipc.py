"""Opening one Arrow IPC file, memory-mapped, with errors that name it.

Kept outside :mod:`vlmerge.data.readers` (whose datasets import torch) so that stages that only
read tables, such as ``python -m vlmerge.vocab``, start without importing torch.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from vlmerge.errors import InputError


class ReaderError(InputError):
    """An arrow file, column or row cannot be read as the expected ViLT table."""


def open_ipc(path: Path) -> pa.ipc.RecordBatchFileReader:
    """Open one Arrow IPC *file* memory-mapped; missing or malformed files raise ReaderError."""
    if not Path(path).is_file():
        raise ReaderError(f"arrow file not found: {path}")
    try:
        return pa.ipc.open_file(pa.memory_map(str(path), "r"))
    except (pa.ArrowInvalid, OSError) as err:
        raise ReaderError(f"{path}: not an Arrow IPC file ({err})") from err
