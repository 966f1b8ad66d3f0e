"""Which samples each rank sees, as a function of (seed, epoch, position), resumable mid-epoch.

A *key* is ``(index, draw)``: the dataset row and a seed for that sample's augmentation. Epoch e
shuffles every index with a generator seeded from (seed, e), gives each index of the epoch its own
draw from the same generator, drops the tail that does not fill a batch on every rank, and deals
the rest out like ``DistributedSampler`` (rank r takes positions r, r + world, …). The training
stream runs through epochs without end (Lightning stops at ``max_steps``), so a restart only needs
the number of batches this rank has already consumed.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from vlmerge.train.errors import TrainConfigError
from vlmerge.train.seeds import Stream, derive_seed

Key = tuple[int, int]  # (dataset index, augmentation seed)
_DRAW_LIMIT = 2**62
_CHUNK = 4096


def _epoch_draws(size: int, seed: int, epoch: int, shuffle: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(order [size], draw per dataset index [size]) of one epoch."""
    generator = torch.Generator().manual_seed(derive_seed(seed, Stream.EPOCH, epoch))
    order = torch.randperm(size, generator=generator) if shuffle else torch.arange(size)
    return order, torch.randint(_DRAW_LIMIT, (size,), generator=generator)


class ResumableSampler(Sampler[Key]):
    """Endless shuffled keys for one rank, starting after ``start_batch`` batches of ``batch_size``.

    Every epoch yields ``batches_per_epoch * batch_size`` keys per rank, so batches never straddle
    an epoch and all ranks step through epochs together.
    """

    def __init__(
        self, size: int, batch_size: int, seed: int, rank: int = 0, world: int = 1, start_batch: int = 0
    ) -> None:
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world, self.start_batch = rank, world, start_batch
        if not 0 <= rank < world or start_batch < 0:
            raise TrainConfigError(f"sampler: rank {rank} of {world}, start batch {start_batch}")
        if self.batches_per_epoch == 0:
            raise TrainConfigError(
                f"{size} training pairs cannot fill one batch of {batch_size} on each of {world} ranks"
            )

    @property
    def batches_per_epoch(self) -> int:
        return self.size // (self.world * self.batch_size)

    def epoch_keys(self, epoch: int, start: int = 0) -> Iterator[Key]:
        """This rank's keys of ``epoch`` in order, from its ``start``-th key on."""
        order, draws = _epoch_draws(self.size, self.seed, epoch, shuffle=True)
        mine = order[: self.batches_per_epoch * self.batch_size * self.world][self.rank :: self.world][start:]
        # In chunks: a Python list of every key of a 10M-pair corpus would hold ~1 GB.
        for chunk in mine.split(_CHUNK):
            yield from zip(chunk.tolist(), draws[chunk].tolist())

    def __iter__(self) -> Iterator[Key]:
        epoch, skip = divmod(self.start_batch, self.batches_per_epoch)
        while True:
            yield from self.epoch_keys(epoch, skip * self.batch_size)
            epoch, skip = epoch + 1, 0


def evaluation_keys(size: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> list[Key]:
    """This rank's share of the full batches of a dataset in file order (for validation)."""
    _, draws = _epoch_draws(size, seed, 0, shuffle=False)
    usable = size // (world * batch_size) * world * batch_size
    if usable == 0:
        raise TrainConfigError(
            f"{size} validation pairs cannot fill one batch of {batch_size} on each of {world} ranks"
        )
    # Contiguous blocks per rank keep each rank's batches made of neighbouring rows.
    per_rank = usable // world
    indices = range(rank * per_rank, (rank + 1) * per_rank)
    return [(i, int(draws[i])) for i in indices]
