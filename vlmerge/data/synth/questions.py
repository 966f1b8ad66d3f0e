"""VQA questions about a scene: colour, shape, count, existence (yes/no) and position, never ambiguous.

Each question carries its ``Query`` (what it asks, in scene terms), and its answer is computed from
the query and the scene by ``answer``; the text is only a rendering of the query.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from vlmerge.data.synth.phrases import kind
from vlmerge.data.synth.scenes import Scene
from vlmerge.data.synth.vocab import CELL_PHRASES, COLORS, GRID, SHAPES, article, plural

KINDS: tuple[str, ...] = ("color", "shape", "count", "exist", "position")
ANSWER_TYPES: dict[str, str] = {
    "color": "other",
    "shape": "other",
    "count": "number",
    "exist": "yes/no",
    "position": "other",
}


@dataclass(frozen=True)
class Query:
    """Select objects by the given attributes; ``kind`` says what to report about the selection."""

    kind: str
    shape: str | None = None
    color: str | None = None
    cell: int | None = None


@dataclass(frozen=True)
class Question:
    text: str
    answer: str
    question_type: str  # VQA's question prefix, e.g. "what color is the"
    answer_type: str  # "yes/no" | "number" | "other"
    query: Query


def answer(query: Query, scene: Scene) -> str:
    """Ground truth: count/exist over all matches; colour/shape/position of the one match."""
    found = scene.matching(query.shape, query.color, query.cell)
    if query.kind == "count":
        return str(len(found))
    if query.kind == "exist":
        return "yes" if found else "no"
    if len(found) != 1:
        raise ValueError(f"ambiguous {query}: {len(found)} objects match")
    return {"color": found[0].color, "shape": found[0].shape, "position": found[0].cell_name}[query.kind]


def _color(scene: Scene, rng: random.Random, yes: bool) -> tuple[str, str, Query] | None:
    obj = rng.choice(scene.objects)
    if len(scene.matching(shape=obj.shape)) == 1 and rng.random() < 0.4:
        return f"what color is the {obj.shape}?", "what color is the", Query("color", shape=obj.shape)
    if rng.random() < 0.5:
        text = f"what color is the {obj.shape} {CELL_PHRASES[obj.cell]}?"
        return text, "what color is the", Query("color", shape=obj.shape, cell=obj.cell)
    return f"what color is the shape {CELL_PHRASES[obj.cell]}?", "what color is the", Query("color", cell=obj.cell)


def _shape(scene: Scene, rng: random.Random, yes: bool) -> tuple[str, str, Query] | None:
    obj = rng.choice(scene.objects)
    if len(scene.matching(color=obj.color)) == 1 and rng.random() < 0.5:
        return f"what shape is the {obj.color} one?", "what shape is the", Query("shape", color=obj.color)
    return f"what shape is {CELL_PHRASES[obj.cell]}?", "what shape is", Query("shape", cell=obj.cell)


def _count(scene: Scene, rng: random.Random, yes: bool) -> tuple[str, str, Query] | None:
    # Half the filters come from a present object so that answers are not mostly "0".
    obj = rng.choice(scene.objects)
    shape = rng.choice((None, obj.shape, rng.choice(SHAPES)))
    color = rng.choice((None, None, obj.color, rng.choice(tuple(COLORS))))
    return f"how many {kind(shape, color, n=2)} are there?", "how many", Query("count", shape, color)


def _exist(scene: Scene, rng: random.Random, yes: bool) -> tuple[str, str, Query] | None:
    """Pick attributes of a present object (yes) or an absent combination (no) for one of three wordings."""
    obj = rng.choice(scene.objects)
    wording = rng.randrange(3)
    for _ in range(100):
        shape = obj.shape if yes else rng.choice(SHAPES)
        color = obj.color if yes else rng.choice(tuple(COLORS))
        cell = obj.cell if yes else rng.randrange(GRID * GRID)
        if wording == 0:
            q = Query("exist", shape, color)
            text, qtype = f"is there {article(kind(shape, color))}?", "is there a"
        elif wording == 1:
            q = Query("exist", shape, cell=cell)
            text, qtype = f"is there {article(shape)} {CELL_PHRASES[cell]}?", "is there a"
        else:
            q = Query("exist", color=color)
            text, qtype = f"are there any {color} {plural('shape')}?", "are there any"
        if (answer(q, scene) == "yes") == yes:
            return text, qtype, q
    return None


def _position(scene: Scene, rng: random.Random, yes: bool) -> tuple[str, str, Query] | None:
    unique = [o for o in scene.objects if len(scene.matching(o.shape, o.color)) == 1]
    if not unique:
        return None
    obj = rng.choice(unique)
    return f"where is the {obj.color} {obj.shape}?", "where is the", Query("position", obj.shape, obj.color)


_ASK: dict[str, Callable[[Scene, random.Random, bool], tuple[str, str, Query] | None]] = {
    "color": _color,
    "shape": _shape,
    "count": _count,
    "exist": _exist,
    "position": _position,
}


def ask(scene: Scene, rng: random.Random, n: int, coin: Callable[[], bool]) -> list[Question]:
    """Up to ``n`` distinct questions of distinct kinds; ``coin()`` decides each yes/no answer (balanced)."""
    out: list[Question] = []
    for k in rng.sample(KINDS, len(KINDS)):
        if len(out) == n:
            break
        made = _ASK[k](scene, rng, coin() if k == "exist" else True)
        if made is None or any(q.text == made[0] for q in out):
            continue
        text, qtype, query = made
        out.append(Question(text, answer(query, scene), qtype, ANSWER_TYPES[k], query))
    return out
