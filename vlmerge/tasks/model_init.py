"""The model a fine-tuning run starts from: an init checkpoint with exactly the task's heads.

The sharing layout comes from the checkpoint's sidecar, never from a guess: a merged checkpoint
is MA-shaped ("shared") and fine-tunes as MA, an MS checkpoint fine-tunes as MS. Heads the task
does not use (MLM, ITM, …) are left out, so every trained parameter can receive a gradient and
the fine-tuned checkpoint holds what the task trained; heads the checkpoint lacks start fresh.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from vlmerge.model import Heads, VLModel
from vlmerge.model.checkpoint import CheckpointMeta, load_state, strict_load
from vlmerge.tasks.errors import TaskError

log = logging.getLogger(__name__)


def common_heads(have: Heads, want: Heads) -> Heads:
    """The heads of ``have`` that ``want`` also asks for (a VQA head is kept whatever its size:
    ``add_heads`` then refuses one of another size)."""
    return Heads(
        mlm=have.mlm and want.mlm,
        itm=have.itm and want.itm,
        itc=have.itc and want.itc,
        itc_vl=have.itc_vl and want.itc_vl,
        vqa_answers=have.vqa_answers if want.vqa_answers else 0,
        nlvr2=have.nlvr2 and want.nlvr2,
    )


def task_model(
    init: Path,
    heads: Heads,
    image_size: int | None = None,
    drop_path: float | None = None,
    embed_dropout: float | None = None,
) -> tuple[VLModel, CheckpointMeta]:
    """Load ``init`` strictly, keep only ``heads`` (adding missing ones), then set the resolution.

    ``image_size`` None keeps the checkpoint's; another size resamples the image part of the
    relative position table. ``drop_path`` None keeps the checkpoint's stochastic-depth rate,
    ``embed_dropout`` None its text-embedding dropout. Returns the model and the init checkpoint's sidecar.
    """
    state, meta = load_state(init)
    config = meta.config
    if drop_path is not None:
        config = dataclasses.replace(config, drop_path=drop_path)
    if embed_dropout is not None:
        config = dataclasses.replace(config, embed_dropout=embed_dropout)
    model = VLModel(config, meta.sharing, common_heads(meta.heads, heads))
    model.grow_token_types(meta.token_types)
    own = model.state_dict()
    dropped = sorted(k for k in state if k not in own)
    if dropped:
        log.info("leaving out %d parameters of heads the task does not use, e.g. %s", len(dropped), dropped[0])
    strict_load(model, {k: v for k, v in state.items() if k in own}, init)
    model.add_heads(heads)
    if image_size is not None and image_size != config.image_size:
        resize(model, image_size)
    return model, meta


def resize(model: VLModel, image_size: int) -> None:
    """Serve ``image_size`` pixel images: resample the image part of the relative position table."""
    config = model.config
    if image_size % config.patch_size:
        raise TaskError(f"image size {image_size} is not a multiple of the patch size {config.patch_size}")
    log.info("resampling relative positions from %d to %d pixels", config.image_size, image_size)
    model.resize_image_relpos(image_size // config.patch_size)


def require_heads(have: Heads, want: Heads, source: Path, task: str) -> None:
    """Refuse to evaluate a checkpoint that lacks a head the task reads (a fresh head would score noise)."""
    if common_heads(have, want) != want:
        raise TaskError(
            f"{source} lacks the {task} head(s) {want} (it has {have}); "
            f"fine-tune it with python -m vlmerge.finetune --task {task} first"
        )
