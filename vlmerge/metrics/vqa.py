"""VQA metrics: the official accuracy over ten human answers, and the soft score of predicted labels.

Official accuracy (Antol et al. 2015, https://visualqa.org/evaluation.html): for each of the 10
subsets of 9 humans that leave one out, min(#humans in the subset who gave the predicted answer / 3, 1),
averaged over the subsets, then over questions. An answer given by 1/2/3/≥4 of 10 humans scores
0.3/0.6/0.9/1.0 — the soft score the Arrow tables store.

Which strings count as "the predicted answer" follows the current official script
(GT-Vision-Lab/VQA ``PythonEvaluationTools/vqaEvaluation/vqaEval.py``, after commit a013f00 "Fixed
processing answers bug"): the prediction and every human answer get newlines and tabs turned into
spaces and their ends stripped; then, *only if the stripped human answers are not all identical*,
both sides get the full :func:`~vlmerge.metrics.normalize.normalize_answer` (punctuation, number
words, articles, contractions, lower case). When all humans gave the same stripped string the
comparison is of raw stripped strings: "Yes" against ten "yes" scores 0, "yes" against ten "yes."
scores 0. That is the default, ``mode="official"``.

``mode="always_normalize"`` normalises both sides always (vlmerge's behaviour before it followed the
script, and the rule the Arrow tables' soft scores are counted by). It is *not* the pre-fix script,
which normalised the prediction fully but the humans only by punctuation and only when they
disagreed. The two modes differ only on questions whose humans all gave the same stripped answer
and whose prediction equals it only after normalisation: 0 officially, 1 here, so the official
accuracy never exceeds the always-normalised one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Literal

from vlmerge.metrics.normalize import normalize_answer

HUMANS_FOR_FULL_CREDIT = 3

AccuracyMode = Literal["official", "always_normalize"]
ACCURACY_MODES: tuple[AccuracyMode, ...] = ("official", "always_normalize")


def leave_one_out_accuracy(matches: int, humans: int = 10) -> float:
    """Accuracy when ``matches`` of ``humans`` gave the predicted answer, averaged over leaving each out."""
    if not 0 <= matches <= humans or humans < 1:
        raise ValueError(f"{matches} matching answers among {humans} humans")
    # Leaving out one of the agreeing humans leaves matches-1 of them; leaving out any other leaves all.
    left_out_agreeing = matches * min((matches - 1) / HUMANS_FOR_FULL_CREDIT, 1.0)
    left_out_other = (humans - matches) * min(matches / HUMANS_FOR_FULL_CREDIT, 1.0)
    return (left_out_agreeing + left_out_other) / humans


def _strip(answer: str) -> str:
    """The script's first step for every answer: newline and tab → space, ends stripped."""
    return answer.replace("\n", " ").replace("\t", " ").strip()


def question_accuracy(prediction: str, human_answers: Sequence[str], mode: AccuracyMode = "official") -> float:
    """Official accuracy of one prediction against its (raw, usually 10) human answers.

    ``mode="official"``: the current ``vqaEval.py`` rule — raw stripped strings compared when the
    stripped human answers are all identical, both sides normalised otherwise.
    ``mode="always_normalize"``: both sides always normalised. Pass the humans' answers as given in
    the annotation file; normalising them beforehand defeats the official rule.
    """
    if not human_answers:
        raise ValueError("a question needs at least one human answer")
    if mode == "official":
        humans = [_strip(a) for a in human_answers]
        predicted = _strip(prediction)
        if len(set(humans)) > 1:
            humans = [normalize_answer(a) for a in humans]
            predicted = normalize_answer(predicted)
    elif mode == "always_normalize":
        humans = [normalize_answer(a) for a in human_answers]
        predicted = normalize_answer(prediction)
    else:
        raise ValueError(f"unknown VQA accuracy mode {mode!r}, expected one of {ACCURACY_MODES}")
    return leave_one_out_accuracy(Counter(humans)[predicted], len(humans))


def vqa_accuracy(
    predictions: Sequence[str], answers: Sequence[Sequence[str]], mode: AccuracyMode = "official"
) -> float:
    """Mean official VQA accuracy over questions, as a fraction in [0, 1].

    predictions: one answer per question; answers: each question's raw human answers; ``mode`` as
    in :func:`question_accuracy` (default: the current official script). The official script
    reports ``round(100 * mean, 2)``; this returns the unrounded fraction — multiply by 100 and
    round to 2 decimals to compare with its "Overall Accuracy".
    """
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions but {len(answers)} answer lists")
    if not predictions:
        raise ValueError("no questions to score")
    return sum(question_accuracy(p, a, mode) for p, a in zip(predictions, answers)) / len(predictions)


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
