"""Cross-rank gathering for contrastive losses under data parallelism.

Without ``torch.distributed`` (or with one process) every function here is the identity, so the
objectives run unchanged on one CPU and on many GPUs. Every rank must pass tensors of the same
shape (data loaders use ``drop_last=True``): a collective over unequal shapes fails or hangs.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn


def is_distributed() -> bool:
    """True when a default process group exists with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of data-parallel ranks (1 without ``torch.distributed``)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank (0 without ``torch.distributed``)."""
    return dist.get_rank() if is_distributed() else 0


def rank_offset(local_batch: int) -> int:
    """Row of this rank's first sample in a gathered batch: ``rank * local_batch``."""
    return rank() * local_batch


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank in rank order, keeping the autograd graph.

    x: [B, ...] -> [world * B, ...]. In backward each rank receives the *sum* over ranks of the
    gradients flowing into its own slice (a reduce-scatter), so its local features get the gradient
    of the sum of every rank's loss, not only of its own; see ``itc.contrastive_loss`` for what
    that means after data-parallel gradient averaging.
    """
    if not is_distributed():
        return x
    # torch marks this function deprecated in favour of a private module
    # (torch.distributed._functional_collectives); the public one is kept on purpose.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*nn.functional.all_gather is deprecated", category=FutureWarning)
        parts = dist_fn.all_gather(x)
    return torch.cat(parts, dim=0)


@torch.no_grad()
def all_gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank in rank order, without gradient. x: [B, ...] -> [world * B, ...].

    For the inputs a rank needs to build hard-negative pairs drawn from other ranks' samples.
    """
    if not is_distributed():
        return x
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x)
    return torch.cat(parts, dim=0)
