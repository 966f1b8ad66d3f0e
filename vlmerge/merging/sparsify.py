"""Task-vector sparsification and sign consensus: TIES trimming, DARE dropping, elect + disjoint mean.

Magnitude trimming keeps the top-k % of |τ| (k in percent, TIES' convention): the ⌈k·n/100⌉-th
largest magnitude is the threshold and every entry at or above it survives (ties at the threshold
can keep a few more). ``per_tensor`` takes n over one tensor; ``global`` over every merged tensor
of that expert's task vector, as the TIES paper flattens the whole model.
"""

from __future__ import annotations

import hashlib
import math

import torch

from vlmerge.model import Modality


def keep_count(numel: int, k: float) -> int:
    """How many of ``numel`` entries the top-k % keeps."""
    return min(numel, math.ceil(k * numel / 100))


def magnitude_threshold(magnitudes: torch.Tensor, k: float) -> float:
    """The smallest |τ| the top-k % keeps (inf keeps nothing); magnitudes: any shape, flattened."""
    flat = magnitudes.reshape(-1)
    keep = keep_count(flat.numel(), k)
    if keep == 0:
        return math.inf
    return float(torch.kthvalue(flat, flat.numel() - keep + 1).values)


def trim(tau: torch.Tensor, threshold: float) -> torch.Tensor:
    """τ with every entry below ``threshold`` in magnitude set to 0."""
    return torch.where(tau.abs() >= threshold, tau, torch.zeros((), dtype=tau.dtype))


def tensor_seed(seed: int, key: str, modality: Modality) -> int:
    """A 63-bit seed for one tensor of one expert: DARE's mask does not depend on iteration order."""
    digest = hashlib.sha256(f"{seed}:{key}:{modality.value}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def dare_drop(tau: torch.Tensor, p: float, seed: int, rescale: bool) -> torch.Tensor:
    """Drop each entry with probability p (DARE, Yu et al. 2023, arXiv 2311.03099), rescale by 1/(1−p)."""
    generator = torch.Generator().manual_seed(seed)
    keep = torch.rand(tau.shape, generator=generator, dtype=torch.float64) >= p
    kept = torch.where(keep, tau, torch.zeros((), dtype=tau.dtype))
    return kept / (1.0 - p) if rescale else kept


def disjoint_mean(taus: list[torch.Tensor]) -> torch.Tensor:
    """TIES' elect + disjoint merge (Yadav et al. 2023, arXiv 2306.01708).

    Elected sign γ = sign(Σ_m τ_m); each entry averages the τ_m that are non-zero with sign γ (0 if none).
    """
    stacked = torch.stack(taus)  # [M, ...]
    elected = torch.sign(stacked.sum(dim=0))
    agree = (torch.sign(stacked) == elected) & (stacked != 0)
    total = torch.where(agree, stacked, torch.zeros((), dtype=stacked.dtype)).sum(dim=0)
    return total / agree.sum(dim=0).clamp(min=1)
