"""Symmetric positive (semi-)definite solves for RegMean, with a ridge that escalates when needed.

Gram sums are PSD but can be singular (a dead input dimension, fewer tokens than dimensions) or
ill-conditioned (α = 1 keeps every off-diagonal correlation). We factor A with Cholesky in float64;
if the factorisation fails or the condition estimate exceeds ``max_cond`` we add ε·mean(diag A)·I,
ε = 1e-12, 1e-11, …, 1e-1, and record what was used. Never an explicit inverse.

The ridge pulls the solution toward a ``prior`` (RegMean passes the plain average of the experts):
(A + r·I) x = b + r·prior. Directions the data pins down barely move; a direction no input ever
uses (a zero row/column of A) gets the prior instead of 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlmerge.merging.errors import MergeError

RIDGES = tuple(10.0**e for e in range(-12, 0))
MAX_COND = 1e10  # float64 keeps ~6 correct digits of the solution at this condition


@dataclass(frozen=True)
class Solution:
    """x solving A x = b; ``ridge`` = ε used (0: none); ``cond_est`` of the factored matrix;
    ``residual`` = ‖A x − b‖ / ‖b‖ against the *unregularised* A."""

    x: torch.Tensor
    ridge: float
    cond_est: float
    residual: float

    def record(self) -> dict[str, float]:
        return {"ridge": self.ridge, "cond_est": self.cond_est, "residual": self.residual}


def condition_estimate(chol: torch.Tensor) -> float:
    """(max/min diagonal of the Cholesky factor)²: a cheap lower bound of cond₂(A) that grows with it."""
    diag = chol.diagonal()
    return float((diag.max() / diag.min()) ** 2)


def solve_psd(
    a: torch.Tensor, b: torch.Tensor, max_cond: float = MAX_COND, prior: torch.Tensor | None = None
) -> Solution:
    """Solve A x = b for A [n, n] symmetric PSD and b [n, k], float64; ``prior`` [n, k] anchors the ridge."""
    scale = float(a.diagonal().mean())
    if not scale > 0:
        raise MergeError("gram matrix has no positive diagonal entry (all inputs were zero)")
    eye = torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
    for ridge in (0.0, *RIDGES):
        chol, info = torch.linalg.cholesky_ex(a + ridge * scale * eye if ridge else a)  # ridge 0: A itself
        if int(info) != 0:
            continue
        cond = condition_estimate(chol)
        if cond > max_cond:
            continue
        shift = ridge * scale
        x = torch.cholesky_solve(b + shift * prior if shift and prior is not None else b, chol)
        norm = float(torch.linalg.matrix_norm(b))
        residual = float(torch.linalg.matrix_norm(a @ x - b)) / norm if norm > 0 else 0.0
        return Solution(x, ridge, cond, residual)
    raise MergeError(f"gram system stays singular with a ridge of {RIDGES[-1]}·mean(diag)")
