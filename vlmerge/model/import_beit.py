"""Initialise the image side of a model from BEiT weights (arXiv 2106.08254), as vl-merging does.

Two layouts are read: timm's ``beit_base_patch16_224`` (per-block relative position tables) and
unilm's BEiT ``.pth`` (``{"model": …}``, possibly one shared ``rel_pos_bias`` table). Block weights
go into the shared block or into every expert; each BEiT table fills the image rows of our table
for its layer, resampled bicubically when the patch grid differs. Text embeddings, text rows of
the bias table, token types and heads keep their fresh initialisation.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from typing import Any

import torch

from vlmerge.model.checkpoint import strict_load
from vlmerge.model.errors import CheckpointError
from vlmerge.model.layout import Part
from vlmerge.model.model import VLModel
from vlmerge.model.pickles import load_pickled_weights
from vlmerge.model.relpos import RelPosLayout, resize_image_table

log = logging.getLogger(__name__)

_BLOCK = re.compile(r"blocks\.(\d+)\.(norm1|attn|norm2|mlp)\.(.+)")


def unwrap_beit(raw: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The flat BEiT state dict inside a file: under ``model``/``module``/``state_dict``, no prefixes."""
    for key in ("model", "module", "state_dict"):
        if isinstance(raw.get(key), Mapping):
            raw = raw[key]
    return {re.sub(r"^(module\.)?(transformer\.)?", "", k): v for k, v in raw.items()}


_SKIPPED = ("relative_position_bias_table", "relative_position_index", "k_bias")  # handled or derived
_STEM = re.compile(r"blocks\.\d+\.gamma_[12]|cls_token|patch_embed\.proj\.(weight|bias)")


def beit_state_dict(beit: Mapping[str, torch.Tensor], model: VLModel) -> dict[str, torch.Tensor]:
    """Our keys → tensors for everything BEiT provides (``beit`` as returned by :func:`unwrap_beit`)."""
    layout, config = model.expert_layout(), model.config
    depth = len({int(m.group(1)) for k in beit if (m := _BLOCK.match(k))})
    if depth != config.num_layers:
        raise CheckpointError(f"BEiT weights have {depth} blocks, the model {config.num_layers}")
    out: dict[str, torch.Tensor] = {}
    unused = []
    for key, value in beit.items():
        if (m := _BLOCK.match(key)) and m.group(3) not in _SKIPPED:
            layer, part = int(m.group(1)), Part(m.group(2))
            experts = layout.experts(layer) if part in layout.sharing.per_expert else (None,)
            out.update({layout.key(layer, part, m.group(3), e): value for e in experts})
        elif _STEM.fullmatch(key):
            out[f"transformer.{key}"] = value
        elif not (m or key.startswith(("norm.", "fc_norm.", "rel_pos_bias."))):
            unused.append(key)
    # Mean-pooling BEiT models keep their final LayerNorm as ``fc_norm`` (``norm`` is then absent).
    norm = "norm" if "norm.weight" in beit else "fc_norm"
    out.update({f"transformer.norm.{p}": beit[f"{norm}.{p}"] for p in ("weight", "bias") if f"{norm}.{p}" in beit})
    out["relative_position_bias_table"] = _bias_table(beit, model)
    if unused:
        log.info("BEiT tensors the model does not use: %s", sorted(unused))
    return out


def _bias_table(beit: Mapping[str, torch.Tensor], model: VLModel) -> torch.Tensor:
    """Our table with each layer's image rows taken from BEiT (per-block tables or one shared table)."""
    config, heads = model.config, model.config.num_heads
    table = model.relative_position_bias_table.detach().clone()
    rows = RelPosLayout(config.grid, config.max_text_len).image_rows
    for layer in range(config.num_layers):
        src = beit.get(
            f"blocks.{layer}.attn.relative_position_bias_table", beit.get("rel_pos_bias.relative_position_bias_table")
        )
        if src is None:
            raise CheckpointError(f"BEiT weights have no relative position table for block {layer}")
        if src.shape[1] != heads:
            raise CheckpointError(f"BEiT relative position table has {src.shape[1]} heads, the model {heads}")
        src_grid = (math.isqrt(src.shape[0] - 3) + 1) // 2
        table[:rows, layer * heads : (layer + 1) * heads] = resize_image_table(src, src_grid, config.grid)
    return table


def init_from_beit(model: VLModel, path: str | os.PathLike[str]) -> list[str]:
    """Load BEiT weights from ``path`` into ``model``; returns the keys left at their initialisation."""
    mapped = beit_state_dict(unwrap_beit(load_pickled_weights(path)), model)
    state = model.state_dict() | mapped
    strict_load(model, state, path)
    kept = sorted(set(state) - set(mapped))
    log.info("initialised %d tensors from %s; %d keep their initialisation", len(mapped), path, len(kept))
    return kept
