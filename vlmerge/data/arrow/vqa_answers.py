"""VQAv2 answer vocabulary and soft scores, with ViLT's label ids (``write_vqa.py``).

The vocabulary is the normalised ``multiple_choice_answer`` of every train then val question, kept
if seen at least ``min_count`` times (9 gives the usual 3,129 answers), in the order each answer was
first seen — ViLT's label ids, so that tables, heads and released checkpoints agree on what label
``k`` means. A question's targets are its distinct human answers that are in the vocabulary, in the
order they were first given, each scored by how many of the 10 annotators gave it (Goyal et al.
2017, https://arxiv.org/abs/1612.00837). How the human answers are counted is a choice:

- ``"raw"`` (ViLT): the answer strings are counted as typed and looked up in the (normalised)
  vocabulary unchanged, so "Two" and "2" are different answers and "Two" earns no label.
- ``"normalized"``: every human answer is normalised before counting ("Two", "two", "2." → "2"),
  so the soft scores follow the always-normalising rule (``vlmerge.metrics.vqa``,
  ``mode="always_normalize"``). The official accuracy (the default mode there) compares raw
  stripped strings when the ten answers agree, so it can be lower than these scores suggest.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Literal

from vlmerge.metrics.normalize import normalize_answer

Counting = Literal["raw", "normalized"]
COUNTINGS: tuple[Counting, ...] = ("raw", "normalized")

# Annotators agreeing → soft score; 4 or more count as certain.
_SCORES = {1: 0.3, 2: 0.6, 3: 0.9}


def soft_score(count: int) -> float:
    """0.3 / 0.6 / 0.9 / 1.0 for 1 / 2 / 3 / ≥4 annotators (0.0 for none)."""
    return 0.0 if count <= 0 else _SCORES.get(count, 1.0)


def build_vocabulary(majority_answers: Iterable[str], min_count: int) -> list[str]:
    """Answer list (index = label) from the ``multiple_choice_answer`` of every train then val question.

    Answers are normalised, counted, and kept in first-seen order when seen at least ``min_count`` times.
    """
    counts = Counter(normalize_answer(a) for a in majority_answers)  # a dict: keeps first-seen order
    return [answer for answer, n in counts.items() if n >= min_count]


def score_answers(
    human_answers: list[str], label_of: dict[str, int], counting: Counting = "normalized"
) -> tuple[list[str], list[int], list[float]]:
    """In-vocabulary distinct answers of one question (first-given order), their labels and scores."""
    if counting not in COUNTINGS:
        raise ValueError(f"answer counting {counting!r}: expected one of {COUNTINGS}")
    given = human_answers if counting == "raw" else [normalize_answer(a) for a in human_answers]
    counts = Counter(given)  # keeps first-seen order
    kept = [(answer, n) for answer, n in counts.items() if answer in label_of]
    return [a for a, _ in kept], [label_of[a] for a, _ in kept], [soft_score(n) for _, n in kept]
