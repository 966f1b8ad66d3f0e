"""Image-text contrastive loss: CLIP's symmetric InfoNCE with negatives from every rank.

CLIP (Radford et al. 2021, arXiv 2103.00020) as VLMo (arXiv 2111.02358) uses it for pre-training
(upstream "ifm") and for retrieval fine-tuning. The distributed form is open_clip's ``ClipLoss``
with ``local_loss=True, gather_with_grad=True``
(https://github.com/mlfoundations/open_clip/blob/main/src/open_clip/loss.py): each rank scores its
B local rows against all ``world * B`` gathered columns, and the positive of local row i is column
``rank * B + i``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from vlmerge.objectives.errors import ObjectiveInputError
from vlmerge.objectives.gather import all_gather_with_grad, rank_offset

# CLIP caps the temperature at 100 so that logits cannot grow without bound and destabilise training.
MAX_LOGIT_SCALE = 100.0


class ContrastiveOutput(NamedTuple):
    loss: torch.Tensor  # scalar: (image→text CE + text→image CE) / 2, mean over local rows
    logits_per_image: torch.Tensor  # [B, world*B]: local images against all gathered texts
    logits_per_text: torch.Tensor  # [B, world*B]: local texts against all gathered images
    i2t_acc: torch.Tensor  # scalar float: local images whose top text is their own
    t2i_acc: torch.Tensor  # scalar float: local texts whose top image is their own
    targets: torch.Tensor  # [B] int64: column of each local row's positive, rank*B + arange(B)


def contrastive_targets(batch_size: int, device: torch.device | None = None) -> torch.Tensor:
    """Column of each local sample's positive in the gathered batch: [B] = rank * B + arange(B)."""
    return torch.arange(batch_size, device=device) + rank_offset(batch_size)


def contrastive_loss(
    image_feats: torch.Tensor, text_feats: torch.Tensor, logit_scale: torch.Tensor
) -> ContrastiveOutput:
    """Symmetric InfoNCE over matching rows of ``image_feats`` and ``text_feats``.

    image_feats, text_feats: [B, D] projected features, *not* normalised: they are L2-normalised
    here, so similarities are cosines. logit_scale: scalar tensor in log space (a learned
    parameter); the logits are ``min(exp(logit_scale), 100) * cos`` (above the cap the scale gets
    no gradient).

    Under data parallelism (``world`` ranks of B rows each) rank r returns
    ``L_r = mean over its B rows``, so the mean of the ``L_r`` equals the loss of one process over
    the concatenated batch, L. Because the gather sums gradients over ranks, the gradient rank r
    gets for its own features is ``world * dL/d(features_r)``; DDP's averaging of parameter
    gradients divides by ``world`` again, so parameters receive exactly dL/dθ.
    """
    if image_feats.ndim != 2 or image_feats.shape != text_feats.shape:
        raise ObjectiveInputError(
            f"contrastive: expected image and text features of one shape [B, D], "
            f"got {tuple(image_feats.shape)} and {tuple(text_feats.shape)}"
        )
    if logit_scale.numel() != 1:
        raise ObjectiveInputError(f"contrastive: logit_scale must be a scalar, got shape {tuple(logit_scale.shape)}")
    image = F.normalize(image_feats, dim=-1)
    text = F.normalize(text_feats, dim=-1)
    scale = logit_scale.reshape(()).exp().clamp(max=MAX_LOGIT_SCALE)
    logits_per_image = scale * image @ all_gather_with_grad(text).T
    logits_per_text = scale * text @ all_gather_with_grad(image).T
    targets = contrastive_targets(image.shape[0], device=image.device)
    loss = (F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_text, targets)) / 2
    return ContrastiveOutput(
        loss=loss,
        logits_per_image=logits_per_image,
        logits_per_text=logits_per_text,
        i2t_acc=(logits_per_image.argmax(dim=1) == targets).float().mean(),
        t2i_acc=(logits_per_text.argmax(dim=1) == targets).float().mean(),
        targets=targets,
    )


def itc_loss(term_a: ContrastiveOutput, term_b: ContrastiveOutput) -> torch.Tensor:
    """Pre-training ITC (docs/objectives.md): the mean of term (a), the unimodal [CLS] features through
    ``itc_*_proj`` with ``logit_scale``, and term (b), the fusion layers re-run in ``vl`` mode
    through ``itc_vl_*_proj`` with ``logit_vl_scale``. Returns a scalar."""
    return (term_a.loss + term_b.loss) / 2
