"""Symmetric positive (semi-)definite solves for RegMean, with a ridge that escalates when needed.

Gram sums are PSD but can be singular (a dead input dimension, fewer tokens than dimensions) or
ill-conditioned (α = 1 keeps every off-diagonal correlation). We factor A with Cholesky in float64;
if the factorisation fails or the condition estimate exceeds ``max_cond`` we add ε·mean(diag A)·I,
ε on the ladder 1e-12, 1e-11, …, 1e-1, and record what was used. Never an explicit inverse.

The ridge pulls the solution toward a ``prior`` (RegMean passes the plain average of the experts):
(A + r·I) x = b + r·prior. Directions the data pins down barely move; a direction no input ever
uses (a zero row/column of A) gets the prior instead of 0.

**Cost.** The work is the Cholesky factorisation (n³/3 flops) and two triangular solves with k
right-hand sides (2n²k), both blocked so that nearly all flops are matrix products. With
``overwrite=True`` the factor is written over the lower triangle of A and the solution over b: no
n×n temporary is allocated. The strict upper triangle of A and copies of its diagonal blocks keep
the original matrix, so a ridge retry rebuilds A from them and the residual is measured against it.

**Condition estimate.** cond₂(A) = λ_max/λ_min, each from a few block power iterations with fixed
random starts: on A for λ_max (before factoring) and on A⁻¹ through the Cholesky factor for λ_min.
Both Rayleigh quotients approach their eigenvalue from inside, so the estimate is a lower bound
of the true condition number, in practice within a small factor of it. When it exceeds
``max_cond`` the ridge jumps straight to the smallest rung of the ladder that brings it below.

**Residual.** ‖A x − b‖_F/‖b‖_F against the *unregularised* A, estimated on a few random
combinations of the right-hand sides (a Gaussian sketch: O(n²) flops instead of the 2n²k of the
full product); it is a diagnostic, exact to within a small factor.

**Not PSD.** A negative diagonal entry, or a failed factorisation whose smallest eigenvalue is below
−1e-6·λ_max (more than rounding can explain), is an error naming that eigenvalue: the statistics are
corrupt, and a ridge would hide it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from vlmerge.merging.errors import MergeError

RIDGES = tuple(10.0**e for e in range(-12, 0))
MAX_COND = 1e10  # float64 keeps ~6 correct digits of the solution at this condition
BLOCK = 384  # block size of the factorisation and the triangular solves
PSD_TOLERANCE = 1e-6  # eigenvalues below −tol·λ_max are not rounding: the matrix is indefinite
_PROBES = 4  # random vectors of the power iterations and the residual sketch
_ITERATIONS = 3  # power iterations for each end of the spectrum
_SEED = 0


class NotPositiveSemiDefinite(MergeError):
    """A gram (or sum of grams) with a negative eigenvalue beyond rounding."""


@dataclass(frozen=True)
class Solution:
    """x solving A x = b; ``ridge`` = ε used (0: none); ``cond_est`` of the factored matrix;
    ``residual`` ≈ ‖A x − b‖ / ‖b‖ against the *unregularised* A."""

    x: torch.Tensor
    ridge: float
    cond_est: float
    residual: float

    def record(self) -> dict[str, float]:
        return {"ridge": self.ridge, "cond_est": self.cond_est, "residual": self.residual}


def cholesky_(a: torch.Tensor, block: int = BLOCK) -> int:
    """Overwrite the lower triangle of symmetric ``a`` [n, n] with its Cholesky factor L (A = LLᵀ).

    Reads the lower triangle only. Writes the lower triangle and the upper halves of the diagonal
    blocks (``block`` wide); the rest of the strict upper triangle is never touched. Returns 0, or
    the 1-based order of the leading minor that is not positive definite (LAPACK's ``info``).
    """
    n = a.shape[0]
    for j in range(0, n, block):
        e = min(j + block, n)
        factor, info = torch.linalg.cholesky_ex(a[j:e, j:e])  # LAPACK potrf: reads the lower triangle
        if int(info):
            return j + int(info)
        a[j:e, j:e].copy_(factor)
        if e == n:
            break
        panel = torch.linalg.solve_triangular(factor.T, a[e:, j:e], upper=True, left=False)  # A_ij L_jjᵀ⁻¹
        a[e:, j:e].copy_(panel)
        for c in range(e, n, block):  # trailing update, block columns from their diagonal block down
            a[c:, c : c + block].addmm_(panel[c - e :], panel[c - e : c - e + block].T, alpha=-1.0)
    return 0


def cholesky_solve_(chol: torch.Tensor, b: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """Overwrite ``b`` [n, k] with (LLᵀ)⁻¹ b for the lower factor L in ``chol``'s lower triangle."""
    n = chol.shape[0]
    for i in range(0, n, block):  # forward: L y = b
        e = min(i + block, n)
        if i:
            b[i:e].addmm_(chol[i:e, :i], b[:i], alpha=-1.0)
        b[i:e] = torch.linalg.solve_triangular(chol[i:e, i:e], b[i:e], upper=False)
    for i in range(((n - 1) // block) * block, -1, -block):  # backward: Lᵀ x = y
        e = min(i + block, n)
        if e < n:
            b[i:e].addmm_(chol[e:, i:e].T, b[e:], alpha=-1.0)
        b[i:e] = torch.linalg.solve_triangular(chol[i:e, i:e].T, b[i:e], upper=True)
    return b


def diagonal_blocks(a: torch.Tensor, block: int = BLOCK) -> list[torch.Tensor]:
    """Copies of the ``block``-wide diagonal blocks of ``a``: with its strict upper triangle, they keep
    all of symmetric A while :func:`cholesky_` overwrites the rest."""
    return [a[i : i + block, i : i + block].clone() for i in range(0, a.shape[0], block)]


def restore_(a: torch.Tensor, blocks: list[torch.Tensor], shift: float = 0.0, block: int = BLOCK) -> torch.Tensor:
    """Rebuild A + shift·I in place from ``a``'s strict upper triangle and the saved diagonal ``blocks``."""
    n = a.shape[0]
    for index, i in enumerate(range(0, n, block)):
        e = min(i + block, n)
        a[i:e, i:e].copy_(blocks[index])
        if shift:
            a[i:e, i:e].diagonal().add_(shift)
        if e < n:
            a[e:, i:e].copy_(a[i:e, e:].T)
    return a


def symmetric_matmul(a: torch.Tensor, blocks: list[torch.Tensor], y: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """A y for symmetric A given by ``a``'s strict upper triangle off the diagonal blocks and the saved
    diagonal ``blocks``; y [n, p]."""
    n = a.shape[0]
    out = torch.empty_like(y)
    for index, i in enumerate(range(0, n, block)):
        e = min(i + block, n)
        out[i:e] = blocks[index] @ y[i:e]
    for i in range(0, n, block):
        e = min(i + block, n)
        if e < n:
            out[i:e] += a[i:e, e:] @ y[e:]
            out[e:] += a[i:e, e:].T @ y[i:e]
    return out


def _probes(n: int, p: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(n, p, generator=torch.Generator().manual_seed(_SEED), dtype=dtype)


def largest_eigenvalue(a: torch.Tensor, iterations: int = _ITERATIONS) -> float:
    """λ_max of symmetric PSD ``a`` (full matrix) from block power iteration; a lower bound."""
    x = _probes(a.shape[0], _PROBES, a.dtype)
    for _ in range(iterations):
        x = a @ (x / x.norm(dim=0).clamp_min(1e-300))
    unit = x / x.norm(dim=0).clamp_min(1e-300)
    return float((unit * (a @ unit)).sum(0).max())  # max Rayleigh quotient over the iterates


def smallest_eigenvalue(chol: torch.Tensor, iterations: int = _ITERATIONS) -> float:
    """λ_min of A = LLᵀ (L in ``chol``'s lower triangle) from inverse iteration; an upper bound."""
    x = _probes(chol.shape[0], _PROBES, chol.dtype)
    for step in range(iterations + 1):
        y = torch.linalg.solve_triangular(chol, x / x.norm(dim=0).clamp_min(1e-300), upper=False)  # L⁻¹ x
        if step == iterations:
            break
        x = torch.linalg.solve_triangular(chol.T, y, upper=True)  # A⁻¹ x
    inverse_rq = float((y * y).sum(0).max())  # max xᵀA⁻¹x over the unit iterates
    return 1.0 / inverse_rq if inverse_rq > 0 else float("inf")


def _ridge_for(cond_target: float, lam_max: float, lam_min: float, scale: float, current: float) -> float:
    """The smallest rung above ``current`` whose shift brings (λ_max + s)/(λ_min + s) to ``cond_target``."""
    need = (lam_max - cond_target * lam_min) / (cond_target - 1.0) / scale if cond_target > 1.0 else float("inf")
    above = [r for r in RIDGES if r > current]
    return next((r for r in above if r >= need), above[-1] if above else RIDGES[-1])


def _check_indefinite(a: torch.Tensor, blocks: list[torch.Tensor], lam_max: float) -> None:
    """After a failed factorisation: an error if A has an eigenvalue below −tol·λ_max (restores A)."""
    restore_(a, blocks)
    lowest = float(torch.linalg.eigvalsh(a)[0])
    if lowest < -PSD_TOLERANCE * max(lam_max, 0.0):
        raise NotPositiveSemiDefinite(
            f"the gram matrix is not positive semi-definite: min eigenvalue {lowest:.3g} (max {lam_max:.3g})"
        )


def solve_psd(
    a: torch.Tensor,
    b: torch.Tensor,
    max_cond: float = MAX_COND,
    prior: torch.Tensor | Callable[[], torch.Tensor] | None = None,
    *,
    overwrite: bool = False,
    base: torch.Tensor | None = None,
) -> Solution:
    """Solve A x = b for A [n, n] symmetric PSD and b [n, k], float64; ``prior`` [n, k] (or a function
    returning it) anchors the ridge. With ``overwrite`` A and b are used as workspace (see the module doc).

    With ``base`` [n, k] the system is A x = b + A·base, solved as x = base + A⁻¹b (with a ridge r:
    base + (A + rI)⁻¹(b + r·(prior − base)), prior 0 when None): a caller that knows a close x needs
    no product with A to form the right-hand side. The residual is against the whole right-hand side
    b + A·base.
    """
    diagonal = a.diagonal().clone()
    if bool((diagonal < 0).any()):
        i = int(diagonal.argmin())
        raise NotPositiveSemiDefinite(
            f"the gram matrix is not positive semi-definite: diagonal entry {i} is {float(diagonal[i]):.3g}"
        )
    scale = float(diagonal.mean())
    if not scale > 0:
        raise MergeError("gram matrix has no positive diagonal entry (all inputs were zero)")
    if not overwrite:
        a, b = a.clone(), b.clone()
    lam_max = largest_eigenvalue(a)
    blocks = diagonal_blocks(a)
    sketch = _probes(b.shape[1], _PROBES, b.dtype)
    b_sketch = b @ sketch if base is None else b @ sketch + a @ (base @ sketch)
    b_norm = float(torch.linalg.matrix_norm(b_sketch))
    ridge, tried = 0.0, False
    while True:
        shift = ridge * scale
        if tried:
            restore_(a, blocks, shift)
        tried = True
        if cholesky_(a):
            if ridge == 0.0:
                _check_indefinite(a, blocks, lam_max)
            if ridge >= RIDGES[-1]:
                break
            ridge = next(r for r in RIDGES if r > ridge)
            continue
        lam_min = smallest_eigenvalue(a)
        cond = (lam_max + shift) / lam_min if lam_min > 0 else float("inf")
        if cond > max_cond:
            if ridge >= RIDGES[-1]:
                break
            ridge = _ridge_for(max_cond, lam_max, lam_min - shift, scale, ridge)
            continue
        if shift and prior is not None:
            b.add_(prior() if callable(prior) else prior, alpha=shift)
        if shift and base is not None:
            b.sub_(base, alpha=shift)
        x = cholesky_solve_(a, b)
        if base is not None:
            x.add_(base)
        residual = symmetric_matmul(a, blocks, x @ sketch) - b_sketch
        ratio = float(torch.linalg.matrix_norm(residual)) / b_norm if b_norm > 0 else 0.0
        return Solution(x, ridge, cond, ratio)
    raise MergeError(f"gram system stays singular with a ridge of {RIDGES[-1]}·mean(diag)")
