"""VQA metrics: the official accuracy over ten human answers, and the soft score of predicted labels.

Official accuracy (Antol et al. 2015, https://visualqa.org/evaluation.html): for each of the 10
subsets of 9 humans that leave one out, min(#humans in the subset who gave the predicted answer / 3, 1),
averaged over the subsets, then over questions. An answer given by 1/2/3/≥4 of 10 humans scores
0.3/0.6/0.9/1.0 — the soft score the Arrow tables store, so both agree whenever the human answers
are the ones the tables were built from.

The official script normalises the prediction always but the human answers only when they
disagree, and then only their punctuation; here both sides get the full ``normalize_answer``. On
the released annotations (already lower-case, digits, no articles) the two give the same numbers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from vlmerge.metrics.normalize import normalize_answer

HUMANS_FOR_FULL_CREDIT = 3


def leave_one_out_accuracy(matches: int, humans: int = 10) -> float:
    """Accuracy when ``matches`` of ``humans`` gave the predicted answer, averaged over leaving each out."""
    if not 0 <= matches <= humans or humans < 1:
        raise ValueError(f"{matches} matching answers among {humans} humans")
    # Leaving out one of the agreeing humans leaves matches-1 of them; leaving out any other leaves all.
    left_out_agreeing = matches * min((matches - 1) / HUMANS_FOR_FULL_CREDIT, 1.0)
    left_out_other = (humans - matches) * min(matches / HUMANS_FOR_FULL_CREDIT, 1.0)
    return (left_out_agreeing + left_out_other) / humans


def question_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """Official accuracy of one prediction against its human answers (usually 10), both normalised."""
    if not human_answers:
        raise ValueError("a question needs at least one human answer")
    matches = Counter(normalize_answer(a) for a in human_answers)[normalize_answer(prediction)]
    return leave_one_out_accuracy(matches, len(human_answers))


def vqa_accuracy(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> float:
    """Mean official VQA accuracy. predictions: one answer per question; answers: each question's humans."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions but {len(answers)} answer lists")
    if not predictions:
        raise ValueError("no questions to score")
    return sum(question_accuracy(p, a) for p, a in zip(predictions, answers)) / len(predictions)


def vqa_score(predictions: Sequence[int], labels: Sequence[Sequence[int]], scores: Sequence[Sequence[float]]) -> float:
    """Mean soft score of the predicted answer labels.

    predictions: one label per question; labels/scores: each question's in-vocabulary answers and
    their soft scores (the Arrow ``answer_labels``/``answer_scores``). A label not listed scores 0.
    """
    if not len(predictions) == len(labels) == len(scores):
        raise ValueError(f"{len(predictions)} predictions, {len(labels)} label lists, {len(scores)} score lists")
    if not predictions:
        raise ValueError("no questions to score")
    total = 0.0
    for prediction, row_labels, row_scores in zip(predictions, labels, scores):
        total += dict(zip(row_labels, row_scores)).get(int(prediction), 0.0)
    return total / len(predictions)


def humans_agreeing(score: float) -> int:
    """Humans behind a soft score: 0 → 0, 0.3 → 1, 0.6 → 2, 0.9 → 3, 1.0 → 4 (meaning 4 or more)."""
    counts = {0.0: 0, 0.3: 1, 0.6: 2, 0.9: 3, 1.0: 4}
    count = counts.get(round(float(score), 1))
    if count is None:
        raise ValueError(f"{score} is not a VQA soft score (one of {sorted(counts)})")
    return count
