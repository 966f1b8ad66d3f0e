"""Task-vector sparsification and sign consensus: TIES trimming, DARE dropping, elect + disjoint mean.

Magnitude trimming keeps the top-k % of |τ| (k in percent, TIES' convention): the ⌈k·n/100⌉-th
largest magnitude is the threshold and every entry at or above it survives (ties at the threshold
can keep a few more). ``per_tensor`` takes n over one tensor; ``global`` over every merged tensor
of that expert's task vector, as the TIES paper flattens the whole model.

:class:`MagnitudeSelect` finds that threshold exactly without holding (or sorting) all magnitudes:
a random sample brackets the rank, one counting pass over the magnitudes (streamed in parts) keeps
the count above the bracket and the few values inside it, and the threshold is selected among
those. A bracket that misses the rank (a sample far off, about 1 in 10⁹) is widened and counted
again, down to the whole range: the value is always the one :func:`magnitude_threshold` returns.
"""

from __future__ import annotations

import hashlib
import math
import threading

import numpy as np
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


# Sample sizes of the bracket (per tensor; over a whole task vector) and the margin around the rank
# in sample standard deviations.
SAMPLE, GLOBAL_SAMPLE, MARGIN = 1 << 14, 1 << 18, 6.0


class MagnitudeSelect:
    """Exact keep-th largest of ``total`` magnitudes (float64, ≥ 0) given in parts, in bounded memory.

    Use: :meth:`add_sample` on a random sample of the magnitudes (any parts), then repeatedly
    ``while not sel.done: sel.begin_pass(); [sel.count(part) for every part]; sel.end_pass()``;
    :attr:`value` is then ``float(kthvalue(all, total - keep + 1))`` (inf when ``keep`` is 0).
    """

    def __init__(self, total: int, keep: int) -> None:
        self.total, self.keep = total, keep
        self.value = math.inf
        self.done = keep == 0
        self._samples: list[torch.Tensor] = []
        self._widen = 1.0
        self._lo = self._hi = 0.0
        self._above = self._at = 0
        self._inside: list[torch.Tensor] = []
        self._lock = threading.Lock()

    def add_sample(self, magnitudes: torch.Tensor) -> None:
        self._samples.append(magnitudes.reshape(-1))

    def begin_pass(self) -> None:
        """Bracket the rank from the sample, widened after every miss (until it is the whole range)."""
        sample = torch.cat(self._samples).sort().values if self._samples else torch.empty(0, dtype=torch.float64)
        size, rank = sample.numel(), (self.total - self.keep) / self.total  # answer's ascending quantile
        pos = rank * size
        margin = self._widen * (MARGIN * math.sqrt(size * rank * (1 - rank)) + 4)
        i, j = math.floor(pos - margin), math.ceil(pos + margin)
        self._lo = float(sample[i]) if 0 <= i < size else -math.inf
        self._hi = float(sample[j]) if 0 <= j < size else math.inf
        self._above, self._at, self._inside = 0, 0, []

    def count(self, magnitudes: torch.Tensor, scratch: np.ndarray | None = None) -> None:
        """Count one part of the magnitudes: above the bracket, and keep those inside it. Parts may be
        counted from several threads at once; ``scratch`` (bool, at least twice the part's size, one
        per thread) holds the masks instead of fresh arrays."""
        flat = magnitudes.detach().reshape(-1).to(torch.float64).numpy()  # numpy's masks are cheaper here
        n = flat.size
        if scratch is None or scratch.size < 2 * n:
            scratch = np.empty(2 * n, dtype=bool)
        above, mask = scratch[:n], scratch[n : 2 * n]
        np.greater(flat, self._hi, out=above)
        count = int(np.count_nonzero(above))
        if self._lo == self._hi:  # one value: its count is enough
            at, inside = int(np.count_nonzero(np.equal(flat, self._lo, out=mask))), None
        else:
            np.greater_equal(flat, self._lo, out=mask)
            at, inside = 0, torch.from_numpy(flat[np.logical_xor(mask, above, out=mask)])  # lo ≤ x ≤ hi
        with self._lock:
            self._above += count
            self._at += at
            if inside is not None:
                self._inside.append(inside)

    def end_pass(self) -> None:
        """Select the threshold if the bracket holds it, else widen the bracket for another pass."""
        at = self._at + sum(t.numel() for t in self._inside)
        if self._above < self.keep <= self._above + at:
            if self._lo == self._hi:
                self.value = self._lo
            else:
                inside = torch.cat(self._inside)
                self.value = float(torch.kthvalue(inside, at - (self.keep - self._above) + 1).values)
            self.done = True
        self._inside = []
        self._widen *= 8


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
