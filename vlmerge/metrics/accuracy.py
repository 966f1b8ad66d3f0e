"""Classification accuracy and the majority-class baseline (NLVR2: is the statement true?)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Fraction of positions where ``predictions`` equals ``labels`` (ints, same length)."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions but {len(labels)} labels")
    if not labels:
        raise ValueError("no labels to score")
    return sum(int(p) == int(y) for p, y in zip(predictions, labels)) / len(labels)


def majority_class(labels: Sequence[int]) -> int:
    """The most frequent label; ties go to the smallest label, so the choice is deterministic."""
    if not labels:
        raise ValueError("no labels")
    counts = Counter(int(y) for y in labels)
    return min(counts, key=lambda label: (-counts[label], label))
