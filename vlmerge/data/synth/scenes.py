"""Scenes: 1-4 coloured shapes on a 3x3 grid, at most one per cell, sampled from a seeded RNG."""

from __future__ import annotations

import random
from dataclasses import dataclass

from vlmerge.data.synth.vocab import CELL_NAMES, COLORS, GRID, SHAPES, SIZES

MIN_OBJECTS, MAX_OBJECTS = 1, 4


@dataclass(frozen=True)
class Obj:
    """One shape; ``cell`` indexes the grid in reading order (0 = top left, 8 = bottom right)."""

    shape: str
    color: str
    size: str
    cell: int

    @property
    def row(self) -> int:
        return self.cell // GRID

    @property
    def col(self) -> int:
        return self.cell % GRID

    @property
    def cell_name(self) -> str:
        return CELL_NAMES[self.cell]


@dataclass(frozen=True)
class Scene:
    """The ground truth of one image: its objects sorted by cell."""

    objects: tuple[Obj, ...]

    def at(self, cell: int) -> Obj | None:
        return next((o for o in self.objects if o.cell == cell), None)

    def matching(self, shape: str | None = None, color: str | None = None, cell: int | None = None) -> list[Obj]:
        """Objects agreeing with every given attribute (None = any)."""
        return [
            o
            for o in self.objects
            if (shape is None or o.shape == shape)
            and (color is None or o.color == color)
            and (cell is None or o.cell == cell)
        ]


def sample_scene(rng: random.Random, min_objects: int = MIN_OBJECTS, max_objects: int = MAX_OBJECTS) -> Scene:
    """Draw the number of objects, distinct cells, and each object's shape, colour and size uniformly."""
    n = rng.randint(min_objects, max_objects)
    cells = sorted(rng.sample(range(GRID * GRID), n))
    objects = tuple(
        Obj(rng.choice(SHAPES), rng.choice(tuple(COLORS)), rng.choice(tuple(SIZES)), cell) for cell in cells
    )
    return Scene(objects)
