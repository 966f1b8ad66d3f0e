"""The closed world of the synthetic scenes: every word and colour that captions, questions and statements use.

Captions, VQA questions/answers and NLVR2 statements all draw their content words from here, so the
WordPiece vocabulary trained on their text covers every one of them.
"""

from __future__ import annotations

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

# Six hues far apart in RGB so that they stay distinguishable after JPEG compression at 16-px cells.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 145, 30),
    "yellow": (240, 225, 40),
    "green": (50, 175, 70),
    "blue": (45, 90, 225),
    "purple": (150, 60, 195),
}

# Object extent as a fraction of the grid cell; far apart so "small" and "large" are visible at 48 px.
SIZES: dict[str, float] = {"small": 0.45, "large": 0.9}

BACKGROUND: tuple[int, int, int] = (48, 48, 48)
BACKGROUND_WORDS: tuple[str, ...] = ("dark", "gray", "plain")

GRID = 3  # the image is a GRID x GRID board, one object per cell at most

# Cells in reading order (row-major): the short name answers "where" questions, the phrase goes into sentences.
CELL_NAMES: tuple[str, ...] = (
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
CELL_PHRASES: tuple[str, ...] = (
    "at the top left",
    "at the top",
    "at the top right",
    "on the left",
    "in the center",
    "on the right",
    "at the bottom left",
    "at the bottom",
    "at the bottom right",
)

ROW_NAMES: tuple[str, ...] = ("top", "middle", "bottom")
COL_NAMES: tuple[str, ...] = ("left", "middle", "right")

NUMBER_WORDS: tuple[str, ...] = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
)

# Near-synonyms a human annotator might type instead of the canonical answer (VQA disagreement).
SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("round", "oval"),
    "square": ("rectangle", "box"),
    "triangle": ("triangular", "pyramid"),
    "purple": ("violet",),
    "orange": ("dark orange",),
    "yellow": ("gold",),
    "green": ("dark green",),
    "blue": ("dark blue",),
    "red": ("dark red",),
    "center": ("middle",),
    "top left": ("upper left",),
    "top right": ("upper right",),
    "bottom left": ("lower left",),
    "bottom right": ("lower right",),
    "top": ("top middle",),
    "bottom": ("bottom middle",),
    "left": ("middle left",),
    "right": ("middle right",),
    "yes": ("yeah",),
    "no": ("nope",),
}


def plural(noun: str) -> str:
    """Plural of a shape noun or of "shape"/"object" (all regular)."""
    return noun + "s"


def number_word(n: int) -> str:
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def article(phrase: str) -> str:
    """``"orange circle"`` → ``"an orange circle"``."""
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase
