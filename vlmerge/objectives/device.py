"""Whether reading a value back from a tensor's device stalls it (a host synchronisation).

On CUDA a read such as ``bool(t.any())`` waits for every queued kernel, so the training step never
reads back: checks run on the device (``torch._assert_async``) and shapes never depend on values. On
the CPU a read costs nothing, so the step may check inputs eagerly and skip work by value.
"""

from __future__ import annotations

import torch

# Device types whose reads stall queued work (a set, so that a test can run the no-read path on the CPU).
STALLING_DEVICE_TYPES: set[str] = {"cuda"}


def reads_stall(tensor: torch.Tensor) -> bool:
    """True where reading ``tensor``'s values into Python would wait for its device."""
    return tensor.device.type in STALLING_DEVICE_TYPES
