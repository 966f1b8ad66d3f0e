"""Retrieval fine-tuning objective (COCO, Flickr30k; docs/tasks.md).

The model runs as a dual encoder: the [CLS] features of the unimodal image and text paths go
through ``itc_image_proj`` / ``itc_text_proj`` and are scored by the same symmetric InfoNCE as ITC
term (a) in pre-training, negatives gathered across ranks. Upstream does no ITM re-ranking.
"""

from __future__ import annotations

import torch

from vlmerge.objectives.itc import ContrastiveOutput, contrastive_loss


def retrieval_loss(image_feats: torch.Tensor, text_feats: torch.Tensor, logit_scale: torch.Tensor) -> ContrastiveOutput:
    """image_feats, text_feats: [B, D] outputs of ``itc_image_proj`` / ``itc_text_proj`` (normalised
    inside); logit_scale: scalar, log space. See ``itc.contrastive_loss``."""
    return contrastive_loss(image_feats, text_feats, logit_scale)
