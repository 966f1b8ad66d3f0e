"""NLVR2 statements about an image pair, generated to be true or false on demand.

A statement is the rendering of a ``Claim`` (what is asserted, in scene terms); ``truth`` decides it
from the two scenes, and generation keeps drawing claims until one has the requested truth value.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from vlmerge.data.synth.phrases import counted, kind
from vlmerge.data.synth.scenes import Scene
from vlmerge.data.synth.vocab import COLORS, SHAPES, article

CLAIMS: tuple[str, ...] = ("exists", "count", "compare", "both", "one", "total")
SIDES: tuple[str, ...] = ("left", "right")
RELATIONS: tuple[str, ...] = ("more", "fewer", "same")


@dataclass(frozen=True)
class Claim:
    """Count objects matching ``shape``/``color`` (None = any) and assert something about the counts."""

    kind: str
    shape: str | None = None
    color: str | None = None
    side: str = "left"  # the image a one-sided claim is about (compare: left/right of the comparison)
    n: int = 0  # for "count" and "total"
    relation: str = "same"  # for "compare"


@dataclass(frozen=True)
class Statement:
    text: str
    label: bool
    claim: Claim


def truth(claim: Claim, left: Scene, right: Scene) -> bool:
    a = len((left if claim.side == "left" else right).matching(claim.shape, claim.color))
    b = len((right if claim.side == "left" else left).matching(claim.shape, claim.color))
    return {
        "exists": a >= 1,
        "count": a == claim.n,
        "compare": {"more": a > b, "fewer": a < b, "same": a == b}[claim.relation],
        "both": a >= 1 and b >= 1,
        "one": (a >= 1) != (b >= 1),
        "total": a + b == claim.n,
    }[claim.kind]


def text(c: Claim) -> str:
    """The sentence for a claim (lower case, no final period)."""
    other = "right" if c.side == "left" else "left"
    one, many = kind(c.shape, c.color), kind(c.shape, c.color, n=2)
    if c.kind == "exists":
        return f"there is {article(one)} in the {c.side} image"
    if c.kind == "count" and c.n == 0:
        return f"the {c.side} image contains no {many}"
    if c.kind == "count":
        return f"the {c.side} image contains exactly {counted(c.n, c.shape, c.color)}"
    if c.kind == "compare" and c.relation == "same":
        return f"both images contain the same number of {many}"
    if c.kind == "compare":
        return f"the {c.side} image contains {c.relation} {many} than the {other} image"
    if c.kind == "both":
        return f"both images contain at least one {one}"
    if c.kind == "one":
        return f"exactly one image contains {article(one)}"
    verb = "is" if c.n == 1 else "are"
    return f"there {verb} {counted(c.n, c.shape, c.color)} in total in the two images"


def _wrong_count(n: int, rng: random.Random) -> int:
    """A count near ``n`` but not ``n``; zero is kept likely so that "no ..." statements are not mostly true."""
    return 1 if n == 0 else rng.choice(sorted({0, n - 1, n + 1}))


def _draw(kind: str, left: Scene, right: Scene, label: bool, rng: random.Random) -> Claim:
    """A claim of ``kind``; counts are set from the scenes to match ``label``, the rest is left to chance."""
    # Attributes mostly come from a present object, so existence claims are true about half the time.
    obj = rng.choice(left.objects + right.objects)
    shape = rng.choice((None, obj.shape, obj.shape, rng.choice(SHAPES)))
    color = rng.choice((None, obj.color, obj.color, rng.choice(tuple(COLORS))))
    side = rng.choice(SIDES)
    a = len((left if side == "left" else right).matching(shape, color))
    b = len((right if side == "left" else left).matching(shape, color))
    n = {"count": a, "total": a + b}.get(kind, 0)
    return Claim(kind, shape, color, side, n if label else _wrong_count(n, rng), rng.choice(RELATIONS))


def state(left: Scene, right: Scene, label: bool, rng: random.Random) -> Statement:
    """A statement about (left, right) whose truth is ``label``.

    The claim kind is drawn first and kept while its parameters are redrawn, so every wording is about
    as often true as false: the sentence pattern alone does not give the label away.
    """
    kind = rng.choice(CLAIMS)
    for attempt in range(200):
        claim = _draw(kind if attempt < 100 else rng.choice(CLAIMS), left, right, label, rng)
        if truth(claim, left, right) == label:
            return Statement(text(claim), label, claim)
    # Always satisfiable: the exact count of everything in the left image, or one more.
    claim = Claim("count", n=len(left.objects) + (0 if label else 1))
    return Statement(text(claim), label, claim)
