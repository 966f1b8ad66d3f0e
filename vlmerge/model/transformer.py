"""The multiway transformer: blocks of pre-LN attention and MLP (each possibly one copy per expert), the
image stem and the stack of blocks (vl-merging's ``transformer`` sub-module)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, TypeVar

import torch
from torch import nn

from vlmerge.model.config import ModelConfig
from vlmerge.model.layers import Attention, DropPath, Experts, LayerNorm, Mlp, PatchEmbed
from vlmerge.model.layout import ExpertLayout, Modality, Part

_M = TypeVar("_M", bound=nn.Module)


class BranchKeep(NamedTuple):
    """Stochastic-depth keep flags [B, 1, 1] of a block's attention and MLP branches."""

    attn: torch.Tensor
    mlp: torch.Tensor


class MultiwayBlock(nn.Module):
    """One layer. ``per_expert`` parts hold a copy per expert in ``experts``; gamma_1/2 are always shared."""

    def __init__(
        self, config: ModelConfig, experts: tuple[Modality, ...], per_expert: frozenset[Part], drop_path: float
    ) -> None:
        super().__init__()

        # Typed ``Experts | _M`` (not nn.Module) so that ``expert(modality)`` below type-checks.
        def build(part: Part, make: Callable[[], _M]) -> Experts | _M:
            return Experts({m.value: make() for m in experts}) if part in per_expert else make()

        dim = config.dim
        self.norm1 = build(Part.NORM1, lambda: LayerNorm(dim, eps=1e-6))
        self.attn = build(Part.ATTN, lambda: Attention(dim, config.num_heads))
        self.norm2 = build(Part.NORM2, lambda: LayerNorm(dim, eps=1e-6))
        self.mlp = build(Part.MLP, lambda: Mlp(dim, config.mlp_dim))
        self.gamma_1 = nn.Parameter(torch.full((dim,), config.layer_scale))
        self.gamma_2 = nn.Parameter(torch.full((dim,), config.layer_scale))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def draw_keep(self, like: torch.Tensor) -> BranchKeep | None:
        """Stochastic-depth flags of both residual branches for the samples of ``like`` [B, N, D], drawn
        now for :meth:`forward` (None when this block drops nothing: rate 0 or eval mode)."""
        if not (isinstance(self.drop_path, DropPath) and self.training):
            return None
        return BranchKeep(self.drop_path.draw(like), self.drop_path.draw(like))

    def forward(
        self, x: torch.Tensor, modality: Modality, attn_mask: torch.Tensor, keep: BranchKeep | None = None
    ) -> torch.Tensor:
        """x: [B, N, D], every token routed to ``modality``'s expert; attn_mask: [B or 1, H, N, N];
        keep: stochastic-depth flags from :meth:`draw_keep` (None: drawn here)."""
        attn, mlp = self.attn.expert(modality), self.mlp.expert(modality)
        x = x + self._branch(self.gamma_1 * attn(self.norm1.expert(modality)(x), attn_mask), keep, 0)
        return x + self._branch(self.gamma_2 * mlp(self.norm2.expert(modality)(x)), keep, 1)

    def forward_packed(
        self,
        x: torch.Tensor,
        rows: torch.Tensor,
        shape: torch.Size,
        modality: Modality,
        attn_mask: torch.Tensor,
        keep: BranchKeep | None,
    ) -> torch.Tensor:
        """:meth:`forward` on the real tokens alone: x [R, D] holds rows ``rows`` of the flat [B·N] sequence
        of ``shape`` (B, N, D); keep: per-row stochastic-depth flags [R, 1] (drawn per sample beforehand,
        see :meth:`draw_keep`), None when this block drops nothing. → [R, D]."""
        attn, mlp = self.attn.expert(modality), self.mlp.expert(modality)
        y = attn.forward_packed(self.norm1.expert(modality)(x), rows, shape, attn_mask)  # type: ignore[operator]
        x = x + self._branch(self.gamma_1 * y, keep, 0)
        return x + self._branch(self.gamma_2 * mlp(self.norm2.expert(modality)(x)), keep, 1)

    def forward_first(
        self,
        x: torch.Tensor,
        modality: Modality,
        attn_mask: torch.Tensor,
        keep: BranchKeep | None,
        packed: tuple[torch.Tensor, torch.Tensor, torch.Size] | None = None,
    ) -> torch.Tensor:
        """:meth:`forward`'s output at each sample's first token alone (a last layer read only through its
        [CLS]): every token enters the keys and values, token 0 alone the query, projection and MLP.
        x: [B, N, D] or, with ``packed`` (see :meth:`Attention.forward_first`), the real rows [R, D];
        keep: the stochastic-depth flags of :meth:`draw_keep` as [B, 1] (None: this block drops nothing). → [B, D]."""
        attn, mlp = self.attn.expert(modality), self.mlp.expert(modality)
        first = x[:, 0] if packed is None else x.index_select(0, packed[1])
        y = attn.forward_first(self.norm1.expert(modality)(x), attn_mask, packed)  # type: ignore[operator]
        first = first + self._branch(self.gamma_1 * y, keep, 0)
        return first + self._branch(self.gamma_2 * mlp(self.norm2.expert(modality)(first)), keep, 1)

    def _branch(self, y: torch.Tensor, keep: BranchKeep | None, which: int) -> torch.Tensor:
        if keep is None:
            return self.drop_path(y)
        return self.drop_path(y, keep[which])


class MultiwayTransformer(nn.Module):
    """Patch embedding, image CLS token, ``num_layers`` blocks and the final norm.

    Stochastic depth grows linearly from 0 at the first block to ``drop_path`` at the last.
    """

    def __init__(self, config: ModelConfig, layout: ExpertLayout) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(config.patch_size, config.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.dim))
        last = config.num_layers - 1
        self.blocks = nn.ModuleList(
            MultiwayBlock(config, layout.experts(i), layout.sharing.per_expert, config.drop_path * i / last)
            for i in range(config.num_layers)
        )
        self.norm = LayerNorm(config.dim, eps=1e-6)

    def embed_image(self, images: torch.Tensor) -> torch.Tensor:
        """images: [B, 3, H, W] → [B, 1 + (H/p)·(W/p), D], the CLS token first."""
        patches = self.patch_embed(images)
        return torch.cat([self.cls_token.expand(patches.shape[0], -1, -1), patches], dim=1)


def compile_blocks(blocks: nn.ModuleList, backend: str = "inductor", dynamic: bool | None = None) -> int:
    """``torch.compile`` each block of ``blocks`` in place (``nn.Module.compile``); returns how many.

    The parameters, their names and the state dict stay as they are (no ``_orig_mod.`` segment), so
    checkpoints, optimiser groups, FSDP's block wrapping and gram hooks see the same modules. Each block
    compiles its graph per routed modality and stochastic-depth form on first use, recompiling with dynamic
    sequence lengths when a second text length comes (``dynamic=None``, torch's default). ``backend``:
    ``inductor`` (fused kernels; the GPU setting) or ``aot_eager``/``eager`` (graph capture only, for checks).
    """
    for block in blocks:
        block.compile(backend=backend, dynamic=dynamic)
    return len(blocks)
