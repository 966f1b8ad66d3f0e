"""Masked language modelling loss (BERT, arXiv 1810.04805; as used by ViLT and VLMo).

Which tokens are masked, and how they are replaced, is the collator's business; this module only
scores the predictions at the positions whose label is not ``IGNORE_INDEX``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from vlmerge.objectives.errors import ObjectiveInputError

IGNORE_INDEX = -100  # the label of unmasked tokens (PyTorch's and Hugging Face's convention)


class MLMOutput(NamedTuple):
    loss: torch.Tensor  # scalar: mean cross-entropy over masked tokens (0 if none)
    accuracy: torch.Tensor  # scalar float: argmax hits / masked tokens (0 if none)
    # scalar int64: number of masked tokens. The field shadows tuple.count (a method), which mypy
    # reports; NamedTuple allows it and callers read ``.count``.
    count: torch.Tensor  # type: ignore[assignment]


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> MLMOutput:
    """Cross-entropy over masked tokens.

    logits: [B, T, V]; labels: [B, T] with the original token id at masked positions and
    ``IGNORE_INDEX`` elsewhere. A batch without any masked token gives loss 0 that still carries
    a (zero) gradient, where ``F.cross_entropy(..., reduction="mean")`` would return NaN.
    """
    if logits.ndim != 3 or labels.shape != logits.shape[:2]:
        raise ObjectiveInputError(
            f"mlm: expected logits [B, T, V] and labels [B, T], got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    flat_logits = logits.reshape(-1, logits.shape[-1])
    flat_labels = labels.reshape(-1)
    masked = flat_labels != IGNORE_INDEX
    count = masked.sum()
    # Sum then divide by max(count, 1): the mean when count > 0, an exact 0 otherwise, with no
    # data-dependent branch (a branch would force a device sync every step).
    denominator = count.clamp(min=1)
    total = F.cross_entropy(flat_logits, flat_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    correct = ((flat_logits.argmax(dim=-1) == flat_labels) & masked).sum()
    return MLMOutput(total / denominator, correct.float() / denominator, count)
