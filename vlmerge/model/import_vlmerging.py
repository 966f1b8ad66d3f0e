"""vl-merging's Lightning ``.ckpt`` state dicts (MA, MS or merged) ↔ ours, in both directions.

Block keys already match ours. What changes: the contrastive heads are called ``itc_*`` here
(upstream ``ifm_*``) and their temperatures are [1] (upstream 0-d); upstream also stores index
buffers and never-used tensors (BERT's absolute text positions, the image mask token, video
tables), which we drop on import and rebuild on export; and upstream's relative position table
holds text rows for ``max_text_len_of_initckpt`` tokens (196 by default) where ours holds them for
``max_text_len``. Both directions live here so that they stay each other's inverse.

The sizes of the model come from the file's shapes; a preset (named, or the one they fit) supplies
everything the shapes do not say (dropouts, init scales).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from vlmerge.model.checkpoint import strict_load
from vlmerge.model.config import PRESETS, ModelConfig, model_config
from vlmerge.model.errors import CheckpointError
from vlmerge.model.heads import Heads
from vlmerge.model.layout import Sharing, detect_sharing
from vlmerge.model.model import VLModel
from vlmerge.model.pickles import load_pickled_weights
from vlmerge.model.relpos import RelPosLayout, image_index, joint_index, resize_image_table, text_index

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
SCALES = ("logit_scale", "logit_vl_scale")
REQUIRED = (
    "text_embeddings.word_embeddings.weight",
    "token_type_embeddings.weight",
    "transformer.patch_embed.proj.weight",
    "transformer.blocks.0.gamma_1",
    "relative_position_bias_table",
)
# Sizes the weights fix: a preset (with its overrides) must agree with the file on each of them.
STRUCTURAL = ("num_layers", "dim", "num_heads", "mlp_dim", "patch_size")
# Lightning's own bookkeeping in an export; upstream's loader reads only ``state_dict``.
LIGHTNING_VERSION = "1.5.10"


@dataclass(frozen=True)
class Detected:
    """What an upstream file turned out to hold (recorded in the imported checkpoint's sidecar)."""

    sharing: Sharing
    heads: Heads
    token_types: int
    grid: int  # patches per image side the file's bias table was built for
    text_rows_for: int  # upstream's max_text_len_of_initckpt

    @property
    def architecture(self) -> str:
        """The paper's name: MA (merged models are MA-shaped too), MS, or MS with only some parts per expert."""
        return {Sharing.SHARED: "MA", Sharing.MODALITY_SPECIFIC: "MS"}.get(self.sharing, f"MS-{self.sharing.value}")

    def to_json(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "sharing": self.sharing.value,
            "heads": dataclasses.asdict(self.heads),
            "token_types": self.token_types,
            "grid": self.grid,
            "text_rows_for": self.text_rows_for,
        }


# ------------------------------------------------------------------------------------------ import
def upstream_state(raw: object, source: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensor state dict of a loaded vl-merging file (``{"state_dict": …}`` or a bare state dict)."""
    state = raw.get("state_dict", raw) if isinstance(raw, Mapping) else raw
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(f"{source} holds a {type(raw).__name__}, not a checkpoint dictionary")
    for key in REQUIRED:
        if key not in state:
            raise CheckpointError(f"{source} has no {key}: not a vl-merging / VLMo checkpoint")
    loose = sorted(str(k) for k, v in state.items() if not isinstance(v, torch.Tensor))
    if loose:
        raise CheckpointError(f"{source}: state_dict entries {loose[:5]} are not tensors")
    return dict(state)


def file_sizes(state: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Config fields the shapes fix: STRUCTURAL, plus vocabulary, image size and text length when stored."""
    words = state["text_embeddings.word_embeddings.weight"]
    layers = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"transformer\.blocks\.(\d+)\.", k)))
    fc1 = next(v for k, v in state.items() if re.fullmatch(r"transformer\.blocks\.0\.mlp\.(v\.)?fc1\.weight", k))
    patch = state["transformer.patch_embed.proj.weight"].shape[-1]
    sizes = {
        "num_layers": layers,
        "dim": words.shape[1],
        "num_heads": state["relative_position_bias_table"].shape[1] // layers,
        "mlp_dim": fc1.shape[0],
        "patch_size": patch,
        "vocab_size": words.shape[0],
    }
    if "relative_position_index" in state:
        sizes["image_size"] = math.isqrt(state["relative_position_index"].shape[0] - 1) * patch
    text = state.get("text_relative_position_index", state.get("text_embeddings.position_embeddings.weight"))
    if text is not None:
        sizes["max_text_len"] = text.shape[0]
    return sizes


def fit_config(
    state: Mapping[str, torch.Tensor], source: str | os.PathLike[str], preset: str | None, **overrides: Any
) -> ModelConfig:
    """The config of ``preset`` (or the first preset that fits) with ``overrides``, sized from the file.

    Structural sizes must agree with the file; vocabulary, image size and text length are taken from it
    unless overridden (a different image size resamples the bias table).
    """
    try:
        sizes = file_sizes(state)
    except StopIteration:
        raise CheckpointError(f"{source}: block 0 has no mlp fc1 weight: keys of no known layout") from None
    taken = {k: v for k, v in sizes.items() if k not in STRUCTURAL} | overrides
    for name in [preset] if preset else list(PRESETS):
        config = model_config(name, **taken)
        if all(getattr(config, k) == sizes[k] for k in STRUCTURAL):
            return config
    shapes = ", ".join(f"{k}={sizes[k]}" for k in STRUCTURAL)
    tried = f"preset {preset!r} with overrides {overrides}" if preset else f"any preset {sorted(PRESETS)}"
    raise CheckpointError(f"{source}: its shapes ({shapes}) do not fit {tried}")


