"""Forward pre-hooks that accumulate gram statistics at the inputs of the per-expert linear layers.

Hook points (docs/merging.md): ``transformer.blocks.{i}.attn.{m}`` (its input is the qkv input),
``…attn.{m}.proj``, ``…mlp.{m}.fc1``, ``…mlp.{m}.fc2`` for every expert m of every layer whose
attention / MLP is per-expert. Each hook point sees its own tensor (no two hooks share an input).
A hook sees [B, N, D] and must drop text pad tokens, but the block does not pass the text mask
down; the data loop therefore declares the current batch's text mask on a :class:`TokenMasks`
object, which knows how each expert's tokens are laid out: v — image tokens only (all real);
l — text tokens only; vl — the joint sequence [text; image]. The kept rows are picked with one
``index_select`` per hook call, from flat indices computed once per batch and layout.

**Products and their error bound.** A hook adds XᵀX of its kept rows X [n, D] to a float64 sum.
XᵀX is symmetric, so only its upper triangle is computed, as GEMMs over a recursive halving of the
columns down to diagonal blocks at most :data:`LEAF` wide, cut into row panels :data:`PANEL` high
(:func:`triangle_blocks`): about ½ + PANEL/(2D) of the flops of the full product. ``products``
chooses the dtype of each product:

- ``"float32"`` (default): X (float32, or bf16/fp16 activations cast to float32 exactly) is
  multiplied in IEEE float32 (TF32 switched off on CUDA while the product runs) into float32
  partial sums, which are added into the float64 sums before they would hold more than
  :data:`CHUNK_TOKENS` rows (a call with more rows is split). Whatever the GEMM's summation order,
  a partial sum of c rows errs by at most γ_c = c·u/(1 − c·u), u = 2⁻²⁴, per entry relative to
  Σ|x_i||x_j| over its rows; the float64 sum of the K partial sums of a run adds at most γ_K in
  float64 (u = 2⁻⁵³). Over the whole run, entry by entry,

      |Ĝ − XᵀX| ≤ (γ_c(fp32) + γ_K(fp64)·(1 + γ_c(fp32))) · (|X|ᵀ|X|),   c ≤ CHUNK_TOKENS,

  i.e. at most about 2.4e-4 · (|X|ᵀ|X|) at c = 4096 — a worst case; the rounding errors of a dot
  product behave like a random walk, and on the test model's activations the error is about 1.4e-7
  of the largest diagonal entry (tests/test_grams.py checks the bound and the error against XᵀX
  computed naively in float64 from the same activations, and compares the RegMean merges of the
  two gram sets).
- ``"float64"``: X is cast to float64 and multiplied in float64 (γ_n with u = 2⁻⁵³ over all n
  rows of the run): the reference, slower on a CPU (float64 GEMMs run at half the float32 rate).

Σx takes the same path as XᵀX (float32 partial sums flushed into float64, or float64 throughout), with
the same bound relative to Σ|x|; counts are exact integers.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Literal

import torch
from torch import nn

from vlmerge.merging.grams import GramStats
from vlmerge.merging.keys import gram_targets
from vlmerge.model import Modality, VLModel

ProductDtype = Literal["float32", "float64"]
PRODUCT_DTYPES: tuple[ProductDtype, ...] = ("float32", "float64")
# Rows per float32 product before it is added into the float64 sum: the c of the bound γ_c above.
# A flush costs O(D²) against the product's O(c·D²), so it is under 1% of a chunk's time at this size.
CHUNK_TOKENS = 4096


# Blocks of the triangle: square halves down to LEAF wide, then row panels PANEL high inside each leaf. Thin
# GEMMs waste fewer flops on the diagonal but cost a thread fork/join per call; this split was the fastest of
# those measured on 2 cores (D = 768: 0.68, D = 3072: 0.54 of the full product's time).
LEAF = 768
PANEL = 96


def triangle_blocks(dim: int, leaf: int | None = None, panel: int | None = None) -> list[tuple[slice, slice]]:
    """(rows, cols) blocks whose products cover the upper triangle of a [dim, dim] XᵀX exactly once: recursive
    halving (split points on multiples of 32) down to diagonal blocks at most ``leaf`` wide, each covered by
    row panels ``panel`` high from their diagonal to the block's last column (defaults :data:`LEAF`,
    :data:`PANEL`); about ½ + panel/(2·dim) of the full product's flops."""
    widest, height = leaf or LEAF, panel or PANEL

    def split(lo: int, hi: int) -> list[tuple[slice, slice]]:
        if hi - lo <= widest:
            return [(slice(i, min(i + height, hi)), slice(i, hi)) for i in range(lo, hi, height)]
        mid = lo + max(1, (hi - lo) // 2 // 32) * 32 if hi - lo > 64 else lo + (hi - lo) // 2
        return [*split(lo, mid), (slice(lo, mid), slice(mid, hi)), *split(mid, hi)]

    return split(0, dim)


def gamma(n: int, unit_roundoff: float) -> float:
    """γ_n = n·u / (1 − n·u): the relative error bound of a length-n dot product (Higham, §3.1)."""
    nu = n * unit_roundoff
    if nu >= 1:
        raise ValueError(f"γ_{n} is undefined for u = {unit_roundoff}")
    return nu / (1 - nu)


def product_error_bound(chunk_rows: list[int], products: ProductDtype) -> float:
    """The relative factor of the bound above: |Ĝ − XᵀX| ≤ factor · (|X|ᵀ|X|) entry by entry, for a
    run whose products were taken over chunks of ``chunk_rows`` rows each (float64 mode: one chunk
    per hook call, all in float64)."""
    u32, u64 = 2.0**-24, 2.0**-53
    if products == "float64":
        return gamma(sum(chunk_rows), u64)
    per_chunk = gamma(max(chunk_rows, default=0), u32)
    return per_chunk + gamma(len(chunk_rows), u64) * (1 + per_chunk)


class TokenMasks:
    """The current batch's text mask and, from it, the flat indices of the rows each routed segment keeps."""

    def __init__(self) -> None:
        self.text: torch.Tensor | None = None
        self._rows: dict[tuple[Modality, int, int], torch.Tensor | None] = {}

    def declare(self, text: torch.Tensor | None) -> None:
        self.text = text
        self._rows = {}

    def keep(self, modality: Modality, tokens: int) -> torch.Tensor | None:
        """bool [B, tokens] of the real tokens an expert sees, or None when all are real (images)."""
        if modality is Modality.V:
            return None
        if self.text is None:
            raise RuntimeError(f"a {modality.value} expert ran but no text mask was declared for the batch")
        text = self.text.bool()
        if modality is Modality.L:
            if text.shape[1] != tokens:
                raise RuntimeError(f"l expert saw {tokens} tokens, the declared text mask has {text.shape[1]}")
            return text
        image = torch.ones(text.shape[0], tokens - text.shape[1], dtype=torch.bool, device=text.device)
        return torch.cat([text, image], dim=1)  # vl: text first, as encode_pair lays it out

    def rows(self, modality: Modality, batch: int, tokens: int) -> torch.Tensor | None:
        """int64 indices of the kept rows of the flattened [B·tokens, D] input (cached for the batch),
        or None when every row is kept."""
        key = (modality, batch, tokens)
        if key not in self._rows:
            keep = self.keep(modality, tokens)
            if keep is not None and keep.shape[0] != batch:
                raise RuntimeError(f"{modality.value} expert saw {batch} samples, the text mask has {keep.shape[0]}")
            self._rows[key] = None if keep is None or bool(keep.all()) else keep.reshape(-1).nonzero()[:, 0]
        return self._rows[key]


class _GramSum:
    """Σ XᵀX (upper triangle), Σ x and the row count of one hook point.

    The upper triangle is stored packed: the products of :func:`triangle_blocks` one after another,
    about (½ + PANEL/2D)·D² numbers instead of D². float64 mode multiplies every call's rows in float64
    into the float64 sums. float32 mode adds each call's products into float32 partial sums and flushes
    them into the float64 sums before they would hold more than :data:`CHUNK_TOKENS` rows (and when the
    result is read), so a flush, O(D²), is paid once per CHUNK_TOKENS rows rather than once per call.
    """

    def __init__(self, dim: int, device: torch.device, products: ProductDtype) -> None:
        self.dim, self.device, self.products = dim, device, products
        self.blocks = triangle_blocks(dim)
        self._shapes = [(r.stop - r.start, c.stop - c.start) for r, c in self.blocks]
        self._size = sum(h * w for h, w in self._shapes)
        self.count = 0
        self.flushed_rows: list[int] = []  # rows behind each float32 partial sum (float64: each call's rows)
        # Made on the first rows, so that a hook point that never fires holds no [D, D] tensors.
        self._upper: torch.Tensor | None = None  # float64, packed blocks
        self._sum: torch.Tensor | None = None  # float64 [D]
        self._partial: torch.Tensor | None = None  # float32, packed blocks, since the last flush
        self._partial_sum: torch.Tensor | None = None  # float32 [D]
        self._pending = 0

    def _views(self, packed: torch.Tensor) -> list[torch.Tensor]:
        views, offset = [], 0
        for h, w in self._shapes:
            views.append(packed[offset : offset + h * w].view(h, w))
            offset += h * w
        return views

    def add(self, x: torch.Tensor) -> None:
        """x: [n, D], the kept rows of one hook call."""
        n = x.shape[0]
        if n == 0:
            return
        self.count += n
        if self._upper is None or self._sum is None:
            self._upper = torch.zeros(self._size, dtype=torch.float64, device=self.device)
            self._sum = torch.zeros(self.dim, dtype=torch.float64, device=self.device)
        if self.products == "float64":
            x64 = x.to(torch.float64)
            for (r, c), out in zip(self.blocks, self._views(self._upper), strict=True):
                out.addmm_(x64[:, r].T, x64[:, c])
            self._sum += x64.sum(dim=0)
            self.flushed_rows.append(n)
            return
        if self._partial is None or self._partial_sum is None:
            self._partial = torch.zeros(self._size, dtype=torch.float32, device=self.device)
            self._partial_sum = torch.zeros(self.dim, dtype=torch.float32, device=self.device)
        x32 = x.to(torch.float32)
        with _ieee_float32(x.device):
            for start in range(0, n, CHUNK_TOKENS):
                chunk = x32[start : start + CHUNK_TOKENS]
                if self._pending + chunk.shape[0] > CHUNK_TOKENS:
                    self.flush()
                for (r, c), out in zip(self.blocks, self._views(self._partial), strict=True):
                    out.addmm_(chunk[:, r].T, chunk[:, c])
                self._partial_sum += chunk.sum(dim=0)
                self._pending += chunk.shape[0]

    def flush(self) -> None:
        """Add the float32 partial sums into the float64 sums and clear them."""
        if not self._pending or self._upper is None or self._sum is None:
            return
        assert self._partial is not None and self._partial_sum is not None
        self._upper += self._partial
        self._sum += self._partial_sum
        self._partial.zero_()
        self._partial_sum.zero_()
        self.flushed_rows.append(self._pending)
        self._pending = 0

    def gram(self) -> torch.Tensor:
        """The full symmetric Σ XᵀX [D, D] (float64, on the CPU)."""
        self.flush()
        full = torch.zeros(self.dim, self.dim, dtype=torch.float64)
        if self._upper is not None:
            for (r, c), block in zip(self.blocks, self._views(self._upper.to("cpu")), strict=True):
                full[r, c] = block
        return full.triu() + full.triu(1).T

    def sums(self) -> torch.Tensor:
        """Σ x [D] (float64, on the CPU)."""
        self.flush()
        if self._sum is None:
            return torch.zeros(self.dim, dtype=torch.float64)
        return self._sum.to("cpu", copy=True)


@contextlib.contextmanager
def _ieee_float32(device: torch.device) -> Iterator[None]:
    """IEEE float32 matmul for the products on CUDA (TF32 would void the error bound); a no-op elsewhere."""
    if device.type != "cuda" or not torch.backends.cuda.matmul.allow_tf32:
        yield
        return
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = True


class GramCollector:
    """Accumulates Σxxᵀ, Σx (float64, on the model's device) and token counts while it is open.

    Use as a context manager around the forward passes; declare each batch's text mask with
    :meth:`text`. ``include_pad`` keeps pad tokens (the upstream behaviour). ``products`` is the dtype
    of each batch's XᵀX before it enters the float64 sum (module docstring: its error bound).
    """

    def __init__(self, model: VLModel, include_pad: bool = False, products: ProductDtype = "float32") -> None:
        if products not in PRODUCT_DTYPES:
            raise ValueError(f"gram products {products!r}: choose from {PRODUCT_DTYPES}")
        self.include_pad = include_pad
        self.products = products
        self.masks = TokenMasks()
        self._paused = False
        device = next(model.parameters()).device
        targets = gram_targets(model.expert_layout())
        self._grams = {
            name: _GramSum(self._in_features(model.get_submodule(name)), device, products) for name, _ in targets
        }
        self._handles = [
            model.get_submodule(name).register_forward_pre_hook(functools.partial(self._hook, name, m))
            for name, m in targets
        ]
        # The hooks see whole [B, N, D] batches: a model that skips pad rows would bypass the attention hook.
        self._model, self._padding = model, model.text_padding
        model.text_padding = "compute"

    @staticmethod
    def _in_features(module: nn.Module) -> int:
        linear = module.get_submodule("qkv") if hasattr(module, "qkv") else module  # attention: its first linear
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"gram hook target {type(linear).__name__} is not a linear layer (or an attention)")
        return linear.in_features

    def _hook(self, name: str, modality: Modality, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if self._paused:
            return
        x = args[0].detach()  # [B, N, D]
        flat = x.reshape(-1, x.shape[-1])
        rows = None if self.include_pad else self.masks.rows(modality, x.shape[0], x.shape[1])
        self._grams[name].add(flat if rows is None else flat.index_select(0, rows))

    @contextlib.contextmanager
    def text(self, mask: torch.Tensor | None) -> Iterator[None]:
        """Declare the text mask [B, T] (1 = real token) of the forward passes inside the block."""
        self.masks.declare(mask)
        try:
            yield
        finally:
            self.masks.declare(None)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Forward passes inside the block add nothing (the hooks stay registered)."""
        self._paused = True
        try:
            yield
        finally:
            self._paused = False

    def error_bound(self, name: str) -> float:
        """The relative factor ε of ``name``'s bound so far: |Ĝ − XᵀX| ≤ ε · (|X|ᵀ|X|) entry by entry."""
        return product_error_bound(self._grams[name].flushed_rows, self.products)

    def result(self) -> GramStats:
        """The statistics so far, on the CPU."""
        return GramStats(
            {n: g.gram() for n, g in self._grams.items()},
            {n: g.sums() for n, g in self._grams.items()},
            {n: g.count for n, g in self._grams.items()},
        )

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._model.text_padding = self._padding

    def __enter__(self) -> GramCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
