"""Ten human answers per VQA question, with the disagreement real annotators show.

Most annotators give the canonical answer; a few (never more than three of ten, so the canonical
answer stays the majority) type a near-synonym, a number word ("two" for "2"), different casing or
punctuation, or simply a wrong answer.
"""

from __future__ import annotations

import random

from vlmerge.data.synth.questions import Question
from vlmerge.data.synth.vocab import CELL_NAMES, COLORS, SHAPES, SYNONYMS, number_word

ANNOTATORS = 10
_NOISY_WEIGHTS = (45, 30, 15, 10)  # P(0, 1, 2, 3 annotators deviate) in percent


def _wrong(q: Question, rng: random.Random) -> str:
    if q.answer_type == "yes/no":
        return "no" if q.answer == "yes" else "yes"
    if q.answer_type == "number":
        n = int(q.answer)
        return str(n + 1 if n == 0 or rng.random() < 0.5 else n - 1)
    pool = {"color": tuple(COLORS), "shape": SHAPES, "position": CELL_NAMES}[q.query.kind]
    return rng.choice([a for a in pool if a != q.answer])


def _variant(q: Question, rng: random.Random) -> str:
    ways = ["case", "wrong"]
    if q.answer in SYNONYMS:
        ways.append("synonym")
    if q.answer_type == "number":
        ways.append("word")
    way = rng.choice(ways)
    if way == "synonym":
        return rng.choice(SYNONYMS[q.answer])
    if way == "word":
        return number_word(int(q.answer))
    if way == "case":
        return rng.choice((q.answer.capitalize(), q.answer + ".", q.answer.upper()))
    return _wrong(q, rng)


def human_answers(q: Question, rng: random.Random) -> list[dict]:
    """VQA ``answers`` field: ``[{"answer", "answer_confidence", "answer_id"}]`` × 10."""
    noisy = set(rng.sample(range(ANNOTATORS), rng.choices(range(len(_NOISY_WEIGHTS)), _NOISY_WEIGHTS)[0]))
    out = []
    for i in range(ANNOTATORS):
        if i in noisy:
            text, confidence = _variant(q, rng), rng.choice(("yes", "maybe", "maybe", "no"))
        else:
            text, confidence = q.answer, ("yes" if rng.random() < 0.9 else "maybe")
        out.append({"answer": text, "answer_confidence": confidence, "answer_id": i + 1})
    return out
