"""Image-text matching with hard negatives (ALBEF, arXiv 2107.07651; VLMo, arXiv 2111.02358).

For every image one negative text, and for every text one negative image, is drawn from the
softmax of the ITC term (a) similarities with the positive removed, so that captions the model
already confuses with the right one are seen most often (docs/objectives.md). The ITM head then classifies
three image+text pairs per sample: the positive, (negative image, text) and (image, negative text).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from vlmerge.objectives.classification import ClassificationOutput, classification_loss
from vlmerge.objectives.device import reads_stall
from vlmerge.objectives.errors import ObjectiveInputError


class HardNegatives(NamedTuple):
    neg_text_for_image: torch.Tensor  # [B] int64: column of the gathered texts paired with local image i
    neg_image_for_text: torch.Tensor  # [B] int64: column of the gathered images paired with local text i


def sample_hard_negatives(
    sim_i2t: torch.Tensor,
    sim_t2i: torch.Tensor,
    positive_index: torch.Tensor,
    generator: torch.Generator | None = None,
) -> HardNegatives:
    """Draw one hard negative per local image and per local text.

    sim_i2t: [B, N_all] logits of the local images against all gathered texts, sim_t2i: [B, N_all]
    logits of the local texts against all gathered images (``ContrastiveOutput.logits_per_image``
    and ``.logits_per_text``, temperature included); positive_index: [B] the column of each row's
    positive (``ContrastiveOutput.targets``). Returned indices refer to the gathered batch.

    Upstream takes ``softmax(sim)``, zeroes the positive and lets ``torch.multinomial`` renormalise.
    That is the same distribution as a softmax over the other columns alone, which is what is
    computed here: with a temperature of 100 the positive can take all of a float32 softmax and
    leave a row of zeros, whereas the softmax over the other columns always has its largest entry
    ≥ 1 / (N_all - 1). The positive is excluded by *index*: a duplicate of the positive caption
    or image elsewhere in the batch is an ordinary candidate. N_all must be at least 2.
    ``generator`` (on the device of the similarities) makes the draw reproducible.
    """
    _check(sim_i2t, sim_t2i, positive_index)
    with torch.no_grad():
        neg_text = _sample_excluding(sim_i2t, positive_index, generator)
        neg_image = _sample_excluding(sim_t2i, positive_index, generator)
    return HardNegatives(neg_text, neg_image)


def _sample_excluding(
    sim: torch.Tensor, positive_index: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """One column per row of sim [B, N], drawn from softmax over the columns other than the positive."""
    logits = sim.detach().float().scatter(1, positive_index[:, None], float("-inf"))
    return torch.multinomial(logits.softmax(dim=1), 1, generator=generator).squeeze(1)


def _check(sim_i2t: torch.Tensor, sim_t2i: torch.Tensor, positive_index: torch.Tensor) -> None:
    if sim_i2t.ndim != 2 or sim_i2t.shape != sim_t2i.shape or positive_index.shape != sim_i2t.shape[:1]:
        raise ObjectiveInputError(
            f"hard negatives: expected sim_i2t [B, N], sim_t2i [B, N] and positive_index [B], got "
            f"{tuple(sim_i2t.shape)}, {tuple(sim_t2i.shape)} and {tuple(positive_index.shape)}"
        )
    n_all = sim_i2t.shape[1]
    if n_all < 2:
        raise ObjectiveInputError(
            f"hard negatives: need at least 2 candidates per row to exclude the positive, got {n_all}"
        )
    if positive_index.dtype != torch.int64:
        raise ObjectiveInputError(f"hard negatives: positive_index must be int64 in [0, {n_all})")
    in_range = ((positive_index >= 0) & (positive_index < n_all)).all()
    finite = torch.isfinite(sim_i2t).all() & torch.isfinite(sim_t2i).all()
    if reads_stall(sim_i2t):
        # Checked on the device: reading the flags back would stall the step on every batch. A failure
        # surfaces as a device-side assertion, with this message, at the next synchronisation.
        torch._assert_async(in_range, f"hard negatives: positive_index must be int64 in [0, {n_all})")
        torch._assert_async(finite, "hard negatives: similarities contain NaN or infinity")
        return
    if not bool(in_range):
        raise ObjectiveInputError(f"hard negatives: positive_index must be int64 in [0, {n_all})")
    if not bool(finite):
        raise ObjectiveInputError("hard negatives: similarities contain NaN or infinity")


def itm_labels(batch_size: int, device: torch.device | None = None) -> torch.Tensor:
    """ITM targets for the pairs (positive, negative image, negative text) stacked in that order:
    [3B] int64 = B ones then 2B zeros."""
    labels = torch.zeros(3 * batch_size, dtype=torch.long, device=device)
    labels[:batch_size] = 1
    return labels


def itm_loss(logits: torch.Tensor, labels: torch.Tensor) -> ClassificationOutput:
    """Cross-entropy of the ITM head. logits: [3B, 2], labels: [3B] from ``itm_labels``."""
    return classification_loss(logits, labels, name="itm")
