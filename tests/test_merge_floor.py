"""The chunked interpolation, arithmetic, TIES and DARE merges against their whole-tensor formulas, bit for bit.

The references below are the formulas written plainly (float64 task vectors, ``torch.kthvalue``
thresholds over the whole tensor or the concatenated task vector, :func:`trim`, :func:`dare_drop`,
:func:`disjoint_mean`). Chunk and sample sizes are made small so that every path (chunk edges, the
sampled bracket, its widening, the single-value bracket) runs on small tensors.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import pytest
import torch

from vlmerge.merging import arithmetic as arithmetic_module
from vlmerge.merging import interpolation as interpolation_module
from vlmerge.merging import sparsify
from vlmerge.merging import task_arithmetic as ta
from vlmerge.merging.arithmetic import arithmetic, upstream_sequential
from vlmerge.merging.interpolation import interpolation_weights, weighted_sum
from vlmerge.merging.sparsify import MagnitudeSelect, dare_drop, disjoint_mean, magnitude_threshold, tensor_seed, trim
from vlmerge.merging.task_arithmetic import dare, generalized_task_arithmetic, task_arithmetic, ties
from vlmerge.model import Modality

V, L, VL = Modality.V, Modality.L, Modality.VL
_INT = {8: torch.int64, 4: torch.int32, 2: torch.int16}


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ta, "CHUNK", 997)  # odd: chunk edges fall anywhere
    monkeypatch.setattr(arithmetic_module, "CHUNK", 997)
    monkeypatch.setattr(interpolation_module, "CHUNK", 997)
    monkeypatch.setattr(sparsify, "SAMPLE", 256)
    monkeypatch.setattr(ta, "GLOBAL_SAMPLE", 1024)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and bits (so +0 and −0 differ)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    size = a.element_size()
    return torch.equal(a.contiguous().view(_INT[size]), b.contiguous().view(_INT[size]))


def reference(
    experts: dict[str, dict[Modality, torch.Tensor]],
    base: dict[str, torch.Tensor],
    *,
    lam: float,
    subset: tuple[Modality, ...] | None = None,
    trim_k: float | None = None,
    topk_scope: str = "per_tensor",
    drop_p: float = 0.0,
    seed: int = 0,
    rescale: bool = True,
    consensus: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[Modality, float]]:
    """θ₀ + λ·Σ τ̂ (or the disjoint mean) over whole float64 tensors."""

    def chosen(key: str) -> list[Modality]:
        return [m for m in experts[key] if subset is None or m in subset]

    def tau(key: str, m: Modality) -> torch.Tensor:
        t = experts[key][m].to(torch.float64) - base[key].to(torch.float64)
        return dare_drop(t, drop_p, tensor_seed(seed, key, m), rescale) if drop_p > 0 else t

    thresholds = {}
    if trim_k is not None and topk_scope == "global":
        for m in Modality:
            keys = [k for k in experts if m in chosen(k)]
            if keys:
                thresholds[m] = magnitude_threshold(torch.cat([tau(k, m).abs().reshape(-1) for k in keys]), trim_k)
    state = {}
    for key in experts:
        taus = [tau(key, m) for m in chosen(key)]
        if trim_k is not None:
            taus = [
                trim(t, thresholds[m] if topk_scope == "global" else magnitude_threshold(t.abs(), trim_k))
                for t, m in zip(taus, chosen(key))
            ]
        theta = base[key].to(torch.float64, copy=True)
        if taus:
            theta.add_(disjoint_mean(taus) if consensus else sum(taus[1:], taus[0]), alpha=lam)
        state[key] = theta.to(base[key].dtype)
    return state, thresholds


def reference_upstream(experts: dict[str, dict[Modality, torch.Tensor]], base: dict[str, torch.Tensor], lam: float):
    state = {}
    for key, tensors in experts.items():
        w = base[key].to(torch.float64)
        for m in Modality:
            if m in tensors:
                w = w + lam * (tensors[m].to(torch.float64) - w)
        state[key] = w.to(base[key].dtype)
    return state


def inputs(dtype: torch.dtype, seed: int) -> tuple[dict[str, dict[Modality, torch.Tensor]], dict[str, torch.Tensor]]:
    """Keys of 1-3 experts and sizes 1 … 5000; half of them on a coarse grid (many magnitudes tie at
    any threshold, exact zeros), one with signed zeros in base and experts."""
    g = torch.Generator().manual_seed(seed)
    experts, base = {}, {}
    for i, shape in enumerate([(1,), (3,), (7, 5), (40, 33), (5000,), (2, 3, 4), (250,)]):
        for n in (1, 2, 3):
            b = torch.randn(shape, generator=g)
            coarse = i % 2 == 0
            if coarse:
                b = (b * 4).round() / 4  # includes −0.0 (round of small negatives)
            group = {}
            for m in (V, L, VL)[:n]:
                d = torch.randn(shape, generator=g) * 0.1
                if coarse:
                    d = (d * 16).round() / 16
                t = b + d
                if i == 3:
                    t.view(-1)[::5] = -0.0
                    b.view(-1)[1::7] = -0.0
                    t.view(-1)[1::7] = 0.0
                group[m] = t.to(dtype)
            experts[f"k{i}.{n}"] = group
            base[f"k{i}.{n}"] = b.to(dtype)
    return experts, base


DTYPES = [torch.float32, torch.bfloat16]


def assert_state(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(want)
    for key in want:
        assert same_bits(got[key], want[key]), key


@pytest.mark.parametrize("dtype", DTYPES)
def test_task_arithmetic_and_arithmetic_formula_are_the_same_bits(dtype: torch.dtype) -> None:
    experts, base = inputs(dtype, 0)
    for lam, subset in ((0.5, None), (1.3, (V, VL)), (0.75, (L,))):
        want, _ = reference(experts, base, lam=lam, subset=subset)
        assert_state(task_arithmetic(experts, base, lam=lam, subset=subset).state, want)
    want, _ = reference(experts, base, lam=0.75)
    assert_state(arithmetic(experts, base, lam=0.75, mode="formula", single_expert="formula").state, want)


@pytest.mark.parametrize("dtype", [*DTYPES, torch.float64])
def test_upstream_sequential_is_the_same_bits_and_copy_takes_the_expert(dtype: torch.dtype) -> None:
    experts, base = inputs(dtype, 1)
    kept = {k: t.clone() for k, t in base.items()}
    for lam in (0.75, 1.7):
        assert_state(upstream_sequential(experts, base, lam), reference_upstream(experts, base, lam))
    out = arithmetic(experts, base, lam=0.75, mode="upstream_sequential", single_expert="copy")
    want = reference_upstream(experts, base, 0.75)
    for key, tensors in experts.items():
        if len(tensors) == 1:
            want[key] = tensors[V]
    assert_state(out.state, want)
    assert out.diagnostics["copied_single_expert"] == sum(len(t) == 1 for t in experts.values())
    assert all(same_bits(base[k], kept[k]) for k in base)  # the seed is never written to


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scope", ["per_tensor", "global"])
def test_ties_is_the_same_bits_with_the_same_thresholds(dtype: torch.dtype, scope: str) -> None:
    experts, base = inputs(dtype, 2)
    for k, lam, subset in (
        (0.0, 1.0, None),
        (0.01, 1.0, None),
        (20.0, 1.0, None),
        (33.3, 0.6, (L, VL)),
        (100.0, 1.7, None),
    ):
        want, thresholds = reference(experts, base, lam=lam, subset=subset, trim_k=k, topk_scope=scope, consensus=True)
        out = ties(experts, base, lam=lam, k=k, topk_scope=scope, subset=subset)
        assert_state(out.state, want)
        assert out.diagnostics == (
            {"global_thresholds": {m.value: t for m, t in thresholds.items()}} if thresholds else {}
        )


@pytest.mark.parametrize("dtype", DTYPES)
def test_dare_and_trimmed_sums_are_the_same_bits(dtype: torch.dtype) -> None:
    experts, base = inputs(dtype, 3)
    for p, rescale, consensus in ((0.5, True, False), (0.3, False, True), (0.9, True, True)):
        want, _ = reference(experts, base, lam=0.5, drop_p=p, seed=7, rescale=rescale, consensus=consensus)
        out = dare(experts, base, lam=0.5, p=p, seed=7, rescale=rescale, consensus=consensus, subset=None)
        assert_state(out.state, want)
    for scope in ("per_tensor", "global"):  # drop then trim, summed: the generalized function's other paths
        kwargs = dict(lam=0.8, trim_k=40.0, topk_scope=scope, drop_p=0.4, seed=1)
        want, _ = reference(experts, base, **kwargs)  # type: ignore[arg-type]
        assert_state(generalized_task_arithmetic(experts, base, **kwargs).state, want)  # type: ignore[arg-type]


def select(parts: list[torch.Tensor], keep: int, sample: torch.Tensor) -> tuple[float, int]:
    """MagnitudeSelect's value over ``parts`` and the number of counting passes it took."""
    s = MagnitudeSelect(sum(p.numel() for p in parts), keep)
    s.add_sample(sample)
    passes = 0
    while not s.done:
        s.begin_pass()
        for part in parts:
            s.count(part)
        s.end_pass()
        passes += 1
    return s.value, passes


