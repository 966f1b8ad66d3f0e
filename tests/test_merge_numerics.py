"""Merge numerics: the blocked RegMean solve against naive float64 references, the condition estimate on
grams of known condition number, and the errors for outputs and grams that cannot be merged."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.test_regmean import layout_grams, ms_state
from vlmerge.catalog.methods import METHOD_INFO
from vlmerge.errors import ConfigError
from vlmerge.merging import GramsError, GramStats, MergeError, merge, merge_with_report
from vlmerge.merging.regmean import regmean_solve, scale_offdiagonal, scale_offdiagonal_
from vlmerge.merging.solve import (
    cholesky_,
    cholesky_solve_,
    diagonal_blocks,
    restore_,
    solve_psd,
    symmetric_matmul,
)
from vlmerge.merging.validate import check_grams_task, is_finite
from vlmerge.model import Modality, create_model

V, L, VL = Modality.V, Modality.L, Modality.VL
F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def spd(n: int, cond: float, seed: int = 0) -> torch.Tensor:
    """G = Q diag(s) Qᵀ with s log-spaced from 1 down to 1/cond: cond₂(G) = cond exactly."""
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen(seed), dtype=F64))
    s = torch.logspace(0, -math.log10(cond), n, dtype=F64)
    g = (q * s) @ q.T
    return (g + g.T) / 2


def gram(n: int, tokens: int, seed: int) -> torch.Tensor:
    x = torch.randn(tokens, n, generator=gen(seed), dtype=F64) * torch.rand(n, generator=gen(seed + 1), dtype=F64)
    return x.T @ x


# ---------------------------------------------------------------------------------------------- blocked kernels
@pytest.mark.parametrize("n", [1, 7, 16, 50])
def test_blocked_cholesky_solve_restore_and_symmetric_product_match_torch(n: int) -> None:
    a = gram(n, 2 * n + 3, seed=n)
    b = torch.randn(n, 5, generator=gen(1), dtype=F64)
    work = a.clone()
    blocks = diagonal_blocks(work, block=16)
    assert cholesky_(work, block=16) == 0
    torch.testing.assert_close(work.tril(), torch.linalg.cholesky(a), rtol=1e-12, atol=1e-12)
    assert torch.equal(work.triu(16), a.triu(16))  # the strict upper triangle off the diagonal blocks is kept
    x = cholesky_solve_(work, b.clone(), block=16)
    torch.testing.assert_close(x, torch.linalg.solve(a, b), rtol=1e-9, atol=1e-10)
    y = torch.randn(n, 3, generator=gen(2), dtype=F64)
    torch.testing.assert_close(symmetric_matmul(work, blocks, y, block=16), a @ y, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(restore_(work, blocks, 0.5, block=16), a + 0.5 * torch.eye(n, dtype=F64))


def test_cholesky_reports_the_first_failing_minor() -> None:
    a = gram(40, 100, seed=3)
    a[25, 25] = -1.0  # minor 26 stops being positive definite
    assert cholesky_(a.clone(), block=16) == 26


# ---------------------------------------------------------------------------------------------- RegMean vs naive
@pytest.mark.parametrize(("alpha", "normalize"), [(1.0, "sum"), (0.9, "sum"), (0.0, "sum"), (0.7, "mean")])
def test_regmean_solve_equals_the_textbook_formula_in_float64(alpha: float, normalize: str) -> None:
    n, k = 40, 24
    grams = {V: gram(n, 90, 10), L: gram(n, 60, 20), VL: gram(n, 130, 30)}
    tokens = {V: 90, L: 60, VL: 130}
    weights = {m: torch.randn(k, n, generator=gen(40 + i)) for i, m in enumerate(grams)}
    scales = {m: 1.0 / tokens[m] if normalize == "mean" else 1.0 for m in grams}
    before = {m: g.clone() for m, g in grams.items()}
    merged, record = regmean_solve(weights, grams, 1e10, alpha=alpha, scales=scales)
    # Textbook: G̃_m = c_m(αG_m + (1−α)diag G_m), W = (Σ W_m G̃_m)(Σ G̃_m)⁻¹, one dense solve.
    tilde = {m: scales[m] * (alpha * g + (1 - alpha) * torch.diag(torch.diag(g))) for m, g in grams.items()}
    total = torch.stack(list(tilde.values())).sum(0)
    rhs = torch.stack([weights[m].to(F64) @ tilde[m] for m in grams]).sum(0)
    expected = torch.linalg.solve(total, rhs.T).T  # total is symmetric: W = rhs·total⁻¹
    torch.testing.assert_close(merged, expected, rtol=1e-10, atol=1e-12)
    assert record["ridge"] == 0 and record["residual"] < 1e-12
    assert all(torch.equal(grams[m], before[m]) for m in grams)  # the grams are not written to


def test_in_place_offdiagonal_scaling_matches_the_reference_and_alpha_one_does_nothing() -> None:
    g = gram(30, 50, 5)
    for alpha in (0.0, 0.25, 0.9):
        torch.testing.assert_close(scale_offdiagonal_(g.clone(), alpha), scale_offdiagonal(g, alpha), rtol=0, atol=0)
    same = g.clone()
    assert scale_offdiagonal_(same, 1.0) is same and torch.equal(same, g)


def test_solve_leaves_its_inputs_alone_unless_told_to_overwrite() -> None:
    a, b = gram(20, 40, 6), torch.randn(20, 3, generator=gen(7), dtype=F64)
    a0, b0 = a.clone(), b.clone()
    solution = solve_psd(a, b)
    assert torch.equal(a, a0) and torch.equal(b, b0)
    torch.testing.assert_close(solution.x, torch.linalg.solve(a0, b0), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------- condition estimate
@pytest.mark.parametrize("cond", [1e2, 1e5, 1e8, 1e11])
def test_condition_estimate_is_within_a_factor_ten_of_the_truth(cond: float) -> None:
    a = spd(120, cond, seed=int(math.log10(cond)))
    b = torch.randn(120, 2, generator=gen(0), dtype=F64)
    solution = solve_psd(a, b, max_cond=1e15)
    assert solution.ridge == 0
    assert cond / 10 <= solution.cond_est <= cond * 1.01  # a lower bound, close to the truth


def test_ridge_is_added_exactly_when_the_condition_exceeds_max_cond() -> None:
    b = torch.randn(80, 2, generator=gen(1), dtype=F64)
    for cond in (1e4, 1e7, 1e9):
        a = spd(80, cond, seed=5)
        assert solve_psd(a, b, max_cond=2 * cond).ridge == 0
        ridged = solve_psd(a, b, max_cond=cond / 2)
        assert ridged.ridge > 0 and ridged.cond_est <= cond / 2
        assert ridged.ridge <= 1e-3  # the smallest rung that is enough, not the top of the ladder
    # Scaled to a unit diagonal, a Cholesky-diagonal ratio reads small while cond₂ is ~1e12: the ridge comes.
    a = spd(60, 1e12, seed=2)
    d = a.diagonal().rsqrt()
    unit = d[:, None] * a * d[None, :]
    solution = solve_psd(unit, b[:60], max_cond=1e10)
    assert solution.ridge > 0 and solution.cond_est <= 1e10


# ---------------------------------------------------------------------------------------------- bad grams
def _with(grams: GramStats, name: str, xtx: torch.Tensor) -> GramStats:
    return GramStats(grams.xtx | {name: xtx}, grams.sums, grams.counts)


def test_a_zeroed_gram_with_tokens_is_an_error_naming_layer_and_expert() -> None:
    ms = ms_state(5)
    grams = layout_grams(lambda name, dim, g: torch.randn(3 * dim, dim, generator=g, dtype=F64))
    name = "transformer.blocks.1.mlp.l.fc1"
    zeroed = _with(grams, name, torch.zeros_like(grams.xtx[name]))
    for unseen in ("error", "skip"):  # skipping is for zero tokens, not for zeroed statistics
        with pytest.raises(GramsError, match=rf"{name} \(layer 1, expert l\) is all zero but counts \d+ tokens"):
            merge("regmean", ms, grams=zeroed, unseen=unseen)


def test_non_psd_grams_are_errors_naming_the_layer_not_all_zero() -> None:
    ms = ms_state(6)
    grams = layout_grams(lambda name, dim, g: torch.randn(3 * dim, dim, generator=g, dtype=F64))
    name = "transformer.blocks.0.attn.v.proj"
    negated = _with(grams, name, -grams.xtx[name])
    with pytest.raises(GramsError, match=rf"{name} \(layer 0, expert v\) is not positive semi-definite"):
        merge("regmean", ms, grams=negated)
    # Positive diagonal, negative eigenvalue: found when the layer's summed grams are factored.
    g, other = grams.xtx[name], grams.xtx[name.replace(".v.", ".l.")]
    values, vectors = torch.linalg.eigh(g)
    depth = float(values[0]) + float(torch.linalg.eigvalsh(other)[-1]) + 1.0  # the sum with l's gram dips too
    indefinite = g - depth * torch.outer(vectors[:, 0], vectors[:, 0])
    assert float(indefinite.diagonal().min()) > 0
    bent = _with(grams, name, indefinite)
    with pytest.raises(GramsError, match=r"attn\.proj\.weight \(layer 0\).*not positive semi-definite") as err:
        merge("regmean", ms, grams=bent)
    assert f"{name} (expert v: min eigenvalue" in str(err.value) and "all inputs were zero" not in str(err.value)


def test_grams_of_another_task_are_refused_naming_both() -> None:
    with pytest.raises(GramsError, match="grams of task coco, but the merge keeps the experts of task vqa"):
        check_grams_task("coco", "vqa", "g.safetensors")
    check_grams_task("vqa", "vqa", "g.safetensors")
    check_grams_task("f30k", "retrieval", "g.safetensors")
    check_grams_task("coco", None, "g.safetensors")  # all experts merge: any task's grams weigh them


# ---------------------------------------------------------------------------------------------- outputs
def test_non_finite_output_is_an_error_naming_key_and_method() -> None:
    ms = ms_state(7)
    seed = {k: torch.randn(v.shape, generator=gen(8)) for k, v in create_model("pico", "shared").state_dict().items()}
    key = "transformer.blocks.0.mlp.fc2.weight"
    for m in ("v", "l"):  # finite float32 inputs whose task vectors, scaled by λ = 2, overflow float32
        ms[f"transformer.blocks.0.mlp.{m}.fc2.weight"] = torch.full_like(seed[key], 3e38)
    seed[key] = torch.full_like(seed[key], -3e38)
    with pytest.raises(MergeError, match=rf"task_arithmetic \(lam=2\.0, subset=None\) produced NaN or Inf in {key}"):
        merge("task_arithmetic", ms, seed_state=seed, lam=2.0)
    assert all(is_finite(t) for t in merge("task_arithmetic", ms, seed_state=seed, lam=0.0).values())


@pytest.mark.parametrize("method", ["arithmetic", "task_arithmetic", "ties", "dare"])
def test_lambda_has_a_physical_range(method: str) -> None:
    info = METHOD_INFO[method]
    for bad in ("inf", "1e6", "-0.5", "nan"):
        with pytest.raises(ConfigError, match=r"lam="):
            info.resolve({"lam": bad})
    assert info.resolve({"lam": "2"})["lam"] == 2.0 and info.resolve({"lam": 0})["lam"] == 0.0
    with pytest.raises(ConfigError, match="max_cond"):
        METHOD_INFO["regmean"].resolve({"max_cond": "inf"})


def test_merge_with_report_rejects_lambda_out_of_range_before_merging() -> None:
    with pytest.raises(MergeError, match="lam='inf'"):
        merge_with_report("arithmetic", ms_state(9), seed_state=None, lam="inf")


def test_ridged_solve_equals_the_textbook_ridge_formula() -> None:
    n, k = 30, 12
    grams = {V: gram(n, 80, 50), L: gram(n, 70, 60)}
    for g in grams.values():  # input 0 is never used: Σ G is singular
        g[0, :] = 0
        g[:, 0] = 0
    weights = {m: torch.randn(k, n, generator=gen(70 + i)) for i, m in enumerate(grams)}
    merged, record = regmean_solve(weights, grams, 1e10)
    assert record["ridge"] > 0
    total = grams[V] + grams[L]
    shift = record["ridge"] * float(total.diagonal().mean())
    mean = (weights[V].to(F64) + weights[L].to(F64)) / 2
    rhs = grams[V] @ weights[V].to(F64).T + grams[L] @ weights[L].to(F64).T + shift * mean.T
    expected = torch.linalg.solve(total + shift * torch.eye(n, dtype=F64), rhs).T
    torch.testing.assert_close(merged, expected, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(merged[:, 0], mean[:, 0])  # the unused input takes the experts' mean


def test_bench_prints_the_regmean_figure_beside_its_floor(capsys: pytest.CaptureFixture[str]) -> None:
    from vlmerge.bench.merge import regmean_gemm

    regmean_gemm("1", "1")
    figure = json.loads(capsys.readouterr().out)
    assert figure["layers"] == 4 and figure["gflop"] == pytest.approx(
        sum(6 * n * n * k + n**3 / 3 for n, k in ((768, 2304), (768, 768), (768, 3072), (3072, 768))) / 1e9
    )
    assert figure["seconds"] > 0 and figure["ratio"] == pytest.approx(figure["seconds"] / figure["floor_s"])
