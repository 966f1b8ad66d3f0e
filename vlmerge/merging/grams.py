"""Gram statistics of linear-layer inputs: XᵀX, Σx and the token count per hooked module.

Stored as sums (float64) with counts, so shards from several processes reduce exactly by
addition (:func:`reduce_grams`) and normalisation is a choice made at merge time: ``sum`` as
upstream, or per-token ``mean``. Module names are the hooked modules' own names, e.g.
``transformer.blocks.3.attn.v`` (the qkv input) or ``transformer.blocks.3.mlp.vl.fc2``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from vlmerge.merging.errors import GramsError
from vlmerge.merging.validate import is_finite


@dataclass(frozen=True)
class GramStats:
    """Per module name: ``xtx`` [D, D] = Σ xxᵀ, ``sums`` [D] = Σ x (float64), ``counts`` = tokens seen."""

    xtx: Mapping[str, torch.Tensor]
    sums: Mapping[str, torch.Tensor]
    counts: Mapping[str, int]

    @property
    def names(self) -> list[str]:
        return sorted(self.xtx)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Flat safetensors layout: ``<name>``, ``<name>.sum``, ``<name>.count`` (0-d int64)."""
        out: dict[str, torch.Tensor] = {}
        for name in self.names:
            out[name] = self.xtx[name]
            out[f"{name}.sum"] = self.sums[name]
            out[f"{name}.count"] = torch.tensor(self.counts[name], dtype=torch.int64)
        return out

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], source: str) -> GramStats:
        """Parse and check the flat layout: matching shapes, float64, finite, non-negative counts."""
        names = sorted(k for k in tensors if not k.endswith((".sum", ".count")))
        xtx, sums, counts = {}, {}, {}
        for name in names:
            if f"{name}.sum" not in tensors or f"{name}.count" not in tensors:
                raise GramsError(f"{source}: {name} has no .sum or .count entry")
            g, s, n = tensors[name], tensors[f"{name}.sum"], tensors[f"{name}.count"]
            dim = g.shape[0] if g.ndim == 2 else -1
            if g.shape != (dim, dim) or s.shape != (dim,) or n.ndim != 0:
                raise GramsError(
                    f"{source}: {name} has shapes {tuple(g.shape)}, {tuple(s.shape)}, {tuple(n.shape)}; "
                    "expected [D, D], [D] and a scalar count"
                )
            if not (is_finite(g) and is_finite(s)):
                raise GramsError(f"{source}: {name} contains NaN or Inf")
            if int(n) < 0:
                raise GramsError(f"{source}: {name} has a negative token count")
            xtx[name], sums[name], counts[name] = g.to(torch.float64), s.to(torch.float64), int(n)
        orphans = sorted(set(tensors) - set(names) - {f"{n}.sum" for n in names} - {f"{n}.count" for n in names})
        if orphans:
            raise GramsError(f"{source}: entries without a gram: {orphans[:5]}")
        return cls(xtx, sums, counts)

    def checked(self, name: str, where: str) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(G [D, D], s [D], n) for ``name`` as stored (raw sums), after O(D) checks of what a merge needs.

        ``where`` names the layer/expert that needs it. Errors: no such gram; no tokens seen; a gram
        that is all zero while it counts tokens (its expert would silently drop out of the merge); a
        negative diagonal entry (Σx_i² < 0: not positive semi-definite).
        """
        if name not in self.xtx:
            raise GramsError(f"no gram for {name} ({where}); the grams were collected on other data or another model")
        n = self.counts[name]
        if n == 0:
            raise GramsError(
                f"gram {name} ({where}) saw no tokens; collect it on data that routes through it, "
                "or merge only the experts the task uses (used_experts_only=<task>)"
            )
        g = self.xtx[name]
        diagonal = g.diagonal()
        low, high = torch.aminmax(diagonal)
        if float(low) < 0:
            i = int(diagonal.argmin())
            raise GramsError(
                f"gram {name} ({where}) is not positive semi-definite: diagonal entry {i} is {float(low):.3g}"
            )
        if float(high) == 0:
            raise GramsError(
                f"gram {name} ({where}) is all zero but counts {n} tokens: the statistics are corrupt "
                "(recollect them; this expert would drop out of the merge)"
            )
        return g, self.sums[name], n

    def statistics(self, name: str, normalize: str, where: str) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(G [D, D], s [D], n) for ``name``: raw sums, or divided by the token count with ``mean``.

        ``where`` names the layer/expert that needs it, for the errors of :meth:`checked`.
        """
        g, s, n = self.checked(name, where)
        if normalize == "mean":
            return g / n, s / n, 1.0
        return g, s, float(n)


def reduce_grams(shards: Sequence[GramStats]) -> GramStats:
    """Sum shards collected over disjoint data: equals the statistics of the union."""
    if not shards:
        raise GramsError("no gram shards to reduce")
    names = shards[0].names
    for i, shard in enumerate(shards[1:], 1):
        if shard.names != names:
            raise GramsError(
                f"gram shard {i} covers other modules than shard 0: {sorted(set(shard.names) ^ set(names))[:5]}"
            )
        bad = [n for n in names if shard.xtx[n].shape != shards[0].xtx[n].shape]
        if bad:
            raise GramsError(f"gram shard {i} disagrees in shape with shard 0 at {bad[:5]}")
    return GramStats(
        xtx={n: torch.stack([s.xtx[n] for s in shards]).sum(dim=0) for n in names},
        sums={n: torch.stack([s.sums[n] for s in shards]).sum(dim=0) for n in names},
        counts={n: sum(s.counts[n] for s in shards) for n in names},
    )
