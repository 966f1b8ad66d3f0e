"""The vision-language multiway transformer with vl-merging's routing (docs/model.md).

| input      | layers < F                                 | layers ≥ F                               |
|------------|--------------------------------------------|------------------------------------------|
| image      | v expert                                   | v expert                                 |
| text       | l expert                                   | l expert                                 |
| image+text | text → l, image → v, attention within each | vl expert, joint attention [text; image] |

Below F an image+text input is therefore exactly the two unimodal paths side by side, and that is
how it is computed. A shared (MA) model runs the same routing with one set of weights. In training,
stochastic depth there draws a mask per half (``drop_path_mode="per_modality"``) or one per sample
for both halves (``"per_sample"``, upstream's single mask over the concatenated sequence).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, overload

import torch
import torch.nn.functional as F
from torch import nn

from vlmerge.model.config import ModelConfig, model_config
from vlmerge.model.errors import ModelConfigError
from vlmerge.model.heads import (
    ContrastiveProjection,
    Heads,
    ITMHead,
    MLMHead,
    Pooler,
    missing_heads,
    present_heads,
)
from vlmerge.model.layers import TextEmbeddings, init_module, rescale_residual_branches
from vlmerge.model.layout import ExpertLayout, Modality, Sharing, expert_layout
from vlmerge.model.relpos import RelPosLayout, image_index, joint_index, resize_image_table, text_index
from vlmerge.model.transformer import BranchKeep, MultiwayBlock, MultiwayTransformer
from vlmerge.objectives.device import reads_stall

# Additive score of a padded key: exp(-1e4) is exactly 0 in float32, and unlike -inf or float32's
# minimum it stays finite when autocast turns the mask into float16/bfloat16.
MASKED = -1e4


# How the blocks treat text pad tokens (VLModel.text_padding, set_text_padding): "compute" runs every position
# of the padded [B, N, D] batch; "skip" runs the token-wise layers (norms, projections, MLP) on the real tokens
# alone; "auto" skips where reading a value back costs nothing (the CPU) and computes on CUDA, where selecting
# the real rows reads the mask back to the host every forward (objectives.device.reads_stall).
TextPadding = Literal["auto", "compute", "skip"]
TEXT_PADDINGS: tuple[TextPadding, ...] = ("auto", "compute", "skip")


class _Packing:
    """The real tokens of a padded batch x [B, N, D] (keep [B, N], False = padding) as rows of the flat
    [B·N] sequence: ``pack`` gathers them [R, D], ``unpack`` scatters them back over x's pad rows."""

    def __init__(self, x: torch.Tensor, keep: torch.Tensor) -> None:
        self.length, self.shape = x.shape[1], x.shape
        self.rows = keep.reshape(-1).nonzero().squeeze(1)  # reads the mask on the host: not for CUDA graphs
        self.sample = self.rows // self.length

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, x.shape[-1]).index_select(0, self.rows)

    def unpack(self, x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, x.shape[-1]).index_copy(0, self.rows, packed).reshape(x.shape)

    def first_rows(self) -> tuple[torch.Tensor, torch.Tensor, torch.Size]:
        """(rows, the packed row of each sample's token 0, shape) for the blocks' ``forward_first``."""
        starts = torch.arange(self.shape[0], device=self.rows.device) * self.length
        first = torch.searchsorted(self.rows, starts)
        if first.numel() and (int(first.max()) >= self.rows.numel() or not torch.equal(self.rows[first], starts)):
            raise ValueError("a text whose first token is padding has no [CLS] to read")
        return self.rows, first, self.shape

    def per_row(self, keep: BranchKeep | None) -> BranchKeep | None:
        """Per-sample stochastic-depth flags [B, 1, 1] → the flags of each packed row [R, 1]."""
        if keep is None:
            return None
        return BranchKeep(*(flags.reshape(-1, 1).index_select(0, self.sample) for flags in keep))


def _per_sample(keep: BranchKeep | None) -> BranchKeep | None:
    """Stochastic-depth flags [B, 1, 1] → [B, 1], for one token per sample."""
    return None if keep is None else BranchKeep(*(flags.reshape(-1, 1) for flags in keep))


