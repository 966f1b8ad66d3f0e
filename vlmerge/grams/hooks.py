"""Forward pre-hooks that accumulate gram statistics at the inputs of the per-expert linear layers.

Hook points (docs/merging.md): ``transformer.blocks.{i}.attn.{m}`` (its input is the qkv input),
``…attn.{m}.proj``, ``…mlp.{m}.fc1``, ``…mlp.{m}.fc2`` for every expert m of every layer whose
attention / MLP is per-expert. A hook sees [B, N, D] and must drop text pad tokens, but the block
does not pass the text mask down; the data loop therefore declares the current batch's text mask
on a :class:`TokenMasks` object, which knows how each expert's tokens are laid out:
v — image tokens only (all real); l — text tokens only; vl — the joint sequence [text; image].
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
from torch import nn

from vlmerge.merging.grams import GramStats
from vlmerge.merging.keys import gram_targets
from vlmerge.model import Modality, VLModel


class TokenMasks:
    """The current batch's text mask and, from it, the keep-mask [B, N] of each routed segment."""

    def __init__(self) -> None:
        self.text: torch.Tensor | None = None

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


class GramCollector:
    """Accumulates Σxxᵀ, Σx and token counts (float64, on the model's device) while it is open.

    Use as a context manager around the forward passes; declare each batch's text mask with
    :meth:`text`. ``include_pad`` keeps pad tokens (the upstream behaviour).
    """

    def __init__(self, model: VLModel, include_pad: bool = False) -> None:
        self.include_pad = include_pad
        self.masks = TokenMasks()
        device = next(model.parameters()).device
        targets = gram_targets(model.expert_layout())
        dims = {name: self._in_features(model.get_submodule(name)) for name, _ in targets}
        self._xtx = {n: torch.zeros(d, d, dtype=torch.float64, device=device) for n, d in dims.items()}
        self._sums = {n: torch.zeros(d, dtype=torch.float64, device=device) for n, d in dims.items()}
        self._counts = {n: 0 for n in dims}
        self._handles = [
            model.get_submodule(name).register_forward_pre_hook(functools.partial(self._hook, name, m))
            for name, m in targets
        ]

    @staticmethod
    def _in_features(module: nn.Module) -> int:
        linear = module.get_submodule("qkv") if hasattr(module, "qkv") else module  # attention: its first linear
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"gram hook target {type(linear).__name__} is not a linear layer (or an attention)")
        return linear.in_features

    def _hook(self, name: str, modality: Modality, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0]  # [B, N, D]
        keep = None if self.include_pad else self.masks.keep(modality, x.shape[1])
        flat = (x[keep] if keep is not None else x.reshape(-1, x.shape[-1])).detach().to(torch.float64)
        self._xtx[name].addmm_(flat.T, flat)
        self._sums[name] += flat.sum(dim=0)
        self._counts[name] += flat.shape[0]

    @contextlib.contextmanager
    def text(self, mask: torch.Tensor | None) -> Iterator[None]:
        """Declare the text mask [B, T] (1 = real token) of the forward passes inside the block."""
        self.masks.text = mask
        try:
            yield
        finally:
            self.masks.text = None

    def result(self) -> GramStats:
        """The statistics so far, on the CPU."""
        return GramStats(
            {n: g.to("cpu", copy=True) for n, g in self._xtx.items()},
            {n: s.to("cpu", copy=True) for n, s in self._sums.items()},
            dict(self._counts),
        )

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> GramCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
