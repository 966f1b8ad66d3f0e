"""Convert vl-merging's Lightning ``.ckpt`` files (MA or MS) into our safetensors checkpoints.

Block keys already match ours. What changes: the contrastive heads are called ``itc_*`` here
(upstream ``ifm_*``); index buffers and never-used parameters (BERT's absolute text positions,
the image mask token, video tables) are dropped; the relative position table is re-laid out when
upstream built it for another patch grid or text length.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import torch

from vlmerge.model.checkpoint import save_model, strict_load
from vlmerge.model.config import model_config
from vlmerge.model.errors import CheckpointError
from vlmerge.model.heads import Heads
from vlmerge.model.layout import detect_sharing
from vlmerge.model.model import VLModel
from vlmerge.model.pickles import load_pickled_weights
from vlmerge.model.relpos import RelPosLayout, resize_image_table

log = logging.getLogger(__name__)

UNUSED = frozenset(
    {
        "relative_position_index",
        "text_relative_position_index",
        "text_imag_relative_position_index",
        "vl_text_imag_relative_position_index",
        "video_relative_position_index",
        "text_video_relative_position_index",
        "vl_text_video_relative_position_index",
        "temporal_relative_position_index",
        "mask_for_combining_temporal",
        "temporal_relative_position_bias_table",
        "text_embeddings.position_ids",
        "text_embeddings.position_embeddings.weight",
        "transformer.mask_token",
    }
)


def vlmerging_state_dict(raw: Mapping[str, Any], grid: int, max_text_len: int) -> dict[str, torch.Tensor]:
    """Our state dict from a loaded vl-merging checkpoint, its bias table laid out for ``grid`` × ``max_text_len``."""
    state = raw.get("state_dict", raw)
    out = {k.replace("ifm_", "itc_", 1) if k.startswith("ifm_") else k: v for k, v in state.items() if k not in UNUSED}
    for scale in ("logit_scale", "logit_vl_scale"):  # upstream scalars; ours are [1] (FSDP flattens no 0-d)
        if scale in out:
            out[scale] = out[scale].reshape(1)
    if "relative_position_bias_table" not in out:
        raise CheckpointError("no relative_position_bias_table: not a vl-merging / VLMo checkpoint")
    # Upstream sizes: the grid from its image index buffer, the text length from the remaining rows.
    index = state.get("relative_position_index")
    src_grid = math.isqrt(index.shape[0] - 1) if index is not None else grid
    table = out["relative_position_bias_table"]
    src_text = (table.shape[0] - RelPosLayout(src_grid, 0).text_start) // 2
    if src_text < max_text_len:
        raise CheckpointError(f"upstream bias table covers text of {src_text} tokens, the model needs {max_text_len}")
    table = resize_image_table(table, src_grid, grid)
    out["relative_position_bias_table"] = _crop_text_rows(
        table, RelPosLayout(grid, 0).text_start, src_text, max_text_len
    )
    return out


def _crop_text_rows(table: torch.Tensor, start: int, src_len: int, dst_len: int) -> torch.Tensor:
    """Keep text offsets |j−i| ≤ dst_len−2 (rows ``start + offset + len − 2``) and the 3 text CLS rows."""
    text = table[start:]
    first = src_len - dst_len
    return torch.cat([table[:start], text[first : first + 2 * dst_len - 3], text[2 * src_len - 3 :]])


def heads_in(state: Mapping[str, torch.Tensor]) -> Heads:
    """The heads a state dict in our naming carries."""
    vqa = state.get("vqa_classifier.3.weight")
    return Heads(
        mlm="mlm_score.bias" in state,
        itm="itm_score.fc.weight" in state,
        itc="itc_text_proj.fc.weight" in state,
        itc_vl="itc_vl_text_proj.fc.weight" in state,
        vqa_answers=vqa.shape[0] if vqa is not None else 0,
        nlvr2="nlvr2_classifier.0.weight" in state,
    )


def import_vlmerging(
    source: str | os.PathLike[str], out: str | os.PathLike[str], preset: str, **overrides: Any
) -> VLModel:
    """Read ``source`` (.ckpt), build the matching model (sharing and heads read from its keys,
    vocabulary size from its word embeddings unless overridden), strict-load it, save to ``out``."""
    raw = load_pickled_weights(source)
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{source} holds a {type(raw).__name__}, not a checkpoint dictionary")
    words = raw.get("state_dict", raw).get("text_embeddings.word_embeddings.weight")
    if words is None:
        raise CheckpointError(f"{source} has no text_embeddings.word_embeddings.weight: not a vl-merging checkpoint")
    overrides.setdefault("vocab_size", words.shape[0])
    config = model_config(preset, **overrides)
    state = vlmerging_state_dict(raw, config.grid, config.max_text_len)
    model = VLModel(config, detect_sharing(state), heads_in(state))
    model.grow_token_types(state["token_type_embeddings.weight"].shape[0])
    strict_load(model, state, source)
    save_model(out, model, inputs={"source": source}, extra={"imported_from": "vl-merging"})
    log.info("imported %s (%s) into %s", source, model.sharing.value, out)
    return model
