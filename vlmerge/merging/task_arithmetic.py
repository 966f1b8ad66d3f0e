"""Task arithmetic and its sparsified variants, all one generalized function (as mergekit does).

θ = θ₀ + λ·combine_m(sparsify(τ_m)), τ_m = θ_m − θ₀ over a chosen expert subset:
task arithmetic (no sparsification, sum), TIES (magnitude trim, elect sign, disjoint mean),
DARE (random drop and rescale, sum; or elect + disjoint mean for DARE-TIES).

Each key is computed in float64 chunks of :data:`CHUNK` elements, written straight into a tensor of
the base dtype: no whole-tensor float64 copy is made, and the result is bit for bit that of the
whole-tensor formulas in :mod:`vlmerge.merging.sparsify` (``tests/test_merge_floor.py``). A key's
chunks are shared out over :data:`LANES` threads (this one and workers), each with its own chunk
buffers: the work is element-wise, so where a chunk is computed changes no bit. Per-tensor
trim thresholds come from a partial sort of one key's task vectors, held whole in float64 for that key
alone (they then feed the combination: each τ is formed once); global ones from
:class:`~vlmerge.merging.sparsify.MagnitudeSelect`, streaming. Both are exact, equal to ``kthvalue``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import numpy as np
import torch

from vlmerge.merging.errors import MergeError
from vlmerge.merging.registry import BaseTensors, ExpertTensors, Merged, register
from vlmerge.merging.sparsify import GLOBAL_SAMPLE, MagnitudeSelect, keep_count, tensor_seed
from vlmerge.model import Modality

# Elements per chunk: the float64 temporaries of one chunk stay in cache, and no float64 copy of a
# whole tensor is made.
CHUNK = 1 << 16
# Threads that compute a key's chunks (this one and LANES - 1 workers), one intra-op thread each. On two
# cores the merge's own compute took one core while the prefetch and checksum threads left most of the
# other idle (10.3 s of CPU in 9.4 s for a base-preset TIES merge).
LANES = 2

T = TypeVar("T")


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the chunk loops on one intra-op thread: an element-wise op on a cache-sized chunk gains little
    from a second thread, and when the cores are shared each op's thread hand-off can cost a time slice
    (measured 3-4 s single-threaded against 18-80 s on two threads for a base-preset TIES merge on a
    loaded two-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _chosen(tensors: Mapping[Modality, torch.Tensor], subset: tuple[Modality, ...] | None) -> list[Modality]:
    return [m for m in tensors if subset is None or m in subset]


def _listed(experts: ExpertTensors, key: str, subset: tuple[Modality, ...] | None) -> list[Modality]:
    """The chosen experts of ``key`` from a view's listing, reading nothing (indexing a view reads the group)."""
    listed = getattr(experts, "modalities", None)
    modalities = listed(key) if listed is not None else list(experts[key])
    return [m for m in modalities if subset is None or m in subset]


def _numel(experts: ExpertTensors, key: str) -> int:
    shape = getattr(experts, "shape", None)
    return math.prod(shape(key)) if shape is not None else next(iter(experts[key].values())).numel()


class _Chunks:
    """Float64 work buffers of one chunk, reused for every chunk of every key."""

    def __init__(self, experts: int) -> None:
        def f64() -> torch.Tensor:
            return torch.empty(CHUNK, dtype=torch.float64)

        self.base, self.acc, self.count, self.tmp = f64(), f64(), f64(), f64()
        self.taus = [f64() for _ in range(max(experts, 1))]
        self.masks = np.empty(2 * CHUNK, dtype=bool)  # a threshold count's masks
        # Whole-key buffers (task vectors and their magnitudes), grown to the largest key and reused: a
        # fresh allocation per key would fault in every page again.
        self._whole: list[torch.Tensor] = []

    def whole(self, count: int, numel: int) -> list[torch.Tensor]:
        """``count`` float64 buffers of ``numel`` elements (views of buffers kept for the next key)."""
        while len(self._whole) < count:
            self._whole.append(torch.empty(0, dtype=torch.float64))
        for i in range(count):
            if self._whole[i].numel() < numel:
                self._whole[i] = torch.empty(numel, dtype=torch.float64)
        return [buffer[:numel] for buffer in self._whole[:count]]


