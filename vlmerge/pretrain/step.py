"""The three pre-training objectives computed on a model and a batch (docs/objectives.md).

Functions of (model, tensors): the LightningModule only weights, sums and logs what they return.
Shapes: images [B, 3, S, S]; ids, mask [B, T] int64 (mask 1 = real token).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from vlmerge.model import Modality, VLModel
from vlmerge.objectives import (
    IGNORE_INDEX,
    MAX_LOGIT_SCALE,
    ClassificationOutput,
    ContrastiveOutput,
    HardNegatives,
    ITCGather,
    MLMOutput,
    all_gather_no_grad,
    contrastive_loss,
    itm_labels,
    itm_loss,
    mlm_loss,
    sample_hard_negatives,
)
from vlmerge.objectives.device import reads_stall
from vlmerge.objectives.gather import is_distributed


class ITCTerms(NamedTuple):
    unimodal: ContrastiveOutput  # term (a): unimodal [CLS] → itc_*_proj, logit_scale
    fused: ContrastiveOutput  # term (b): layer-(F−1) states re-run through the fusion layers in vl mode


class ITMOutput(NamedTuple):
    result: ClassificationOutput
    negatives: HardNegatives


def mlm_term(
    model: VLModel, images: torch.Tensor, masked_ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor
) -> MLMOutput:
    """MLM on image+text: the text positions of the fused sequence → MLM head → CE over masked tokens.

    Only masked positions carry a loss, and the head is position-wise, so on the CPU it runs on those rows
    alone (:func:`masked_rows`): the same loss and gradients (to float rounding), a quarter of the head's
    work at 25 % masking. On CUDA every position goes through the head: selecting rows would read the
    masked count back to the host each step, and the head is ~1 % of a base step there.
    """
    hidden = model.encode_pair(masked_ids, mask, images)
    text = hidden[:, : masked_ids.shape[1]]
    if reads_stall(text):
        return mlm_loss(model.mlm_score(text), labels)
    rows, row_labels = masked_rows(text, labels)
    return mlm_loss(model.mlm_score(rows), row_labels)


def masked_rows(text: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The masked positions of text [B, T, D] as one sequence [1, N, D] with their labels [1, N] (N ≥ 1:
    a batch without a masked token keeps one ignored row, so the loss is an exact 0 with a gradient)."""
    picked = labels != IGNORE_INDEX
    if not bool(picked.any()):
        picked = torch.zeros_like(picked)
        picked.view(-1)[0] = True
    return text[picked][None], labels[picked][None]


def itc_terms(
    model: VLModel,
    images: torch.Tensor,
    ids: torch.Tensor,
    mask: torch.Tensor,
    gather: ITCGather = "exact",
    max_logit_scale: float | None = MAX_LOGIT_SCALE,
) -> ITCTerms:
    """Both contrastive terms; negatives come from every data-parallel rank (``gather``, ``max_logit_scale``:
    see :func:`vlmerge.objectives.contrastive_loss`)."""
    image, image_mid = model.encode_image(images, return_fusion_input=True, first_only=True)
    text, text_mid = model.encode_text(ids, mask, return_fusion_input=True, first_only=True)
    options: dict[str, Any] = {"gather": gather, "max_logit_scale": max_logit_scale}
    unimodal = contrastive_loss(
        model.itc_image_proj(image[:, 0]), model.itc_text_proj(text[:, 0]), model.logit_scale, **options
    )
    vl_image = model.fuse_unimodal(image_mid, None, Modality.V, first_only=True)
    vl_text = model.fuse_unimodal(text_mid, mask, Modality.L, first_only=True)
    fused = contrastive_loss(
        model.itc_vl_image_proj(vl_image[:, 0]), model.itc_vl_text_proj(vl_text[:, 0]), model.logit_vl_scale, **options
    )
    return ITCTerms(unimodal, fused)


def _pad(x: torch.Tensor, length: int) -> torch.Tensor:
    """[B, T] → [B, length] with zeros on the right (id 0 is [PAD]; mask 0 hides it)."""
    return F.pad(x, (0, length - x.shape[1]))


def gather_texts(
    ids: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Local ids/mask padded to the longest text of any rank, and the gathered ids/mask [world·B, T']."""
    if not is_distributed():  # one rank: nothing to pad, and no read of the longest length back to the host
        return ids, mask, ids, mask
    # Ranks pad their batches to different lengths; a gather needs one shape (a host read: the collective
    # waits for every rank anyway).
    lengths = all_gather_no_grad(torch.tensor([ids.shape[1]], device=ids.device))
    length = int(lengths.max())
    ids, mask = _pad(ids, length), _pad(mask, length)
    return ids, mask, all_gather_no_grad(ids), all_gather_no_grad(mask)


def itm_term(
    model: VLModel,
    images: torch.Tensor,
    ids: torch.Tensor,
    mask: torch.Tensor,
    unimodal: ContrastiveOutput,
    generator: torch.Generator | None,
) -> ITMOutput:
    """ITM with hard negatives drawn from term (a)'s similarities over the gathered batch.

    One image+text forward of 3B pairs, in :func:`itm_labels` order: the positives, each text with
    its negative image, each image with its negative text.
    """
    negatives = sample_hard_negatives(unimodal.logits_per_image, unimodal.logits_per_text, unimodal.targets, generator)
    all_images = all_gather_no_grad(images)
    ids, mask, all_ids, all_mask = gather_texts(ids, mask)
    neg_text, neg_image = negatives.neg_text_for_image, negatives.neg_image_for_text
    pair_ids = torch.cat([ids, ids, all_ids[neg_text]])
    pair_mask = torch.cat([mask, mask, all_mask[neg_text]])
    pair_images = torch.cat([images, all_images[neg_image], images])
    logits = model.itm_score(model.pooler(model.encode_pair(pair_ids, pair_mask, pair_images, first_only=True)))
    return ITMOutput(itm_loss(logits, itm_labels(images.shape[0], images.device)), negatives)
