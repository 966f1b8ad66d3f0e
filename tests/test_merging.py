"""Merge methods and key mapping: closed forms, naive per-element references, invariants, bad inputs."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch

from tests.conftest import PICO
from vlmerge.merging import METHODS, GramStats, MergeError, block_groups, gram_targets, infer_layout, merge
from vlmerge.merging.apply import merge_with_report
from vlmerge.merging.sparsify import tensor_seed
from vlmerge.merging.task_arithmetic import generalized_task_arithmetic
from vlmerge.model import Modality, create_model, expand_experts, expert_layout, model_config
from vlmerge.model.checkpoint import strict_load

V, L, VL = Modality.V, Modality.L, Modality.VL
ABLATIONS = ("modality_specific", "attn", "ffn", "ln")


def random_state(sharing: str, seed: int, **overrides) -> dict[str, torch.Tensor]:
    """A state dict of the small model with every parameter random (no trivial 0 or 1 weights)."""
    torch.manual_seed(seed)
    model = create_model("pico", sharing, **overrides)
    return {
        k: torch.randn(v.shape, generator=torch.Generator().manual_seed(seed * 1000 + i))
        for i, (k, v) in enumerate(model.state_dict().items())
    }


def random_grams(layout, seed: int = 0) -> GramStats:
    """Well-conditioned random gram statistics for every hook point of ``layout``."""
    g = torch.Generator().manual_seed(seed)
    xtx, sums, counts = {}, {}, {}
    for name, _ in gram_targets(layout):
        dim = PICO["mlp_dim"] if name.endswith("fc2") else PICO["dim"]
        x = torch.randn(4 * dim, dim, generator=g, dtype=torch.float64)
        xtx[name], sums[name], counts[name] = x.T @ x, x.sum(0), x.shape[0]
    return GramStats(xtx, sums, counts)


def inputs_for(sharing: str = "modality_specific", **overrides):
    ms = random_state(sharing, 1, **overrides)
    seed = random_state("shared", 2, **overrides)
    layout = expert_layout(model_config("pico", **overrides), sharing)
    return ms, seed, random_grams(layout), layout


def run_all(ms, seed, grams, **params):
    """Every registered method with its defaults (and ``params`` for all)."""
    return {name: merge(name, ms, seed_state=seed, grams=grams, **params) for name in METHODS}


def block(key: str) -> bool:
    return key.startswith("transformer.blocks.") and "gamma" not in key


# ---------------------------------------------------------------------------------------------- key mapping
@pytest.mark.parametrize("num_layers", [3, 5])
@pytest.mark.parametrize("sharing", ABLATIONS)
def test_key_mapping_follows_the_model_structure(sharing: str, num_layers: int) -> None:
    ms_keys = create_model("pico", sharing, **{"num_layers": num_layers}).state_dict().keys()
    ma_keys = create_model("pico", "shared", **{"num_layers": num_layers}).state_dict().keys()
    layout = infer_layout(ms_keys)
    assert (layout.num_layers, layout.fusion_start, layout.sharing.value) == (num_layers, num_layers - 2, sharing)
    groups = block_groups(layout)
    per_expert = {k for k in ms_keys if any(f".{m}." in k for m in ("v", "l", "vl"))}
    assert {k for g in groups for _, k in g.ms_keys} == per_expert
    assert {g.ma_key for g in groups} <= set(ma_keys)
    # Parameters per expert-layer, written out per layout: norm 2, attention 5, MLP 4.
    per_layer = {"modality_specific": 13, "attn": 7, "ffn": 6, "ln": 4}[sharing]
    assert len(groups) == per_layer * num_layers
    for g in groups:
        assert [m.value for m in g.experts] == (["v", "l"] if g.layer < num_layers - 2 else ["v", "l", "vl"])


def test_ma_checkpoint_is_refused_as_ms() -> None:
    with pytest.raises(MergeError, match="modality-agnostic"):
        merge("interpolation", random_state("shared", 0))


# ---------------------------------------------------------------------------------------------- invariants
def test_identical_experts_are_returned_by_every_method() -> None:
    seed = random_state("shared", 3)
    ms = expand_experts(seed, model_config("pico"), "modality_specific")
    layout = infer_layout(ms)
    for name, out in run_all(ms, seed, random_grams(layout)).items():
        assert out.keys() == seed.keys()
        for key in seed:
            torch.testing.assert_close(out[key], seed[key], rtol=1e-5, atol=1e-6, msg=f"{name} {key}")


@pytest.mark.parametrize("sharing", ABLATIONS)
def test_every_method_strict_loads_and_leaves_inputs_untouched(sharing: str) -> None:
    ms, seed, grams, _ = inputs_for(sharing)

    def digest() -> str:
        h = hashlib.sha256()
        for state in (ms, seed, grams.xtx, grams.sums):
            for k in sorted(state):
                h.update(k.encode() + state[k].numpy().tobytes())
        return h.hexdigest() + str(sorted(grams.counts.items()))

    before = digest()
    pointers = {t.data_ptr() for state in (ms, seed) for t in state.values()}
    model = create_model("pico", "shared")
    for name, out in run_all(ms, seed, grams).items():
        strict_load(model, out, name)
        assert not pointers & {t.data_ptr() for t in out.values()}, f"{name} returned an input tensor"
        for key in out:
            assert torch.isfinite(out[key]).all() and out[key].dtype == torch.float32
    assert digest() == before


def test_float64_inputs_are_not_modified_in_place() -> None:
    # Methods accumulate in float64: for float64 inputs ``.to(float64)`` is the caller's own tensor.
    ms, seed, grams, _ = inputs_for()
    ms64, seed64 = ({k: v.double() for k, v in s.items()} for s in (ms, seed))
    for name, out in run_all(ms64, seed64, grams).items():
        assert all(out[k].dtype == torch.float64 for k in out), name
    assert all(torch.equal(ms64[k], ms[k].double()) for k in ms)
    assert all(torch.equal(seed64[k], seed[k].double()) for k in seed)


@pytest.mark.parametrize("sharing", ["attn", "ffn", "ln"])
def test_ablations_merge_only_their_per_expert_parts(sharing: str) -> None:
    ms, _, _, layout = inputs_for(sharing)
    out = merge("interpolation", ms, ratio=0.25)
    merged_parts = {"attn": ("attn.", "norm1."), "ffn": ("mlp.", "norm2."), "ln": ("norm1.", "norm2.")}[sharing]
    for key in out:
        if not block(key):
            assert torch.equal(out[key], ms[key])  # copied
            continue
        layer, rest = int(key.split(".")[2]), key.split(".", 3)[3]
        if not rest.startswith(merged_parts):
            assert torch.equal(out[key], ms[key]), key  # a shared part: copied
            continue
        part, param = rest.split(".", 1)
        v, l_ = ms[f"transformer.blocks.{layer}.{part}.v.{param}"], ms[f"transformer.blocks.{layer}.{part}.l.{param}"]
        if layer < layout.fusion_start:
            expected = 0.25 * v + 0.75 * l_
        else:
            vl = ms[f"transformer.blocks.{layer}.{part}.vl.{param}"]
            expected = 2 / 3 * 0.25 * v + 2 / 3 * 0.75 * l_ + vl / 3
        torch.testing.assert_close(out[key], expected)


# ---------------------------------------------------------------------------------------------- paper methods
def test_interpolation_endpoints_and_three_expert_weights() -> None:
    ms, _, _, layout = inputs_for()
    key = "transformer.blocks.{}.mlp.{}fc1.weight"
    for layer in range(layout.num_layers):
        v, l_ = ms[key.format(layer, "v.")], ms[key.format(layer, "l.")]
        ones = merge("interpolation", ms, ratio=1.0)[key.format(layer, "")]
        zeros = merge("interpolation", ms, ratio=0.0)[key.format(layer, "")]
        if layer < layout.fusion_start:
            assert torch.equal(ones, v) and torch.equal(zeros, l_)
        else:
            vl = ms[key.format(layer, "vl.")]
            torch.testing.assert_close(ones, 2 / 3 * v + vl / 3)
            torch.testing.assert_close(zeros, 2 / 3 * l_ + vl / 3)
            mid = merge("interpolation", ms, ratio=0.3)[key.format(layer, "")]
            torch.testing.assert_close(mid, 0.2 * v + 2 / 3 * 0.7 * l_ + vl / 3)


def test_arithmetic_formula_lambda_zero_and_closed_form() -> None:
    ms, seed, _, layout = inputs_for()
    key = "transformer.blocks.{}.attn.{}qkv.weight"
    zero = merge("arithmetic", ms, seed_state=seed, lam=0.0)
    for k in zero:
        if block(k):
            assert torch.equal(zero[k], seed[k])
    out = merge("arithmetic", ms, seed_state=seed, lam=0.3)
    for layer in range(layout.num_layers):
        base = seed[key.format(layer, "")]
        experts = [ms[key.format(layer, f"{m.value}.")] for m in layout.experts(layer)]
        torch.testing.assert_close(out[key.format(layer, "")], base + 0.3 * sum(e - base for e in experts))


def test_arithmetic_upstream_sequential_closed_form_is_recorded() -> None:
    ms, seed, _, layout = inputs_for()
    merged = merge_with_report("arithmetic", ms, seed_state=seed, lam=0.75, mode="upstream_sequential")
    assert merged.diagnostics["method_diagnostics"] == {
        "arithmetic_mode": "upstream_sequential",
        "single_expert": "formula",
        "copied_single_expert": 0,
    }
    key = "transformer.blocks.{}.norm2.{}weight"
    for layer in range(layout.num_layers):
        base, v, l_ = seed[key.format(layer, "")], ms[key.format(layer, "v.")], ms[key.format(layer, "l.")]
        if layer < layout.fusion_start:  # docs/merging.md's example
            expected = 0.0625 * base + 0.1875 * v + 0.75 * l_
        else:  # (1−λ)³θ₀ + λ(1−λ)²θ_v + λ(1−λ)θ_l + λθ_vl
            vl = ms[key.format(layer, "vl.")]
            expected = 0.25**3 * base + 0.75 * 0.25**2 * v + 0.75 * 0.25 * l_ + 0.75 * vl
        torch.testing.assert_close(merged.state[key.format(layer, "")], expected)
    formula = merge_with_report("arithmetic", ms, seed_state=seed, lam=0.75)
    assert formula.diagnostics["method_diagnostics"]["arithmetic_mode"] == "formula"


@pytest.mark.parametrize("mode", ["formula", "upstream_sequential"])
def test_arithmetic_single_expert_copy_takes_the_expert_where_one_merges(mode: str) -> None:
    """used_experts_only=vqa leaves only vl in layers >= F: ``copy`` takes θ_vl there (the released code's
    coefficient 1); below F both experts merge as before; ``formula`` gives θ₀ + λ(θ_vl − θ₀)."""
    ms, seed, _, layout = inputs_for()
    key = "transformer.blocks.{}.mlp.{}fc1.weight"
    common = dict(seed_state=seed, lam=0.75, mode=mode, used_experts_only="vqa")
    copied = merge_with_report("arithmetic", ms, single_expert="copy", **common)
    formula = merge_with_report("arithmetic", ms, **common)
    for layer in range(layout.num_layers):
        ma = key.format(layer, "")
        if layer < layout.fusion_start:
            assert torch.equal(copied.state[ma], formula.state[ma])
        else:
            vl, base = ms[key.format(layer, "vl.")], seed[ma]
            assert torch.equal(copied.state[ma], vl)
            torch.testing.assert_close(formula.state[ma], base + 0.75 * (vl - base))
    assert copied.diagnostics["method_diagnostics"]["copied_single_expert"] > 0


# ---------------------------------------------------------------------------------------------- options
def test_used_experts_only_picks_the_tasks_experts_in_fusion_layers() -> None:
    ms, _, _, layout = inputs_for()
    key = "transformer.blocks.{}.mlp.{}fc2.bias"
    vqa = merge_with_report("interpolation", ms, ratio=0.4, used_experts_only="vqa")
    coco = merge("interpolation", ms, ratio=0.4, used_experts_only="coco")
    for layer in range(layout.num_layers):
        v, l_ = ms[key.format(layer, "v.")], ms[key.format(layer, "l.")]
        if layer < layout.fusion_start:
            torch.testing.assert_close(vqa.state[key.format(layer, "")], 0.4 * v + 0.6 * l_)
            assert vqa.diagnostics["experts_per_layer"][str(layer)] == ["v", "l"]
        else:
            assert torch.equal(vqa.state[key.format(layer, "")], ms[key.format(layer, "vl.")])
            assert vqa.diagnostics["experts_per_layer"][str(layer)] == ["vl"]
        torch.testing.assert_close(coco[key.format(layer, "")], 0.4 * v + 0.6 * l_)


def test_partial_merging_fills_the_rest_from_the_named_expert() -> None:
    ms, _, _, layout = inputs_for()
    out = merge("interpolation", ms, ratio=0.5, layers="0", parts="ffn", rest_from="l")
    for group in block_groups(layout):
        experts = group.experts
        if group.layer == 0 and group.part.value in ("mlp", "norm2"):
            torch.testing.assert_close(out[group.ma_key], (ms[experts[V]] + ms[experts[L]]) / 2)
        else:
            assert torch.equal(out[group.ma_key], ms[experts[L]]), group.ma_key
    with pytest.raises(MergeError, match="rest_from"):
        merge("interpolation", ms, layers=[0])
    with pytest.raises(MergeError, match="layer 0 has no such expert"):
        merge("interpolation", ms, parts="attention", rest_from="vl")
    with pytest.raises(MergeError, match="reach past"):
        merge("interpolation", ms, layers="1-3", rest_from="v")


# ---------------------------------------------------------------------------------------------- beyond the paper
def toy_experts(seed: int = 0) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    shapes = {"a": (5, 4), "b": (7,)}
    experts = {k: {m: torch.randn(s, generator=g) for m in (V, L, VL)} for k, s in shapes.items()}
    return experts, {k: torch.randn(s, generator=g) for k, s in shapes.items()}


def naive_ties(experts: dict, base: dict, k: float, lam: float, scope: str) -> dict[str, list[float]]:
    """TIES element by element with Python floats."""
    taus = {
        key: {
            m: [float(a) - float(b) for a, b in zip(t.reshape(-1), base[key].reshape(-1))] for m, t in tensors.items()
        }
        for key, tensors in experts.items()
    }

    def threshold(values: list[float]) -> float:
        keep = math.ceil(k * len(values) / 100)
        return sorted((abs(x) for x in values), reverse=True)[keep - 1] if keep else math.inf

    glob = {m: threshold([x for key in taus for x in taus[key][m]]) for m in (V, L, VL)}
    out = {}
    for key, per in taus.items():
        trimmed = {
            m: [x if abs(x) >= (glob[m] if scope == "global" else threshold(xs)) else 0.0 for x in xs]
            for m, xs in per.items()
        }
        merged = []
        for i, b in enumerate(base[key].reshape(-1).tolist()):
            values = [trimmed[m][i] for m in trimmed]
            total = sum(values)
            sign = (total > 0) - (total < 0)
            agree = [x for x in values if x != 0 and ((x > 0) - (x < 0)) == sign]
            merged.append(b + lam * (sum(agree) / len(agree) if agree else 0.0))
        out[key] = merged
    return out


@pytest.mark.parametrize("scope", ["per_tensor", "global"])
@pytest.mark.parametrize("k", [20.0, 55.0, 100.0])
def test_ties_matches_a_naive_per_element_reference(scope: str, k: float) -> None:
    experts, base = toy_experts()
    out = METHODS["ties"].fn(experts, base, lam=0.7, k=k, topk_scope=scope, subset=None).state
    for key, values in naive_ties(experts, base, k, 0.7, scope).items():
        torch.testing.assert_close(out[key].reshape(-1), torch.tensor(values, dtype=torch.float32))


def test_dare_matches_a_naive_reference_and_ignores_iteration_order() -> None:
    experts, base = toy_experts(1)
    p, lam = 0.3, 0.8
    out = METHODS["dare"].fn(experts, base, lam=lam, p=p, seed=5, rescale=True, consensus=False, subset=None).state
    for key, tensors in experts.items():
        expected = []
        masks = {
            m: torch.rand(t.shape, generator=torch.Generator().manual_seed(tensor_seed(5, key, m)), dtype=torch.float64)
            .reshape(-1)
            .tolist()
            for m, t in tensors.items()
        }
        for i, b in enumerate(base[key].reshape(-1).tolist()):
            kept = [(float(t.reshape(-1)[i]) - b) / (1 - p) for m, t in tensors.items() if masks[m][i] >= p]
            expected.append(b + lam * sum(kept))
        torch.testing.assert_close(out[key].reshape(-1), torch.tensor(expected, dtype=torch.float32))
    reversed_experts = {k: dict(reversed(list(t.items()))) for k, t in reversed(list(experts.items()))}
    again = (
        METHODS["dare"]
        .fn(reversed_experts, base, lam=lam, p=p, seed=5, rescale=True, consensus=False, subset=None)
        .state
    )
    assert all(torch.equal(again[k], out[k]) for k in out)
    other = METHODS["dare"].fn(experts, base, lam=lam, p=p, seed=6, rescale=True, consensus=False, subset=None).state
    assert not torch.equal(other["a"], out["a"])


def test_dare_drops_about_p_and_keeps_the_expected_task_vector() -> None:
    base = {"w": torch.zeros(200, 100)}
    experts = {"w": {V: torch.ones(200, 100)}}
    out = generalized_task_arithmetic(experts, base, lam=1.0, drop_p=0.3, seed=0)
    kept = (out.state["w"] != 0).double().mean().item()
    assert abs(kept - 0.7) < 0.015 and torch.allclose(out.state["w"][out.state["w"] != 0], torch.tensor(1 / 0.7))


def test_task_arithmetic_on_a_subset() -> None:
    ms, seed, _, layout = inputs_for()
    out = merge("task_arithmetic", ms, seed_state=seed, lam=0.6, subset="l,vl")
    key = "transformer.blocks.{}.attn.{}proj.weight"
    for layer in range(layout.num_layers):
        base = seed[key.format(layer, "")]
        taus = [ms[key.format(layer, f"{m}.")] - base for m in ("l", "vl") if layer >= layout.fusion_start or m == "l"]
        torch.testing.assert_close(out[key.format(layer, "")], base + 0.6 * sum(taus))


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_inputs_are_named() -> None:
    ms, seed, grams, _ = inputs_for()
    with pytest.raises(MergeError, match="unknown merge method 'slerp'"):
        merge("slerp", ms)
    with pytest.raises(MergeError, match=r"no parameter\(s\) \['lambda'\]"):
        merge("arithmetic", ms, seed_state=seed, **{"lambda": 0.5})
    with pytest.raises(MergeError, match="ratio=2"):
        merge("interpolation", ms, ratio=2)
    with pytest.raises(MergeError, match="needs the seed"):
        merge("arithmetic", ms)
    with pytest.raises(MergeError, match="needs gram statistics"):
        merge("regmean", ms)
    bad = dict(ms, **{"transformer.blocks.1.mlp.l.fc1.weight": torch.full((32, 16), math.nan)})
    with pytest.raises(MergeError, match=r"transformer\.blocks\.1\.mlp\.l\.fc1\.weight contains NaN"):
        merge("interpolation", bad)
    bad = dict(ms, **{"transformer.blocks.0.mlp.v.fc1.weight": torch.zeros(31, 16)})
    with pytest.raises(MergeError, match="disagree in shape"):
        merge("interpolation", bad)
    with pytest.raises(MergeError, match="seed state dict is modality_specific"):
        merge("arithmetic", ms, seed_state=ms)
    small_seed = random_state("shared", 2, dim=8, num_heads=2)
    with pytest.raises(MergeError, match="seed .* has shape"):
        merge("ties", ms, seed_state=small_seed)