class VLModel(nn.Module):
    """Backbone + heads. Build with :func:`create_model`; encode with ``encode_image``,
    ``encode_text``, ``encode_pair``; every encoder returns final-norm hidden states [B, N, D]."""

    # Declared for the type checker only: nn.Module.__getattr__ would type them ``Tensor | Module``.
    # Buffers registered by _set_relpos_index.
    image_index: torch.Tensor
    text_index: torch.Tensor
    # Heads, set by add_heads only when the model carries them (see Heads / present_heads): an
    # absent head still raises AttributeError, as these annotations assign nothing.
    mlm_score: MLMHead
    itm_score: ITMHead
    itc_text_proj: ContrastiveProjection
    itc_image_proj: ContrastiveProjection
    logit_scale: nn.Parameter
    itc_vl_text_proj: ContrastiveProjection
    itc_vl_image_proj: ContrastiveProjection
    logit_vl_scale: nn.Parameter
    vqa_classifier: nn.Sequential
    nlvr2_classifier: nn.Sequential

    # TextPadding. Under "skip" the real tokens are scattered into the padded layout only for the attention
    # product. Same values for every real token up to the rounding of differently shaped products (training
    # sets "auto", its validation included; the evaluate and zero-shot stages and gram collection keep
    # "compute"); a pad position's output means nothing in either mode (under "skip" its input passes
    # through unchanged).
    text_padding: TextPadding = "compute"

    def __init__(self, config: ModelConfig, sharing: Sharing | str, heads: Heads = Heads()) -> None:
        super().__init__()
        self.config = config
        self.sharing = Sharing.parse(sharing)
        dim, layers = config.dim, config.num_layers
        self.text_embeddings = TextEmbeddings(config.vocab_size, dim, config.embed_dropout)
        self.token_type_embeddings = nn.Embedding(2, dim)  # 0 text, 1 image (2: NLVR2's second image)
        self.transformer = MultiwayTransformer(config, self.expert_layout())
        rows = RelPosLayout(config.grid, config.max_text_len).num_rows
        self.relative_position_bias_table = nn.Parameter(torch.zeros(rows, layers * config.num_heads))
        self.pooler = Pooler(dim)
        init_module(self, config.init_std)
        nn.init.trunc_normal_(self.transformer.cls_token, std=config.init_std)
        rescale_residual_branches(self.transformer.blocks)
        self._set_relpos_index()
        self.add_heads(heads)

    def expert_layout(self) -> ExpertLayout:
        return expert_layout(self.config, self.sharing)

    # ----------------------------------------------------------------- encoders
    @overload
    def encode_image(
        self,
        images: torch.Tensor,
        token_type: int = 1,
        *,
        return_fusion_input: Literal[False] = False,
        first_only: bool = False,
    ) -> torch.Tensor: ...
    @overload
    def encode_image(
        self,
        images: torch.Tensor,
        token_type: int = 1,
        *,
        return_fusion_input: Literal[True],
        first_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def encode_image(
        self, images: torch.Tensor, token_type: int = 1, *, return_fusion_input: bool = False, first_only: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """images: [B, 3, S, S] → [B, 1+G², D] through the v experts.

        With ``return_fusion_input`` also the un-normalised layer-(F−1) state [B, 1+G², D], the
        input of :meth:`fuse_unimodal` (ITC term (b)). ``first_only``: [B, 1, D] (see :meth:`encode_pair`).
        """
        x = self._embed_image(images, token_type)
        return self._encode_unimodal(x, None, Modality.V, return_fusion_input, first_only)

    @overload
    def encode_text(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        *,
        return_fusion_input: Literal[False] = False,
        first_only: bool = False,
    ) -> torch.Tensor: ...
    @overload
    def encode_text(
        self, ids: torch.Tensor, mask: torch.Tensor, *, return_fusion_input: Literal[True], first_only: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def encode_text(
        self, ids: torch.Tensor, mask: torch.Tensor, *, return_fusion_input: bool = False, first_only: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """ids, mask: [B, T] (mask 1 = real token, 0 = padding) → [B, T, D] through the l experts.

        With ``return_fusion_input`` also the layer-(F−1) state [B, T, D] (see :meth:`encode_image`).
        ``first_only``: [B, 1, D] (see :meth:`encode_pair`).
        """
        return self._encode_unimodal(self._embed_text(ids), mask, Modality.L, return_fusion_input, first_only)

    def encode_pair(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        images: torch.Tensor,
        image_token_type: int = 1,
        *,
        first_only: bool = False,
    ) -> torch.Tensor:
        """Text [B, T] (+ mask) and images [B, 3, S, S] → [B, T+1+G², D], text first.

        Token 0 (the text [CLS]) feeds the pooler. ``image_token_type`` 2 marks NLVR2's second image.
        ``first_only``: → [B, 1, D], token 0 alone, its last layer computed for that token only (for a
        caller that reads nothing else: the same values up to float rounding, ~5/6 of a layer's work less).
        """
        fusion = self.config.fusion_start
        text, image = self._embed_text(ids), self._embed_image(images, image_token_type)
        if self.config.drop_path_mode == "per_sample" and self.training:
            text, image = self._run_halves(text, image, range(fusion), self._index(Modality.L, ids), mask)
        else:
            text = self._run(text, Modality.L, range(fusion), self._index(Modality.L, ids), mask)
            image = self._run(image, Modality.V, range(fusion), self.image_index, None)
        index = joint_index(self._index(Modality.L, ids), self.image_index, self._relpos_layout())
        keep = torch.cat([mask.bool(), mask.new_ones(image.shape[:2], dtype=torch.bool)], dim=1)
        joint = torch.cat([text, image], dim=1)
        joint = self._run(joint, Modality.VL, range(fusion, self.config.num_layers), index, keep, first_only)
        return self.transformer.norm(joint)

    def fuse_unimodal(
        self, hidden: torch.Tensor, mask: torch.Tensor | None, modality: Modality, *, first_only: bool = False
    ) -> torch.Tensor:
        """Re-run the fusion layers in ``vl`` mode on one modality's layer-(F−1) state.

        hidden: [B, N, D] from ``encode_*(..., return_fusion_input=True)``; mask: [B, N] for text,
        None for images; modality: which of the two it is (selects the position bias). → [B, N, D]
        (``first_only``: [B, 1, D], as :meth:`encode_pair`).
        """
        layers = range(self.config.fusion_start, self.config.num_layers)
        hidden = self._run(hidden, Modality.VL, layers, self._index(modality, hidden), mask, first_only)
        return self.transformer.norm(hidden)

    # ----------------------------------------------------------------- internals
    def _encode_unimodal(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        modality: Modality,
        return_fusion_input: bool,
        first_only: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        fusion, index = self.config.fusion_start, self._index(modality, x)
        fusion_input = self._run(x, modality, range(fusion), index, mask)
        out = self._run(fusion_input, modality, range(fusion, self.config.num_layers), index, mask, first_only)
        out = self.transformer.norm(out)
        return (out, fusion_input) if return_fusion_input else out

    def _embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.shape[1] > self.config.max_text_len:
            raise ModelConfigError(f"text of {ids.shape[1]} tokens exceeds max_text_len {self.config.max_text_len}")
        return self.text_embeddings(ids) + self.token_type_embeddings.weight[0]

    def _embed_image(self, images: torch.Tensor, token_type: int) -> torch.Tensor:
        size = self.config.image_size
        if tuple(images.shape[-2:]) != (size, size):
            raise ModelConfigError(
                f"images of {tuple(images.shape[-2:])} pixels do not match the model's "
                f"image_size {size}; call resize_image_relpos for another resolution"
            )
        return self.transformer.embed_image(images) + self.token_type_embeddings.weight[token_type]

    def _index(self, modality: Modality, tokens: torch.Tensor) -> torch.Tensor:
        """Relative-position rows for a unimodal sequence of ``tokens.shape[1]`` tokens."""
        if modality is Modality.V:
            return self.image_index
        n = tokens.shape[1]
        return self.text_index[:n, :n]

    def _run(
        self,
        x: torch.Tensor,
        modality: Modality,
        layers: range,
        index: torch.Tensor,
        keep: torch.Tensor | None,
        first_only: bool = False,
    ) -> torch.Tensor:
        """Blocks ``layers`` on x [B, N, D]; index [N, N] table rows; keep [B, N] (False = padding) or None.
        → [B, N, D], or with ``first_only`` [B, 1, D]: the last layer computes token 0's output alone."""
        last = layers[-1] if first_only and len(layers) else None
        blocks: list[MultiwayBlock] = [self.transformer.blocks[i] for i in layers]  # type: ignore[misc]
        if keep is not None and self._skips_padding(x):
            packing = _Packing(x, keep)
            packed = packing.pack(x)
            for i, block in zip(layers, blocks):
                mask = self._attn_mask(index, i, keep)
                flags = block.draw_keep(x)
                if i == last:
                    first = block.forward_first(packed, modality, mask, _per_sample(flags), packing.first_rows())
                    return first[:, None]
                packed = block.forward_packed(packed, packing.rows, x.shape, modality, mask, packing.per_row(flags))
            return packing.unpack(x, packed)
        for i, block in zip(layers, blocks):
            mask = self._attn_mask(index, i, keep)
            if i == last:
                return block.forward_first(x, modality, mask, _per_sample(block.draw_keep(x)))[:, None]
            x = block(x, modality, mask)
        return x

    def _run_halves(
        self, text: torch.Tensor, image: torch.Tensor, layers: range, text_index: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Blocks ``layers`` on the text [B, T, D] and image [B, N, D] halves of a pair, each block's
        stochastic depth drawn once per sample for both halves (``drop_path_mode="per_sample"``)."""
        packing = _Packing(text, mask) if self._skips_padding(text) else None
        packed = packing.pack(text) if packing else text
        for i in layers:
            block: MultiwayBlock = self.transformer.blocks[i]  # type: ignore[assignment]
            keep = block.draw_keep(text)
            text_mask = self._attn_mask(text_index, i, mask)
            if packing:
                packed = block.forward_packed(
                    packed, packing.rows, text.shape, Modality.L, text_mask, packing.per_row(keep)
                )
            else:
                packed = block(packed, Modality.L, text_mask, keep)
            image = block(image, Modality.V, self._attn_mask(self.image_index, i, None), keep)
        return (packing.unpack(text, packed) if packing else packed), image

    def _skips_padding(self, x: torch.Tensor) -> bool:
        return self.text_padding == "skip" or (self.text_padding == "auto" and not reads_stall(x))

    def _attn_mask(self, index: torch.Tensor, layer: int, keep: torch.Tensor | None) -> torch.Tensor:
        """Additive attention mask [1 or B, H, N, N]: layer's relative position bias, padded keys 1e4 lower."""
        heads = self.config.num_heads
        table = self.relative_position_bias_table[:, layer * heads : (layer + 1) * heads]
        bias = F.embedding(index, table).permute(2, 0, 1).unsqueeze(0)
        if keep is None:
            return bias
        # Added, not substituted: a masked key's weight is exp(-1e4 + …) = 0 either way, and the broadcast add
        # backpropagates without a [B, H, N, N] selection per layer.
        return bias + torch.where(keep.bool()[:, None, None, :], 0.0, MASKED)

    def _relpos_layout(self) -> RelPosLayout:
        return RelPosLayout(self.config.grid, self.config.max_text_len)

    def _set_relpos_index(self) -> None:
        device = self.relative_position_bias_table.device
        layout = self._relpos_layout()
        self.register_buffer("image_index", image_index(layout.grid).to(device), persistent=False)
        self.register_buffer("text_index", text_index(layout).to(device), persistent=False)

    # ----------------------------------------------------------------- structure changes
    def resize_image_relpos(self, new_grid: int) -> None:
        """Serve images of ``new_grid`` patches per side: resample the image part of the bias table.

        Replaces the table parameter, so call it before building an optimizer.
        """
        table = resize_image_table(self.relative_position_bias_table.detach(), self.config.grid, new_grid)
        self.relative_position_bias_table = nn.Parameter(table)
        self.config = dataclasses.replace(self.config, image_size=new_grid * self.config.patch_size)
        self._set_relpos_index()

    def grow_token_types(self, count: int) -> None:
        """Extend ``token_type_embeddings`` to ``count`` rows, new rows copied from row 1 (image)."""
        old = self.token_type_embeddings.weight.detach()
        if count < old.shape[0]:
            raise ModelConfigError(f"cannot shrink token types from {old.shape[0]} to {count}")
        grown = nn.Embedding(count, old.shape[1]).to(old)
        with torch.no_grad():
            grown.weight[: old.shape[0]] = old
            grown.weight[old.shape[0] :] = old[1]
        self.token_type_embeddings = grown

    @property
    def heads(self) -> Heads:
        """The heads this model carries."""
        return present_heads(self)

    def add_heads(self, heads: Heads) -> None:
        """Create (freshly initialised) every head in ``heads`` that the model does not have yet."""
        with torch.device(self._device()):
            new = missing_heads(heads, self.heads, self.config.dim, self.config.vocab_size)
        for name, part in new.items():
            if isinstance(part, nn.Module):
                init_module(part, self.config.init_std)
            setattr(self, name, part)
        if heads.nlvr2:
            self.grow_token_types(max(3, self.token_type_embeddings.num_embeddings))

    def add_vqa_head(self, num_answers: int) -> None:
        self.add_heads(Heads(vqa_answers=num_answers))

    def add_nlvr2_head(self) -> None:
        """The NLVR2 classifier over two concatenated poolers; also grows token types to 3."""
        self.add_heads(Heads(nlvr2=True))

    def _device(self) -> torch.device:
        return self.relative_position_bias_table.device


def set_text_padding(model: nn.Module, mode: TextPadding) -> int:
    """Set how every :class:`VLModel` in ``model`` treats text pad tokens (:attr:`VLModel.text_padding`);
    returns how many were set."""
    if mode not in TEXT_PADDINGS:
        raise ValueError(f"text padding {mode!r}: choose from {TEXT_PADDINGS}")
    models = [m for m in model.modules() if isinstance(m, VLModel)]
    for m in models:
        m.text_padding = mode
    return len(models)


def create_model(preset: str, sharing: Sharing | str, heads: Heads = Heads(), **overrides: Any) -> VLModel:
    """A freshly initialised model: ``preset`` sizes with ``overrides``, ``sharing`` layout, ``heads``.

    Seed torch beforehand for a reproducible initialisation; build under ``torch.device("meta")``
    to count parameters without allocating them.
    """
    return VLModel(model_config(preset, **overrides), sharing, heads)
