"""Captions of whole scenes (COCO/F30K/SBU/GCC) and region phrases of single objects (VG)."""

from __future__ import annotations

import random
from collections.abc import Callable

from vlmerge.data.synth.phrases import counted, describe, listing, sentence
from vlmerge.data.synth.scenes import Obj, Scene
from vlmerge.data.synth.vocab import BACKGROUND_WORDS, CELL_PHRASES, COL_NAMES, ROW_NAMES


def _full(objs: list[Obj], rng: random.Random) -> str:
    return listing([describe(o, where=True) for o in objs])


def _counted(objs: list[Obj], rng: random.Random) -> str:
    verb = "is" if len(objs) == 1 else "are"
    return f"there {verb} {counted(len(objs))}: " + listing([describe(o, size=rng.random() < 0.5) for o in objs])


def _picture(objs: list[Obj], rng: random.Random) -> str:
    return f"a {rng.choice(BACKGROUND_WORDS)} picture with " + listing([describe(o, where=True) for o in objs])


def _background(objs: list[Obj], rng: random.Random) -> str:
    return listing([describe(o) for o in objs]) + f" on a {rng.choice(BACKGROUND_WORDS)} background"


def _located(objs: list[Obj], rng: random.Random) -> str:
    return listing([f"the {o.color} {o.shape} is {CELL_PHRASES[o.cell]}" for o in objs])


def _grid(objs: list[Obj], rng: random.Random) -> str:
    return listing([f"{describe(o)} in the {ROW_NAMES[o.row]} row and {COL_NAMES[o.col]} column" for o in objs])


TEMPLATES: tuple[Callable[[list[Obj], random.Random], str], ...] = (
    _full,
    _counted,
    _picture,
    _background,
    _located,
    _grid,
)


def captions(scene: Scene, rng: random.Random, k: int) -> list[str]:
    """``k`` (≤ 6) captions of ``scene`` from distinct templates, each listing the objects in its own order."""
    out = []
    for template in rng.sample(TEMPLATES, k):
        objs = list(scene.objects)
        rng.shuffle(objs)
        out.append(sentence(template(objs, rng), rng))
    return out


def region_phrase(obj: Obj, rng: random.Random) -> str:
    """A Visual-Genome-style phrase about one object: ``"the circle is red"``, ``"small blue square"``."""
    choice = rng.randrange(4)
    if choice == 0:
        return f"{obj.size} {obj.color} {obj.shape}"
    if choice == 1:
        return f"the {obj.shape} is {obj.color}"
    if choice == 2:
        return f"{obj.color} {obj.shape} {CELL_PHRASES[obj.cell]}"
    return f"a {obj.size} {obj.shape} that is {obj.color}"
