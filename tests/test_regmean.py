"""RegMean against closed forms and least squares: equal grams, α = 0, the regression toy, ridge, bad grams."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import PICO
from vlmerge.merging import METHODS, GramsError, GramStats, gram_targets, merge, merge_with_report
from vlmerge.merging.regmean import regmean_solve, scale_offdiagonal
from vlmerge.merging.solve import solve_psd
from vlmerge.model import Modality, create_model, expert_layout, model_config

V, L, VL = Modality.V, Modality.L, Modality.VL
F64 = torch.float64
KEY = "transformer.blocks.0.mlp.fc1.weight"  # a real linear key: the method finds its gram names from it
BIAS = "transformer.blocks.0.mlp.fc1.bias"
GRAM = "transformer.blocks.0.mlp.{}.fc1"


def ms_state(seed: int = 0) -> dict[str, torch.Tensor]:
    model = create_model("pico", "modality_specific")
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}


def grams_from(inputs: dict[str, torch.Tensor]) -> GramStats:
    """Exact statistics of per-module inputs X [n, d] (float64)."""
    return GramStats(
        {n: x.T @ x for n, x in inputs.items()},
        {n: x.sum(0) for n, x in inputs.items()},
        {n: x.shape[0] for n, x in inputs.items()},
    )


def layout_grams(fill, seed: int = 0) -> GramStats:
    """Grams for every hook point of the small MS model, X from ``fill(name, dim, generator)``."""
    layout = expert_layout(model_config("pico"), "modality_specific")
    g = torch.Generator().manual_seed(seed)
    return grams_from(
        {
            name: fill(name, PICO["mlp_dim"] if name.endswith("fc2") else PICO["dim"], g)
            for name, _ in gram_targets(layout)
        }
    )


def regmean(experts, grams, exact: bool = False, **params):
    method = METHODS["regmean_exact_bias" if exact else "regmean"]
    return method.fn(
        experts, None, grams=grams, **({"alpha": 1.0, "normalize": "sum", "max_cond": 1e10, "unseen": "error"} | params)
    )


# ---------------------------------------------------------------------------------------------- closed forms
def test_equal_grams_give_the_plain_average() -> None:
    ms = ms_state()
    shared = torch.randn(200, PICO["mlp_dim"], generator=torch.Generator().manual_seed(3), dtype=F64)
    grams = layout_grams(lambda name, dim, g: shared[:, :dim])
    out = merge("regmean", ms, grams=grams, alpha=0.7)
    plain = merge("interpolation", ms, ratio=0.5)  # the average of two experts, and of three (1/3 each)
    for key in out:
        torch.testing.assert_close(out[key], plain[key], rtol=1e-5, atol=1e-5)
    layer2 = {m: ms[f"transformer.blocks.2.attn.{m}.proj.weight"] for m in ("v", "l", "vl")}
    torch.testing.assert_close(out["transformer.blocks.2.attn.proj.weight"], sum(layer2.values()) / 3)


def test_alpha_zero_is_the_diagonal_weighted_average() -> None:
    ms = ms_state(1)
    grams = layout_grams(
        lambda name, dim, g: torch.randn(3 * dim, dim, generator=g, dtype=F64) * torch.rand(dim, generator=g, dtype=F64)
    )
    out = merge("regmean", ms, grams=grams, alpha=0.0)
    for layer, m_set in ((0, ("v", "l")), (2, ("v", "l", "vl"))):
        weights = {m: ms[f"transformer.blocks.{layer}.mlp.{m}.fc2.weight"].to(F64) for m in m_set}
        diag = {m: grams.xtx[f"transformer.blocks.{layer}.mlp.{m}.fc2"].diagonal() for m in m_set}
        expected = sum(weights[m] * diag[m] for m in m_set) / sum(diag.values())  # per input column j
        torch.testing.assert_close(out[f"transformer.blocks.{layer}.mlp.fc2.weight"], expected.float())


def test_regmean_is_exact_on_a_linear_regression_toy() -> None:
    g = torch.Generator().manual_seed(0)
    d, out_dim = 6, 3
    xs = [torch.randn(n, d, generator=g, dtype=F64) + shift for n, shift in ((40, 0.0), (25, 1.5))]
    ys = [
        x @ torch.randn(d, out_dim, generator=g, dtype=F64)
        + 0.1 * torch.randn(x.shape[0], out_dim, generator=g, dtype=F64)
        for x in xs
    ]
    fits = [torch.linalg.lstsq(x, y).solution.T for x, y in zip(xs, ys)]  # [out, in] per expert
    union = torch.linalg.lstsq(torch.cat(xs), torch.cat(ys)).solution.T
    merged, record = regmean_solve(dict(zip((V, L), fits)), {m: x.T @ x for m, x in zip((V, L), xs)}, 1e10)
    torch.testing.assert_close(merged, union, rtol=1e-9, atol=1e-10)
    assert record["ridge"] == 0 and record["residual"] < 1e-12

    # The same through the registered method on a real key, with biases: plain RegMean averages the
    # biases, the exact-bias variant (inputs augmented with 1) reproduces least squares with an intercept.
    ones = [torch.cat([x, torch.ones(x.shape[0], 1, dtype=F64)], 1) for x in xs]
    fits_b = [torch.linalg.lstsq(x1, y).solution.T for x1, y in zip(ones, ys)]
    union_b = torch.linalg.lstsq(torch.cat(ones), torch.cat(ys)).solution.T
    experts = {
        KEY: {m: f[:, :-1].clone() for m, f in zip((V, L), fits_b)},
        BIAS: {m: f[:, -1].clone() for m, f in zip((V, L), fits_b)},
    }
    grams = grams_from({GRAM.format(m.value): x for m, x in zip((V, L), xs)})
    exact = regmean(experts, grams, exact=True).state
    torch.testing.assert_close(exact[KEY], union_b[:, :-1], rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(exact[BIAS], union_b[:, -1], rtol=1e-9, atol=1e-10)
    plain = regmean(experts, grams).state
    torch.testing.assert_close(plain[BIAS], (fits_b[0][:, -1] + fits_b[1][:, -1]) / 2)

    # normalize="mean" weights each expert's data by 1/n_m: weighted least squares.
    weights = torch.cat([torch.full((x.shape[0],), 1 / x.shape[0], dtype=F64) for x in xs]).sqrt()[:, None]
    weighted = torch.linalg.lstsq(torch.cat(xs) * weights, torch.cat(ys) * weights).solution.T
    mean = regmean({KEY: dict(zip((V, L), fits))}, grams, normalize="mean").state
    torch.testing.assert_close(mean[KEY], weighted, rtol=1e-9, atol=1e-10)


def test_exact_bias_on_qkv_keeps_q_and_v_biases_and_drops_k() -> None:
    g = torch.Generator().manual_seed(2)
    d = 4
    xs = [torch.randn(n, d, generator=g, dtype=F64) + s for n, s in ((30, 0.5), (20, -1.0))]
    key, prefix = "transformer.blocks.0.attn.qkv.weight", "transformer.blocks.0.attn."
    experts = {key: {}, prefix + "q_bias": {}, prefix + "v_bias": {}}
    targets = []
    for m, x in zip((V, L), xs):
        w, qb, vb = (
            torch.randn(3 * d, d, generator=g, dtype=F64),
            torch.randn(d, generator=g, dtype=F64),
            torch.randn(d, generator=g, dtype=F64),
        )
        experts[key][m], experts[prefix + "q_bias"][m], experts[prefix + "v_bias"][m] = w, qb, vb
        targets.append(x @ w.T + torch.cat([qb, torch.zeros(d, dtype=F64), vb]))  # each expert's own outputs
    ones = torch.cat([torch.cat(xs), torch.ones(sum(x.shape[0] for x in xs), 1, dtype=F64)], 1)
    union = torch.linalg.lstsq(ones, torch.cat(targets)).solution.T  # [3d, d+1]
    out = regmean(
        experts, grams_from({f"transformer.blocks.0.attn.{m.value}": x for m, x in zip((V, L), xs)}), exact=True
    ).state
    torch.testing.assert_close(out[key], union[:, :-1], rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(out[prefix + "q_bias"], union[:d, -1], rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(out[prefix + "v_bias"], union[2 * d :, -1], rtol=1e-9, atol=1e-10)


# ---------------------------------------------------------------------------------------------- numerics
def test_singular_grams_take_the_ridge_path_and_record_it() -> None:
    ms = ms_state(2)

    def dead_column(name: str, dim: int, g: torch.Generator) -> torch.Tensor:
        x = torch.randn(3 * dim, dim, generator=g, dtype=F64)
        if name.endswith("fc1"):
            x[:, 0] = 0  # an input dimension no token of any expert uses: Σ G is singular
        return x

    merged = merge_with_report("regmean", ms, grams=layout_grams(dead_column))
    records = merged.diagnostics["method_diagnostics"]["linear"]
    assert merged.diagnostics["method_diagnostics"]["ridged"] == [
        f"transformer.blocks.{i}.mlp.fc1.weight" for i in range(3)
    ]
    assert records["transformer.blocks.0.mlp.fc1.weight"]["ridge"] > 0
    assert records["transformer.blocks.0.attn.qkv.weight"]["ridge"] == 0
    assert records["transformer.blocks.0.attn.qkv.weight"]["residual"] < 1e-10
    assert all(torch.isfinite(v).all() for v in merged.state.values())
    # The ridge pulls toward the experts' mean: the unused input column gets exactly that.
    for i, experts in enumerate((("v", "l"), ("v", "l", "vl"), ("v", "l", "vl"))):
        columns = [ms[f"transformer.blocks.{i}.mlp.{m}.fc1.weight"][:, 0] for m in experts]
        torch.testing.assert_close(
            merged.state[f"transformer.blocks.{i}.mlp.fc1.weight"][:, 0], sum(columns) / len(columns)
        )


def test_solve_escalates_on_ill_conditioning_and_reports_residual() -> None:
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=F64))
    a = q @ torch.diag(torch.logspace(0, -14, 8, dtype=F64)) @ q.T  # PD but cond 1e14
    b = torch.randn(8, 2, generator=g, dtype=F64)
    solution = solve_psd(a, b, max_cond=1e10)
    assert solution.ridge > 0 and solution.cond_est <= 1e10 and 0 < solution.residual < 1
    well = solve_psd(a + torch.eye(8, dtype=F64), b)
    assert well.ridge == 0 and well.residual < 1e-14
    torch.testing.assert_close(well.x, torch.linalg.solve(a + torch.eye(8, dtype=F64), b))
    x = torch.randn(5, 5, generator=g, dtype=F64)
    torch.testing.assert_close(scale_offdiagonal(x, 0.25), 0.25 * x + 0.75 * torch.diag(torch.diag(x)))


# ---------------------------------------------------------------------------------------------- bad grams
def test_missing_or_foreign_grams_are_errors_naming_the_layer() -> None:
    ms = ms_state(3)
    grams = layout_grams(lambda name, dim, g: torch.randn(2 * dim, dim, generator=g, dtype=F64))
    no_vl = GramStats(
        {n: t for n, t in grams.xtx.items() if ".vl." not in n},
        {n: t for n, t in grams.sums.items() if ".vl." not in n},
        {n: c for n, c in grams.counts.items() if ".vl." not in n},
    )
    with pytest.raises(GramsError, match=r"transformer\.blocks\.1\.attn\.vl.*layer 1 \(expert vl\)"):
        merge("regmean", ms, grams=no_vl)
    # VQA uses only the vl expert from F on: one expert, nothing to solve, no vl gram needed.
    out = merge("regmean", ms, grams=no_vl, used_experts_only="vqa")
    assert torch.equal(out["transformer.blocks.2.mlp.fc1.weight"], ms["transformer.blocks.2.mlp.vl.fc1.weight"])
    wide = create_model("pico", "modality_specific", **{"dim": 24, "num_heads": 2}).state_dict()
    with pytest.raises(GramsError, match="takes 24 inputs: grams from another model"):
        merge("regmean", {k: torch.randn(v.shape) for k, v in wide.items()}, grams=grams)
    empty = GramStats(grams.xtx, grams.sums, {n: 0 for n in grams.counts})
    with pytest.raises(GramsError, match="saw no tokens"):
        merge("regmean", ms, grams=empty)


def test_unseen_experts_are_an_error_or_explicitly_skipped() -> None:
    # Pair data (VQA, NLVR2) never reaches the v and l experts from F on: their grams count 0 tokens.
    ms = ms_state(4)
    grams = layout_grams(lambda name, dim, g: torch.randn(2 * dim, dim, generator=g, dtype=F64))
    fusion = [n for n in grams.names if int(n.split(".")[2]) >= 1 and ".vl" not in n]
    pairs = GramStats(
        {n: grams.xtx[n] * (n not in fusion) for n in grams.names},
        grams.sums,
        {n: 0 if n in fusion else c for n, c in grams.counts.items()},
    )
    with pytest.raises(GramsError, match=r"transformer\.blocks\.1\.attn\.v \(layer 1, expert v\) saw no tokens"):
        merge("regmean", ms, grams=pairs)
    merged = merge_with_report("regmean", ms, grams=pairs, unseen="skip")
    layer2 = merged.diagnostics["method_diagnostics"]["linear"]["transformer.blocks.2.mlp.fc1.weight"]
    assert layer2 == {"experts": ["vl"], "skipped": ["v", "l"]}
    fc1 = merged.state["transformer.blocks.2.mlp.fc1.weight"]
    assert torch.equal(fc1, ms["transformer.blocks.2.mlp.vl.fc1.weight"])
    biases = [ms[f"transformer.blocks.2.mlp.{m}.fc1.bias"] for m in ("v", "l", "vl")]
    torch.testing.assert_close(merged.state["transformer.blocks.2.mlp.fc1.bias"], sum(biases) / 3)
    below = merged.diagnostics["method_diagnostics"]["linear"]["transformer.blocks.0.mlp.fc1.weight"]
    assert below["experts"] == ["v", "l"] and "skipped" not in below
