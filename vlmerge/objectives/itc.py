"""Image-text contrastive loss: CLIP's symmetric InfoNCE with negatives from every rank.

CLIP (Radford et al. 2021, arXiv 2103.00020) as VLMo (arXiv 2111.02358) uses it for pre-training
(upstream "ifm") and for retrieval fine-tuning. The distributed form is open_clip's ``ClipLoss``
with ``local_loss=True, gather_with_grad=True``
(https://github.com/mlfoundations/open_clip/blob/main/src/open_clip/loss.py): each rank scores its
B local rows against all ``world * B`` gathered columns, and the positive of local row i is column
``rank * B + i``.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

from vlmerge.objectives.errors import ObjectiveInputError
from vlmerge.objectives.gather import all_gather_no_grad, all_gather_with_grad, rank_offset

# CLIP caps the temperature at 100 so that logits cannot grow without bound and destabilise training.
MAX_LOGIT_SCALE = 100.0

# How negatives from other ranks enter the loss: "exact" (gathered with gradient, the default) or
# "upstream" (the released code: gathered without gradient, full gathered-batch loss on every rank).
ITCGather = Literal["exact", "upstream"]
ITC_GATHERS: tuple[ITCGather, ...] = ("exact", "upstream")


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


def _gather_keeping_local(x: torch.Tensor) -> torch.Tensor:
    """Every rank's rows [world*B, D], gathered without gradient; this rank's slot holds ``x`` with its graph."""
    gathered = all_gather_no_grad(x)
    if gathered is x:
        return x
    start = rank_offset(x.shape[0])
    return torch.cat([gathered[:start], x, gathered[start + x.shape[0] :]])


def contrastive_loss(
    image_feats: torch.Tensor,
    text_feats: torch.Tensor,
    logit_scale: torch.Tensor,
    gather: ITCGather = "exact",
    max_logit_scale: float | None = MAX_LOGIT_SCALE,
) -> ContrastiveOutput:
    """Symmetric InfoNCE over matching rows of ``image_feats`` and ``text_feats``.

    image_feats, text_feats: [B, D] projected features, *not* normalised: they are L2-normalised
    here, so similarities are cosines. logit_scale: scalar tensor in log space (a learned
    parameter); the logits are ``min(exp(logit_scale), max_logit_scale) * cos`` (above the cap the
    scale gets no gradient; ``max_logit_scale=None``: no cap, as upstream, whose clamp is commented out).

    Under data parallelism (``world`` ranks of B rows each) rank r returns
    ``L_r = mean over its B rows``, so the mean of the ``L_r`` equals the loss of one process over
    the concatenated batch, L. Because the gather sums gradients over ranks, the gradient rank r
    gets for its own features is ``world * dL/d(features_r)``; DDP's averaging of parameter
    gradients divides by ``world`` again, so parameters receive exactly dL/dθ.

    ``gather="upstream"`` reproduces the released code (upstream ``modules/objectives.py``): features
    are gathered *without* gradient, this rank's own rows are put back in their slot, and every rank
    computes the symmetric loss over the whole gathered ``world*B × world*B`` matrix. The loss value
    of every rank is then L (the mean of the exact mode's ``L_r``), but rank r's features get only
    dL/d(features_r), so after DDP's averaging the contrastive gradient of the encoders is dL/dθ / world
    (the temperature's is dL/ds in both modes). The returned logits, accuracies and targets are this
    rank's rows in both modes. Without ``torch.distributed`` the two modes are the same computation.
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
    if gather not in ITC_GATHERS:
        raise ObjectiveInputError(f"contrastive: gather must be one of {ITC_GATHERS}, got {gather!r}")
    scale = logit_scale.reshape(()).exp()
    if max_logit_scale is not None:
        scale = scale.clamp(max=max_logit_scale)
    targets = contrastive_targets(image.shape[0], device=image.device)
    if gather == "exact":
        logits_per_image = scale * image @ all_gather_with_grad(text).T
        logits_per_text = scale * text @ all_gather_with_grad(image).T
        loss = (F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_text, targets)) / 2
    else:
        all_logits = scale * _gather_keeping_local(image) @ _gather_keeping_local(text).T  # [world*B, world*B]
        all_targets = torch.arange(all_logits.shape[0], device=image.device)
        loss = (F.cross_entropy(all_logits, all_targets) + F.cross_entropy(all_logits.T, all_targets)) / 2
        logits_per_image, logits_per_text = all_logits[targets], all_logits.T[targets]
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
