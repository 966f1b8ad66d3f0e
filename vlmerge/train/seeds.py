"""Seeds derived from integers, so every random draw of a run is a function of where it happens.

A resumed run must draw exactly what an uninterrupted one draws. Per-process streams (a generator
seeded once, worker seeds) do not survive a restart; a seed derived from (run seed, what, where)
does. ``hash()`` is salted per process for strings, hence blake2b.
"""

from __future__ import annotations

import enum
import hashlib


class Stream(enum.IntEnum):
    """What a derived seed is for, so that two uses of the same position never share a draw."""

    STEP = 1  # dropout and stochastic depth of one training or validation batch
    ITM = 2  # hard-negative sampling of one batch
    MASK = 3  # MLM masking of one batch
    EPOCH = 4  # sample order and per-sample augmentation seeds of one data epoch


def derive_seed(*parts: int) -> int:
    """A non-negative 63-bit seed from ``parts`` (ints), identical in every process and run."""
    data = b"".join(int(p).to_bytes(16, "little", signed=True) for p in parts)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1
