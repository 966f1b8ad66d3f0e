"""VQAv2 answer vocabulary and soft scores (ViLT's ``write_vqa.py``, deterministic).

The vocabulary is the normalised ``multiple_choice_answer`` of every train+val question, kept if
seen at least ``min_count`` times (9 gives the usual 3,129 answers), ordered by count (descending)
then answer — ViLT used first-seen order. A question's targets are the distinct normalised human
answers that are in the vocabulary, each scored by how many of the 10 annotators gave it
(Goyal et al. 2017, https://arxiv.org/abs/1612.00837). ViLT counted the human answers *before*
normalisation, splitting e.g. "Two" from "2"; here the human answers are normalised before counting,
so the soft scores follow the always-normalising rule (``vlmerge.metrics.vqa``, ``mode="always_normalize"``).
The official accuracy (the default mode there) compares raw stripped strings when the ten answers
agree, so it can be lower than these scores suggest.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from vlmerge.metrics.normalize import normalize_answer

# Annotators agreeing → soft score; 4 or more count as certain.
_SCORES = {1: 0.3, 2: 0.6, 3: 0.9}


def soft_score(count: int) -> float:
    """0.3 / 0.6 / 0.9 / 1.0 for 1 / 2 / 3 / ≥4 annotators (0.0 for none)."""
    return 0.0 if count <= 0 else _SCORES.get(count, 1.0)


def build_vocabulary(majority_answers: Iterable[str], min_count: int) -> list[str]:
    """Answer list (index = label) from the ``multiple_choice_answer`` of every train+val question."""
    counts = Counter(normalize_answer(a) for a in majority_answers)
    kept = [(answer, n) for answer, n in counts.items() if n >= min_count]
    kept.sort(key=lambda item: (-item[1], item[0]))
    return [answer for answer, _ in kept]


def score_answers(human_answers: list[str], label_of: dict[str, int]) -> tuple[list[str], list[int], list[float]]:
    """In-vocabulary distinct answers of one question (first-given order), their labels and scores."""
    counts = Counter(normalize_answer(a) for a in human_answers)  # keeps first-seen order
    kept = [(answer, n) for answer, n in counts.items() if answer in label_of]
    return [a for a, _ in kept], [label_of[a] for a, _ in kept], [soft_score(n) for _, n in kept]