def detect(state: Mapping[str, torch.Tensor], config: ModelConfig, source: str | os.PathLike[str]) -> Detected:
    """Sharing layout, heads and the bias table's source sizes, each checked against ``config``."""
    try:
        sharing = detect_sharing(state)
    except CheckpointError as err:
        raise CheckpointError(f"{source}: {err}") from None
    vl_layers = {int(m.group(1)) for k in state if (m := re.match(r"transformer\.blocks\.(\d+)\.\w+\.vl\.", k))}
    first_vl = min(vl_layers, default=None)
    if sharing is not Sharing.SHARED and first_vl != config.fusion_start:
        raise CheckpointError(f"{source}: vl experts start at layer {first_vl}, the model's F is {config.fusion_start}")
    heads = heads_in({_ours(k): v for k, v in state.items()})
    token_types = state["token_type_embeddings.weight"].shape[0]
    if heads.nlvr2 and token_types < 3:
        raise CheckpointError(f"{source}: an NLVR2 classifier needs 3 token types, the file has {token_types}")
    index = state.get("relative_position_index")
    grid = math.isqrt(index.shape[0] - 1) if index is not None else config.grid
    text_rows = state["relative_position_bias_table"].shape[0] - RelPosLayout(grid, 0).text_start
    if text_rows % 2 or text_rows < 2 * config.max_text_len:
        raise CheckpointError(
            f"{source}: the bias table's {text_rows} text rows do not cover text of {config.max_text_len} tokens "
            f"on a {grid}x{grid} patch grid"
        )
    return Detected(sharing, heads, token_types, grid, text_rows // 2)


def _ours(key: str) -> str:
    return "itc_" + key[4:] if key.startswith("ifm_") else key


def vlmerging_state_dict(
    state: Mapping[str, torch.Tensor], config: ModelConfig, found: Detected
) -> dict[str, torch.Tensor]:
    """Our state dict from an upstream one, its bias table laid out for ``config``'s grid and text length."""
    out = {_ours(k): v for k, v in state.items() if k not in UNUSED}
    for scale in SCALES:  # upstream scalars; ours are [1] (FSDP flattens no 0-d)
        if scale in out:
            out[scale] = out[scale].reshape(1)
    table = resize_image_table(out["relative_position_bias_table"], found.grid, config.grid)
    start = RelPosLayout(config.grid, 0).text_start
    out["relative_position_bias_table"] = _crop_text_rows(table, start, found.text_rows_for, config.max_text_len)
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


def read_vlmerging(
    source: str | os.PathLike[str], preset: str | None = None, **overrides: Any
) -> tuple[VLModel, Detected]:
    """The model a vl-merging ``.ckpt`` holds, strict-loaded, and what was detected in it."""
    state = upstream_state(load_pickled_weights(source), source)
    config = fit_config(state, source, preset, **overrides)
    found = detect(state, config, source)
    model = VLModel(config, found.sharing, found.heads)
    model.grow_token_types(found.token_types)
    strict_load(model, vlmerging_state_dict(state, config, found), source)
    log.info("read %s: %s, heads %s", source, found.architecture, found.heads)
    return model, found


# ------------------------------------------------------------------------------------------ export
def to_vlmerging_state(
    state: Mapping[str, torch.Tensor], config: ModelConfig, text_rows_for: int
) -> dict[str, torch.Tensor]:
    """Upstream's state dict for our ``state``: the inverse of :func:`vlmerging_state_dict` plus the
    buffers upstream's loader reads (its fine-tuning path pops the three index buffers and slices the
    text positions, so they must be there); the bias table's text rows laid out for ``text_rows_for``."""
    if text_rows_for < config.max_text_len:
        raise CheckpointError(f"text rows for {text_rows_for} tokens cannot hold max_text_len {config.max_text_len}")
    out = {"ifm_" + k[4:] if k.startswith("itc_") else k: v for k, v in state.items()}
    for scale in SCALES:
        if scale in out:
            out[scale] = out[scale].reshape(())
    layout = RelPosLayout(config.grid, text_rows_for)
    out["relative_position_bias_table"] = _pad_text_rows(
        state["relative_position_bias_table"], layout.text_start, config.max_text_len, text_rows_for
    )
    image, text = image_index(config.grid), text_index(layout)[: config.max_text_len, : config.max_text_len]
    return out | {
        "relative_position_index": image,
        "text_relative_position_index": text,
        "text_imag_relative_position_index": joint_index(text, image, layout).float(),  # float upstream
        "text_embeddings.position_ids": torch.arange(config.max_text_len)[None],
        # BERT's absolute positions: upstream builds them but never adds them (position_embedding_type rel_pos).
        "text_embeddings.position_embeddings.weight": torch.zeros(config.max_text_len, config.dim),
    }


def _pad_text_rows(table: torch.Tensor, start: int, src_len: int, dst_len: int) -> torch.Tensor:
    """Inverse of :func:`_crop_text_rows`: offsets beyond ±(src_len−2), never read at src_len tokens, are 0."""
    text = table[start:]
    first = dst_len - src_len
    offsets = table.new_zeros(2 * dst_len - 3, table.shape[1])
    offsets[first : first + 2 * src_len - 3] = text[: 2 * src_len - 3]
    return torch.cat([table[:start], offsets, text[2 * src_len - 3 :]])


def lightning_checkpoint(state: dict[str, torch.Tensor], steps: int, record: dict[str, Any]) -> dict[str, Any]:
    """The dictionary Lightning writes, as far as upstream reads it (``torch.load(path)["state_dict"]``);
    ``record`` says where it came from."""
    return {
        "state_dict": state,
        "epoch": 0,
        "global_step": steps,
        "pytorch-lightning_version": LIGHTNING_VERSION,
        "vlmerge": record,
    }
