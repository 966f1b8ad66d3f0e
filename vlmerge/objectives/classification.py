"""Cross-entropy with accuracy, the loss shared by the ITM and NLVR2 heads."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from vlmerge.objectives.errors import ObjectiveInputError


class ClassificationOutput(NamedTuple):
    loss: torch.Tensor  # scalar, mean over the batch
    accuracy: torch.Tensor  # scalar float in [0, 1]


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, name: str = "logits") -> ClassificationOutput:
    """Mean cross-entropy and argmax accuracy. logits: [N, C], labels: [N] int in [0, C)."""
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ObjectiveInputError(
            f"{name}: expected logits [N, C] and labels [N], got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    loss = F.cross_entropy(logits, labels)
    accuracy = (logits.argmax(dim=1) == labels).float().mean()
    return ClassificationOutput(loss, accuracy)
