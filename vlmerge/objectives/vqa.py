"""VQAv2 objective: soft-target binary cross-entropy over the answer vocabulary, and the VQA score.

Targets follow the VQA soft score (Goyal et al. 2017, arXiv 1612.00837): an answer given by
1/2/3/≥4 of the 10 annotators scores 0.3/0.6/0.9/1.0 (computed when the Arrow tables are written).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlmerge.objectives.errors import ObjectiveInputError


def vqa_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits averaged over all B*A entries, then multiplied by A.

    logits, targets: [B, A] (targets soft scores in [0, 1]). Multiplying the mean by A gives the
    sum over answers averaged over questions: ViLT's and VLMo's convention (``vqa_loss =
    F.binary_cross_entropy_with_logits(logits, targets) * targets.shape[1]``), kept so that
    learning rates transfer. Returns a scalar.
    """
    _check_pair("vqa loss", logits, targets)
    return F.binary_cross_entropy_with_logits(logits, targets) * targets.shape[1]


def vqa_targets(labels: list[list[int]], scores: list[list[float]], num_answers: int) -> torch.Tensor:
    """Dense soft targets [B, A] float32 from the Arrow columns ``answer_labels`` and ``answer_scores``.

    Row i holds ``scores[i][k]`` at column ``labels[i][k]`` and 0 elsewhere; a question none of whose
    answers is in the vocabulary gets a zero row (as in ViLT).
    """
    if len(labels) != len(scores):
        raise ObjectiveInputError(f"vqa targets: {len(labels)} label lists but {len(scores)} score lists")
    targets = torch.zeros(len(labels), num_answers)
    for row, (row_labels, row_scores) in enumerate(zip(labels, scores)):
        _check_row(row, row_labels, row_scores, num_answers)
        if row_labels:
            targets[row, row_labels] = torch.tensor(row_scores, dtype=torch.float32)
    return targets


def _check_row(row: int, labels: list[int], scores: list[float], num_answers: int) -> None:
    if len(labels) != len(scores):
        raise ObjectiveInputError(f"vqa targets: row {row} has {len(labels)} labels but {len(scores)} scores")
    if len(set(labels)) != len(labels):
        raise ObjectiveInputError(f"vqa targets: row {row} repeats an answer label: {labels}")
    if any(not 0 <= label < num_answers for label in labels):
        raise ObjectiveInputError(f"vqa targets: row {row} has a label outside [0, {num_answers}): {labels}")
    if any(not 0.0 <= score <= 1.0 for score in scores):
        raise ObjectiveInputError(f"vqa targets: row {row} has a score outside [0, 1]: {scores}")


def vqa_score(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of the soft score of each predicted (argmax) answer.

    logits, targets: [B, A] -> scalar; divide by B for the mean VQA score.
    """
    _check_pair("vqa score", logits, targets)
    return targets.gather(1, logits.argmax(dim=1, keepdim=True)).sum()


def _check_pair(what: str, logits: torch.Tensor, targets: torch.Tensor) -> None:
    if logits.ndim != 2 or logits.shape != targets.shape:
        raise ObjectiveInputError(
            f"{what}: expected logits and targets of one shape [B, A], "
            f"got {tuple(logits.shape)} and {tuple(targets.shape)}"
        )
