"""NLVR2 objective (Suhr et al. 2019, arXiv 1811.00491): is the statement true of the image pair?"""

from __future__ import annotations

import torch

from vlmerge.objectives.classification import ClassificationOutput, classification_loss


def nlvr2_loss(logits: torch.Tensor, labels: torch.Tensor) -> ClassificationOutput:
    """Cross-entropy and accuracy. logits: [B, 2] from the NLVR2 head; labels: [B] int64,
    1 for "True" and 0 for "False"."""
    return classification_loss(logits, labels, name="nlvr2")
