"""Noun phrases shared by captions, questions and statements, so all three speak the same words."""

from __future__ import annotations

import random
import re

from vlmerge.data.synth.scenes import Obj
from vlmerge.data.synth.vocab import CELL_PHRASES, article, number_word, plural


def describe(obj: Obj, *, size: bool = True, color: bool = True, where: bool = False) -> str:
    """``"a large red circle at the top left"``, with the parts asked for."""
    words = ([obj.size] if size else []) + ([obj.color] if color else []) + [obj.shape]
    phrase = article(" ".join(words))
    return f"{phrase} {CELL_PHRASES[obj.cell]}" if where else phrase


def kind(shape: str | None, color: str | None, *, n: int = 1) -> str:
    """A class of objects: ``"red circle"``, ``"circles"``, ``"red shapes"``, ``"shape"``."""
    noun = shape or "shape"
    noun = noun if n == 1 else plural(noun)
    return f"{color} {noun}" if color else noun


def counted(n: int, shape: str | None = None, color: str | None = None) -> str:
    """``"two red circles"``, ``"one square"``, ``"no shapes"``."""
    return f"{number_word(n) if n else 'no'} {kind(shape, color, n=n)}"


def listing(items: list[str]) -> str:
    """``["a", "b", "c"]`` → ``"a, b and c"``."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def sentence(text: str, rng: random.Random, period: float = 0.5) -> str:
    """Capitalise like a human writer and sometimes end with a period, as raw captions do."""
    text = text[0].upper() + text[1:]
    return text + "." if rng.random() < period else text


def tokens(text: str) -> list[str]:
    """Karpathy-style tokens: lower-case alphanumeric runs."""
    return re.findall(r"[a-z0-9]+", text.lower())