class _Lanes:
    """Runs a key's work on :data:`LANES` threads, each with its own :class:`_Chunks`.

    :meth:`over_spans` cuts ``[0, numel)`` into one run of whole chunks per lane (a key of fewer than two
    chunks per lane stays on this thread); :meth:`run` shares out independent tasks (one per expert).
    Torch's element-wise ops and numpy's partial sort release the GIL, so the lanes compute at once.
    """

    def __init__(self, experts: int, pool: ThreadPoolExecutor | None) -> None:
        self.pool = pool
        self.works = [_Chunks(experts) for _ in range(LANES if pool is not None else 1)]

    def whole(self, count: int, numel: int) -> list[torch.Tensor]:
        return self.works[0].whole(count, numel)

    def run(self, tasks: Sequence[Callable[[_Chunks], T]]) -> list[T]:
        """Each task's result, in order; task i runs on lane i mod the lane count with that lane's buffers."""
        lanes = min(len(self.works), len(tasks))
        if self.pool is None or lanes < 2:
            return [task(self.works[0]) for task in tasks]

        def lane(i: int) -> list[T]:
            torch.set_num_threads(1)
            return [task(self.works[i]) for task in tasks[i::lanes]]

        others = [self.pool.submit(lane, i) for i in range(1, lanes)]
        done = [lane(0), *(f.result() for f in others)]
        return [done[i % lanes][i // lanes] for i in range(len(tasks))]

    def over_spans(self, numel: int, body: Callable[[_Chunks, int, int], None]) -> None:
        """``body(work, lo, hi)`` over runs of whole chunks that cover ``[0, numel)``, one run per lane."""
        chunks = -(-numel // CHUNK)
        lanes = max(1, min(len(self.works), chunks // 2))
        edges = [min(numel, (chunks * i // lanes) * CHUNK) for i in range(lanes + 1)]

        def part(lo: int, hi: int) -> Callable[[_Chunks], None]:
            return lambda work: body(work, lo, hi)

        self.run([part(lo, hi) for lo, hi in zip(edges, edges[1:], strict=False)])


class _TaskVectors:
    """The task vectors τ_m = θ_m − θ₀ of one key, in float64 chunks, dropped (DARE) and trimmed as asked.

    Each chunk is computed with the element-wise operations of the whole-tensor formulas
    (``e.double() - b.double()``, ``where(keep, τ, 0) / (1 − p)``, ``where(|τ| ≥ t, τ, 0)``), masks
    applied as float64 0/1 factors (cheaper than boolean masks). The values are the same bits, but
    for the sign of a zero that is removed before it reaches the result (see :func:`_combine`).
    """

    def __init__(
        self,
        tensors: Mapping[Modality, torch.Tensor],
        chosen: list[Modality],
        base: torch.Tensor,
        *,
        drop_p: float,
        keeps: list[torch.Tensor] | None,
        rescale: bool,
    ) -> None:
        self.base = base.reshape(-1)
        self.experts = [tensors[m].reshape(-1) for m in chosen]
        self.numel = self.base.numel()
        self.keeps: list[torch.Tensor | None] = list(keeps) if keeps is not None else [None] * len(chosen)
        self.drop_p, self.rescale = drop_p, rescale
        self.whole: list[torch.Tensor] | None = None

    def materialize(self, lanes: _Lanes) -> list[torch.Tensor]:
        """Every τ_j of this key held whole in float64 (in reused buffers), formed chunk by chunk with the
        same operations (the same bits), and returns each |τ_j| whole; :meth:`tau` then reads the held
        τ_j, so a threshold and the combination share one formation. :func:`_combine` overwrites them as
        it goes, and the next key's formation overwrites the magnitudes."""
        count = len(self.experts)
        buffers = lanes.whole(2 * count, self.numel)
        whole, magnitudes = buffers[:count], buffers[count:]

        def form(work: _Chunks, start: int, stop: int) -> None:
            for lo, hi in _chunks(start, stop):
                b = self.load_base(work.base, lo, hi)
                for j in range(count):
                    torch.abs(self._form(j, b, whole[j][lo:hi], lo, hi), out=magnitudes[j][lo:hi])

        lanes.over_spans(self.numel, form)
        self.whole = whole
        return magnitudes

    def load_base(self, out: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        return out[: hi - lo].copy_(self.base[lo:hi])

    def tau(self, j: int, base: torch.Tensor, out: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """τ_j over [lo, hi) into ``out`` (``base``: θ₀ over the same span, float64), or the held τ_j's
        span itself after :meth:`materialize`."""
        if self.whole is not None:
            return self.whole[j][lo:hi]
        return self._form(j, base, out, lo, hi)

    def _form(self, j: int, base: torch.Tensor, out: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        t = out[: hi - lo].copy_(self.experts[j][lo:hi])
        t.sub_(base)
        keep = self.keeps[j]
        if keep is not None:
            t.mul_(keep[lo:hi])
            if self.rescale:
                t.div_(1.0 - self.drop_p)
        return t

    def magnitudes(self, j: int, index: torch.Tensor) -> torch.Tensor:
        """|τ_j| at ``index`` (flat positions), the same values the chunks give."""
        t = self.experts[j][index].to(torch.float64) - self.base[index].to(torch.float64)
        keep = self.keeps[j]
        if keep is not None:
            t.mul_(keep[index])
            if self.rescale:
                t.div_(1.0 - self.drop_p)
        return t.abs_()

    def count(self, selects: list[MagnitudeSelect | None], lanes: _Lanes) -> None:
        """One counting pass of each |τ_j| into ``selects[j]`` (None: not counted), chunk by chunk."""

        def chunks(work: _Chunks, start: int, stop: int) -> None:
            for lo, hi in _chunks(start, stop):
                b = self.load_base(work.base, lo, hi)
                for j, select in enumerate(selects):
                    if select is not None:
                        select.count(self.tau(j, b, work.tmp, lo, hi).abs_(), work.masks)

        lanes.over_spans(self.numel, chunks)


def _chunks(start: int, stop: int) -> Iterator[tuple[int, int]]:
    """The chunks ``[lo, hi)`` of ``[start, stop)``: :data:`CHUNK` elements each, the last one shorter."""
    for lo in range(start, stop, CHUNK):
        yield lo, min(lo + CHUNK, stop)


def _keep_mask(numel: int, p: float, seed: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """DARE's mask of one tensor, as one generator draws it for the whole tensor: 1.0 kept, 0.0 dropped
    (into ``out``, float64 [numel], when given: the same bits)."""
    generator = torch.Generator().manual_seed(seed)
    draw = torch.rand(numel, generator=generator, dtype=torch.float64, out=out)
    return torch.ge(draw, p, out=draw)


class _DareMasks:
    """DARE's masks of each key (one per chosen expert), the next key's drawn on a second thread while
    the current key is merged: each mask has its own generator, so where it is drawn changes no bit.

    Masks are drawn into float64 buffers reused from key to key (two sets: the current key's and the next
    key's): a fresh buffer per mask would be mapped and faulted in page by page under the merge's malloc
    settings, about as long as drawing it.
    """

    def __init__(
        self, experts: ExpertTensors, subset: tuple[Modality, ...] | None, p: float, seed: int, pool: ThreadPoolExecutor
    ) -> None:
        self.experts, self.subset, self.p, self.seed, self.pool = experts, subset, p, seed, pool
        order = list(experts)
        self._next = dict(zip(order, order[1:]))
        # key → (its masks being drawn, the buffers they are drawn into)
        self._pending: dict[str, tuple[Future[list[torch.Tensor]], list[torch.Tensor]]] = {}
        self._free: list[torch.Tensor] = []  # buffers no mask uses now
        self._current: list[torch.Tensor] = []  # the buffers behind the masks last handed out

    def _buffers(self, count: int, numel: int) -> list[torch.Tensor]:
        """``count`` float64 views of ``numel`` elements from the free buffers (grown or made as needed)."""
        out = []
        for _ in range(count):
            buffer = self._free.pop() if self._free else torch.empty(0, dtype=torch.float64)
            if buffer.numel() < numel:
                buffer = torch.empty(numel, dtype=torch.float64)
            out.append(buffer)
        return out

    def _draw(self, key: str, chosen: list[Modality], numel: int, buffers: list[torch.Tensor]) -> list[torch.Tensor]:
        return [
            _keep_mask(numel, self.p, tensor_seed(self.seed, key, m), out=b[:numel])
            for m, b in zip(chosen, buffers, strict=True)
        ]

    def take(self, key: str, chosen: list[Modality], numel: int) -> list[torch.Tensor]:
        """The masks of ``key`` (valid until the next call: the key before it is merged by then)."""
        pending = self._pending.pop(key, None)
        for draw, buffers in self._pending.values():
            if draw.cancel():  # not started: its buffers are free again (a started one keeps its own)
                self._free.extend(buffers)
        self._pending.clear()
        self._free.extend(self._current)
        if pending is not None:
            masks, self._current = pending[0].result(), pending[1]
        else:
            self._current = self._buffers(len(chosen), numel)
            masks = self._draw(key, chosen, numel, self._current)
        following = self._next.get(key)
        if following is not None:
            later = _listed(self.experts, following, self.subset)
            size = _numel(self.experts, following)
            buffers = self._buffers(len(later), size)
            self._pending[following] = (self.pool.submit(self._draw, following, later, size, buffers), buffers)
        return masks


def _sample_index(numel: int, size: int) -> torch.Tensor:
    """``size`` random flat positions out of ``numel`` (fixed seed: the same positions on every run)."""
    return torch.randint(numel, (size,), generator=torch.Generator().manual_seed(numel))


def _tensor_thresholds(vectors: _TaskVectors, k: float, lanes: _Lanes) -> list[float]:
    """The per-tensor trim threshold of each τ_j: ``magnitude_threshold(|τ_j|, k)``, exactly, by a partial
    sort (numpy's introselect) of |τ_j| formed from the key's held task vectors (:meth:`_TaskVectors.materialize`)."""
    numel = vectors.numel
    keep = keep_count(numel, k)
    if keep == 0:
        return [math.inf for _ in vectors.experts]
    rank = numel - keep  # ascending 0-based position of kthvalue(·, numel - keep + 1)

    def select(magnitudes: torch.Tensor) -> Callable[[_Chunks], float]:
        def task(_: _Chunks) -> float:
            flat = magnitudes.numpy()
            flat.partition(rank)  # in place: the buffer is scratch
            return float(flat[rank])

        return task

    return lanes.run([select(m) for m in vectors.materialize(lanes)])


def _combine(
    vectors: _TaskVectors, thresholds: list[float] | None, lam: float, consensus: bool, lanes: _Lanes
) -> torch.Tensor:
    """θ₀ + λ·(Σ_m τ̂_m or disjoint_mean), chunk by chunk, into a tensor of the base dtype.

    The same values as the whole-tensor formulas: Σ is ((τ̂_1 + τ̂_2) + τ̂_3); the disjoint mean elects
    γ = sign(Σ τ̂) and averages the τ̂ that agree with it. Written as p_m = max(γ·τ̂_m, 0) (γ = ±1: the
    agreeing |τ̂_m|, else 0), it is γ·(Σ p_m / max(Σ sign p_m, 1)): negation commutes with rounding, so
    this is the sum of the agreeing τ̂ in expert order divided by their count, bit for bit. A zero
    result is made +0 (``+ 0.0``), as the formulas' ``where(…, 0)`` give; ``add_(·, alpha=λ)`` adds to
    θ₀ in float64 before the cast.
    """
    base = vectors.base
    out = torch.empty_like(base)
    if not vectors.experts:
        return out.copy_(base)

    def chunks(work: _Chunks, start: int, stop: int) -> None:
        for lo, hi in _chunks(start, stop):
            b = vectors.load_base(work.base, lo, hi)
            tmp = work.tmp[: hi - lo]
            taus = []
            for j in range(len(vectors.experts)):
                t = vectors.tau(j, b, work.taus[j], lo, hi)
                if thresholds is not None:  # τ·[|τ| ≥ threshold]
                    t.mul_(torch.ge(torch.abs(t, out=tmp), thresholds[j], out=tmp))
                taus.append(t)
            total = work.acc[: hi - lo].copy_(taus[0])
            for t in taus[1:]:
                total.add_(t)
            if consensus:
                elected = total.sign_()
                count = work.count[: hi - lo]
                for j, t in enumerate(taus):
                    agreeing = t.mul_(elected).clamp_(min=0)
                    if j == 0:
                        torch.sign(agreeing, out=count)
                    else:
                        count.add_(torch.sign(agreeing, out=tmp))
                mean = tmp.copy_(taus[0])
                for t in taus[1:]:
                    mean.add_(t)
                total = mean.div_(count.clamp_(min=1)).mul_(elected)
            total.add_(0.0)
            b.add_(total, alpha=lam)
            out[lo:hi] = b

    lanes.over_spans(vectors.numel, chunks)
    return out


def generalized_task_arithmetic(
    experts: ExpertTensors,
    base: BaseTensors,
    *,
    lam: float,
    subset: tuple[Modality, ...] | None = None,
    trim_k: float | None = None,
    topk_scope: str = "per_tensor",
    drop_p: float = 0.0,
    seed: int = 0,
    rescale: bool = True,
    consensus: bool = False,
) -> Merged:
    """θ₀ + λ·Σ_m τ̂_m (or λ·disjoint_mean with ``consensus``), τ̂_m = trim(drop(θ_m − θ₀)).

    Task vectors are float64; a key whose layer has no expert of ``subset`` stays θ₀. Inputs: every
    tensor of ``experts[key]`` has the shape of ``base[key]``.

    Computed in float64 chunks of :data:`CHUNK` elements written straight into a tensor of the base
    dtype: the result is the same, bit for bit, as the whole-tensor formulas of :mod:`sparsify`
    (:func:`trim`, :func:`disjoint_mean`, :func:`dare_drop`, :func:`magnitude_threshold`). Trim thresholds
    are selected exactly by :class:`MagnitudeSelect`; with ``topk_scope="global"`` it streams every
    tensor of an expert's task vector once for a count (after a sample gathered from a few values per
    page) before the merge, instead of holding it whole.
    """
    if base is None:
        raise MergeError("task-vector methods need the seed (MA) checkpoint θ₀")
    with one_thread():
        return _generalized(experts, base, lam, subset, trim_k, topk_scope, drop_p, seed, rescale, consensus)


def _generalized(
    experts: ExpertTensors,
    base: Mapping[str, torch.Tensor],
    lam: float,
    subset: tuple[Modality, ...] | None,
    trim_k: float | None,
    topk_scope: str,
    drop_p: float,
    seed: int,
    rescale: bool,
    consensus: bool,
) -> Merged:
    widest = max((len(_listed(experts, k, subset)) for k in experts), default=1)
    with (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="dare") as pool,
        ThreadPoolExecutor(max_workers=max(1, LANES - 1), thread_name_prefix="merge-lane") as lane_pool,
    ):
        lanes = _Lanes(widest, lane_pool if LANES > 1 else None)
        masks = _DareMasks(experts, subset, drop_p, seed, pool) if drop_p > 0 else None

        def vectors(key: str) -> tuple[list[Modality], _TaskVectors]:
            chosen = _chosen(experts[key], subset)
            keeps = masks.take(key, chosen, _numel(experts, key)) if masks is not None else None
            tvs = _TaskVectors(experts[key], chosen, base[key], drop_p=drop_p, keeps=keeps, rescale=rescale)
            return chosen, tvs

        thresholds: dict[Modality, float] = {}
        if trim_k is not None and topk_scope == "global":
            sample = _gathered_sample(experts, base) if drop_p == 0 else None
            thresholds = _global_thresholds(experts, subset, trim_k, vectors, lanes, sample)
        state = {}
        for key in experts:
            chosen, tvs = vectors(key)
            cut = None
            if trim_k is not None and topk_scope == "global":
                cut = [thresholds[m] for m in chosen]
            elif trim_k is not None:
                cut = _tensor_thresholds(tvs, trim_k, lanes)
            state[key] = _combine(tvs, cut, lam, consensus, lanes).reshape(base[key].shape)
        return Merged(state, {"global_thresholds": {m.value: t for m, t in thresholds.items()}} if thresholds else {})


def _global_thresholds(
    experts: ExpertTensors,
    subset: tuple[Modality, ...] | None,
    k: float,
    vectors: Callable[[str], tuple[list[Modality], _TaskVectors]],
    lanes: _Lanes,
    sample: Callable[[str, Modality, torch.Tensor], torch.Tensor] | None,
) -> dict[Modality, float]:
    """Each expert's threshold over its whole task vector (every key it merges), exactly: a sample of
    every tensor, then counting passes over the tensors again; only the sample and the magnitudes
    inside the bracket are held. ``sample(key, m, index)`` gives |τ_m| at flat positions without
    reading whole tensors (streamed files without DARE's drop); else the sample reads each key."""
    sizes: dict[Modality, int] = {}
    for key in experts:
        for m in _listed(experts, key, subset):
            sizes[m] = sizes.get(m, 0) + _numel(experts, key)
    selects = {m: MagnitudeSelect(n, keep_count(n, k)) for m, n in sizes.items()}
    for key in experts:
        numel = _numel(experts, key)
        chosen, tvs = (_listed(experts, key, subset), None) if sample is not None else vectors(key)
        for j, m in enumerate(chosen):
            index = _sample_index(numel, max(1, math.ceil(numel * GLOBAL_SAMPLE / sizes[m])))
            if tvs is not None:
                selects[m].add_sample(tvs.magnitudes(j, index))
            elif sample is not None:
                selects[m].add_sample(sample(key, m, index))
    while not all(s.done for s in selects.values()):
        pending = {m: s for m, s in selects.items() if not s.done}
        for s in pending.values():
            s.begin_pass()
        for key in experts:
            chosen, tvs = vectors(key)
            tvs.count([pending.get(m) for m in chosen], lanes)
        for s in pending.values():
            s.end_pass()
    return {m: selects[m].value for m in Modality if m in selects}


def _gathered_sample(
    experts: ExpertTensors, base: Mapping[str, torch.Tensor]
) -> Callable[[str, Modality, torch.Tensor], torch.Tensor] | None:
    """|τ_m| of ``key`` at flat positions (the values :meth:`_TaskVectors.magnitudes` gives, in sorted
    position order: the sample is a multiset) read through the views' ``gather``, or None when the
    inputs are not streamed files."""
    from_experts, from_base = getattr(experts, "gather", None), getattr(base, "gather", None)
    if from_experts is None or from_base is None:
        return None

    def sample(key: str, m: Modality, index: torch.Tensor) -> torch.Tensor:
        index = index.sort().values  # pages in file order
        t = from_experts(key, m, index).to(torch.float64) - from_base(key, index).to(torch.float64)
        return t.abs_()

    return sample


@register("task_arithmetic")
def task_arithmetic(
    experts: ExpertTensors, base: BaseTensors = None, *, lam: float, subset: tuple[Modality, ...] | None
) -> Merged:
    """Task arithmetic over any expert subset: θ₀ + λ·Σ_m (θ_m − θ₀).

    Ilharco et al. 2023, "Editing Models with Task Arithmetic" (arXiv 2212.04089).
    """
    return generalized_task_arithmetic(experts, base, lam=lam, subset=subset)


@register("ties")
def ties(
    experts: ExpertTensors,
    base: BaseTensors = None,
    *,
    lam: float,
    k: float,
    topk_scope: str,
    subset: tuple[Modality, ...] | None,
) -> Merged:
    """TIES-Merging: trim each τ_m to its top-k % magnitudes, elect signs, disjoint mean, scale by λ.

    Yadav et al. 2023, "TIES-Merging: Resolving Interference When Merging Models" (arXiv 2306.01708).
    ``topk_scope``: ``per_tensor`` ranks magnitudes within each tensor; ``global`` across all merged
    tensors of an expert's task vector, as the paper flattens the whole model.
    """
    return generalized_task_arithmetic(
        experts, base, lam=lam, subset=subset, trim_k=k, topk_scope=topk_scope, consensus=True
    )


@register("dare")
def dare(
    experts: ExpertTensors,
    base: BaseTensors = None,
    *,
    lam: float,
    p: float,
    seed: int,
    rescale: bool,
    consensus: bool,
    subset: tuple[Modality, ...] | None,
) -> Merged:
    """DARE: drop each task-vector entry with probability p, rescale by 1/(1−p), then sum (or TIES-combine).

    Yu et al. 2023, "Language Models are Super Mario" (arXiv 2311.03099). Each tensor's mask comes
    from its own generator seeded by (seed, key, expert), so results do not depend on iteration order.
    """
    return generalized_task_arithmetic(
        experts, base, lam=lam, subset=subset, drop_p=p, seed=seed, rescale=rescale, consensus=consensus
    )