@pytest.mark.parametrize("n", [1, 2, 5, 1000, 20011])
def test_threshold_select_equals_kthvalue(n: int) -> None:
    g = torch.Generator().manual_seed(n)
    for data in (
        torch.randn(n, generator=g, dtype=torch.float64).abs(),
        (torch.randn(n, generator=g, dtype=torch.float64) * 3).round().abs(),  # a few values, many ties
        torch.zeros(n, dtype=torch.float64),
    ):
        parts = list(data.split(max(1, n // 3)))
        for k in (0.0, 0.001, 1.0, 20.0, 50.0, 99.9, 100.0):
            keep = sparsify.keep_count(n, k)
            want = magnitude_threshold(data, k)
            sample = data[torch.randint(n, (min(n, 256),), generator=g)]
            got, passes = select(parts, keep, sample)
            assert got == want and passes <= 1
            if keep:
                assert want == float(torch.kthvalue(data, n - keep + 1).values)
            if n > 5:  # a sample far off the data: the bracket misses and is widened, still exact
                got, passes = select(parts, keep, torch.full((64,), 1e9, dtype=torch.float64))
                assert got == want
            assert math.isinf(want) == (keep == 0)


def test_per_tensor_thresholds_form_each_task_vector_once_and_are_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """The threshold's partial sort and the combination read one formation of each τ (chunks counted here)."""
    formed = []
    form = ta._TaskVectors._form

    def counted(self: ta._TaskVectors, j: int, *args: Any) -> torch.Tensor:
        formed.append(j)
        return form(self, j, *args)

    monkeypatch.setattr(ta._TaskVectors, "_form", counted)
    g = torch.Generator().manual_seed(5)
    base = {"w": torch.randn(60, 70, generator=g)}
    experts = {"w": {V: base["w"] + torch.randn(60, 70, generator=g) * 0.01, L: torch.randn(60, 70, generator=g)}}
    for k in (20.0, 0.01, 100.0):
        formed.clear()
        want, _ = reference(experts, base, lam=1.0, trim_k=k, consensus=True)
        assert_state(ties(experts, base, lam=1.0, k=k, topk_scope="per_tensor", subset=None).state, want)
        assert sorted(formed) == [0] * 5 + [1] * 5  # 4,200 elements in chunks of 997, each expert once


@pytest.mark.parametrize("dtype", [*DTYPES, torch.float64])
def test_interpolation_is_the_same_bits_as_the_whole_tensor_sum(dtype: torch.dtype) -> None:
    experts, _ = inputs(dtype, 4)
    for ratio in (0.5, 0.3):
        for key, tensors in experts.items():
            weights = interpolation_weights(tuple(tensors), ratio)
            first, *rest = weights
            total = tensors[first].to(torch.float64) * weights[first]
            for m in rest:
                total.add_(tensors[m], alpha=weights[m])
            assert same_bits(weighted_sum(tensors, weights), total.to(dtype)), key


def test_a_keys_chunks_and_partial_sorts_run_on_both_lanes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys of several chunks are formed and combined on this thread and the lane worker, the partial sorts
    (one per expert) shared out, and the result is the same bits as one lane's."""
    threads: list[str] = []
    form = ta._TaskVectors._form

    def recorded(self: ta._TaskVectors, j: int, *args: Any) -> torch.Tensor:
        threads.append(threading.current_thread().name)
        return form(self, j, *args)

    monkeypatch.setattr(ta._TaskVectors, "_form", recorded)
    experts, base = inputs(torch.float32, 6)
    outputs = []
    for lanes in (1, 2):
        monkeypatch.setattr(ta, "LANES", lanes)
        threads.clear()
        for scope in ("per_tensor", "global"):
            outputs.append(ties(experts, base, lam=0.9, k=30.0, topk_scope=scope, subset=None).state)
        outputs.append(dare(experts, base, lam=0.5, p=0.3, seed=2, rescale=True, consensus=True, subset=None).state)
        lane_work = {name.startswith("merge-lane") for name in threads}
        assert lane_work == ({False, True} if lanes == 2 else {False})
    for one, two in zip(outputs[:3], outputs[3:], strict=True):
        assert_state(two, one)
