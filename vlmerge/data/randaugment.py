"""The released training augmentation: BLIP's ``RandomAugment(N=2, M=7, isPIL=True, augs=UPSTREAM_OPS)``.

vl-merging (``src/vilt/transforms/randaugment.py``, used by ``square_transform.py`` after a
RandomResizedCrop and a horizontal flip) copies BLIP/ALBEF's OpenCV RandAugment. Per image:

- ``num_ops`` (N = 2) op names are drawn uniformly *with replacement* from ``ops``;
- each drawn op runs with probability ``prob`` = 0.5 (upstream: ``if np.random.random() > 0.5: skip``);
- at level M = 7 of ``MAX_LEVEL`` = 10: Brightness/Sharpness factor (M/10)·1.8 + 0.1 = 1.36 (no sign),
  Shear (M/10)·0.3 = 0.21, Translate (M/10)·10 = 7 *pixels* (whatever the image size), Rotate
  (M/10)·30 = 21 degrees; the last three with a random sign (drawn only when the op runs, in upstream's
  order and with its comparisons). Geometric ops fill uncovered pixels with grey (128, 128, 128).

The ops work on uint8 arrays (H×W×C or H×W) with numpy and Pillow, no OpenCV:

- AutoContrast: per channel, [min, max] stretched to [0, 255] (cutoff 0; a constant channel is kept),
  the lookup table of ``PIL.ImageOps.autocontrast``. Upstream's OpenCV port computes ``-low * scale``
  on a uint8 ``low``, which wraps for ``low > 0`` and saturates the channel; this is the intended stretch.
- Equalize: per-channel histogram equalisation, ``PIL.ImageOps.equalize``'s table.
- Brightness: the table ``(arange(256) · factor).clip(0, 255)`` truncated to uint8 (float32, as upstream).
- Sharpness: blend with the image smoothed by [[1,1,1],[1,5,1],[1,1,1]]/13 (border pixels kept) by
  ``factor``, clipped to [0, 255], as ``PIL.ImageEnhance.Sharpness`` (upstream's port skips the clip and
  lets uint8 wrap around on overshoot).
- ShearX/ShearY/TranslateX/TranslateY: affine warps with ``Image.transform`` (bilinear), the forward maps
  of upstream's ``cv2.warpAffine``: ShearX moves pixel (x, y) to (x + f·y, y); TranslateX by ``offset``
  moves every pixel by −offset (upstream's matrix [[1, 0, −offset], [0, 1, 0]]).
- Rotate: ``Image.rotate`` (bilinear) about the image centre, counter-clockwise for positive degrees.

Randomness: ``RandomAugment(img)`` seeds a ``numpy.random.Generator`` from torch's global generator, so
a sample seeded with ``torch.manual_seed`` (``train.batches.KeyedSamples``, DataLoader workers) draws
the same ops again; ``RandomAugment(img, rng)`` uses ``rng`` instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from PIL import Image

UPSTREAM_OPS = (
    "Identity",
    "AutoContrast",
    "Equalize",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
)
MAX_LEVEL = 10
TRANSLATE_CONST = 10  # pixels at MAX_LEVEL
FILL = (128, 128, 128)

Array = np.ndarray


# ----------------------------------------------------------------------------------------- ops
def _channels(img: Array) -> Array:
    """H×W×C view of an H×W or H×W×C array."""
    return img[:, :, None] if img.ndim == 2 else img


def _per_channel(img: Array, table_of: Callable[[Array], Array | None]) -> Array:
    """Each channel mapped through ``table_of(channel)`` (None: left as it is)."""
    chans = _channels(img)
    out = np.empty_like(chans)
    for c in range(chans.shape[2]):
        table = table_of(chans[:, :, c])
        out[:, :, c] = chans[:, :, c] if table is None else table[chans[:, :, c]]
    return out.reshape(img.shape)


def identity(img: Array) -> Array:
    return img


def _autocontrast_table(ch: Array) -> Array | None:
    low, high = int(ch.min()), int(ch.max())
    if high <= low:
        return None
    scale = 255.0 / (high - low)
    return (np.arange(256) * scale - low * scale).clip(0, 255).astype(np.uint8)


def autocontrast(img: Array) -> Array:
    """Per channel, stretch [min, max] to [0, 255] (PIL.ImageOps.autocontrast with cutoff 0)."""
    return _per_channel(img, _autocontrast_table)


def _equalize_table(ch: Array) -> Array | None:
    hist = np.bincount(ch.ravel(), minlength=256).astype(np.int64)
    step = int(hist[hist != 0][:-1].sum()) // 255
    if step == 0:
        return None
    counts = np.concatenate([[step // 2], hist[:-1]])
    return (np.cumsum(counts) // step).clip(0, 255).astype(np.uint8)


def equalize(img: Array) -> Array:
    """Per-channel histogram equalisation (PIL.ImageOps.equalize)."""
    return _per_channel(img, _equalize_table)


def brightness(img: Array, factor: float) -> Array:
    """Every value times ``factor``, clipped and truncated (one lookup table)."""
    table = (np.arange(256, dtype=np.float32) * np.float32(factor)).clip(0, 255).astype(np.uint8)
    return table[img]


def sharpness(img: Array, factor: float) -> Array:
    """Blend of the SMOOTH-filtered image (borders kept) and ``img`` by ``factor`` (PIL.ImageEnhance.Sharpness)."""
    x = _channels(img).astype(np.int32)
    smooth = x.copy()
    if x.shape[0] >= 3 and x.shape[1] >= 3:
        total = 4 * x[1:-1, 1:-1]  # centre weight 5 = 4 + the centre term of the 3×3 box sum below
        for dy in range(3):
            for dx in range(3):
                total = total + x[dy : dy + x.shape[0] - 2, dx : dx + x.shape[1] - 2]
        smooth[1:-1, 1:-1] = (total + 6) // 13  # nearest integer (total/13 is never a half)
    lo = smooth.astype(np.float32)
    out = lo + np.float32(factor) * (x.astype(np.float32) - lo)
    return out.clip(0, 255).astype(np.uint8).reshape(img.shape)


def _fill(img: Image.Image, fill: Sequence[int]) -> int | tuple[int, ...]:
    bands = len(img.getbands())
    return fill[0] if bands == 1 else tuple(fill[:bands])


def _affine(img: Array, data: tuple[float, ...], fill: Sequence[int]) -> Array:
    """``Image.transform`` AFFINE: output point (x, y) samples input (a·x + b·y + c, d·x + e·y + f).

    Pillow's coordinates are continuous (pixel i covers [i, i + 1]); it samples at pixel centres.
    """
    pil = Image.fromarray(img)
    out = pil.transform(
        pil.size, Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR, fillcolor=_fill(pil, fill)
    )
    return np.asarray(out)


def shear_x(img: Array, factor: float, fill: Sequence[int] = FILL) -> Array:
    """Pixel (x, y) moves to (x + factor·y, y) (pixel-centre coordinates, as cv2.warpAffine)."""
    return _affine(img, (1, -factor, factor / 2, 0, 1, 0), fill)


def shear_y(img: Array, factor: float, fill: Sequence[int] = FILL) -> Array:
    """Pixel (x, y) moves to (x, y + factor·x) (pixel-centre coordinates, as cv2.warpAffine)."""
    return _affine(img, (1, 0, 0, -factor, 1, factor / 2), fill)


def translate_x(img: Array, offset: float, fill: Sequence[int] = FILL) -> Array:
    """Pixel (x, y) moves to (x − offset, y)."""
    return _affine(img, (1, 0, offset, 0, 1, 0), fill)


def translate_y(img: Array, offset: float, fill: Sequence[int] = FILL) -> Array:
    """Pixel (x, y) moves to (x, y − offset)."""
    return _affine(img, (1, 0, 0, 0, 1, offset), fill)


def rotate(img: Array, degrees: float, fill: Sequence[int] = FILL) -> Array:
    """Counter-clockwise rotation about the image centre."""
    pil = Image.fromarray(img)
    return np.asarray(pil.rotate(degrees, resample=Image.Resampling.BILINEAR, fillcolor=_fill(pil, fill)))


OPS: dict[str, Callable[..., Array]] = {
    "Identity": identity,
    "AutoContrast": autocontrast,
    "Equalize": equalize,
    "Brightness": brightness,
    "Sharpness": sharpness,
    "ShearX": shear_x,
    "ShearY": shear_y,
    "TranslateX": translate_x,
    "TranslateY": translate_y,
    "Rotate": rotate,
}


# ------------------------------------------------------------------------------- magnitudes
def magnitude(op: str, level: float) -> float | None:
    """The unsigned argument of ``op`` at ``level`` (of MAX_LEVEL); None for ops without one."""
    fraction = level / MAX_LEVEL
    if op in ("Brightness", "Sharpness"):
        return fraction * 1.8 + 0.1
    if op in ("ShearX", "ShearY"):
        return fraction * 0.3
    if op in ("TranslateX", "TranslateY"):
        return fraction * float(TRANSLATE_CONST)
    if op == "Rotate":
        return fraction * 30
    if op in OPS:
        return None
    raise ValueError(f"unknown RandomAugment op {op!r}; known: {tuple(OPS)}")


def _signed(op: str, value: float, rng: np.random.Generator) -> float:
    """Upstream's random sign: shear/translate negate when random() > 0.5, rotate when random() < 0.5."""
    if op == "Rotate":
        return -value if rng.random() < 0.5 else value
    if op in ("ShearX", "ShearY", "TranslateX", "TranslateY"):
        return -value if rng.random() > 0.5 else value
    return value


@dataclass(frozen=True)
class Draw:
    """One drawn op: whether it runs and, if it does and takes one, its signed argument."""

    op: str
    applied: bool
    arg: float | None = None


ImageT = TypeVar("ImageT", Image.Image, np.ndarray)


class RandomAugment:
    """BLIP/vl-merging's ``RandomAugment(num_ops, level, isPIL=True, augs=ops)``; see the module docstring."""

    def __init__(
        self, num_ops: int = 2, level: float = 7, ops: Sequence[str] = UPSTREAM_OPS, prob: float = 0.5
    ) -> None:
        unknown = sorted(set(ops) - set(OPS))
        if unknown or not ops:
            raise ValueError(f"unknown or empty RandomAugment ops {unknown or list(ops)}; known: {tuple(OPS)}")
        self.num_ops, self.level, self.ops, self.prob = num_ops, level, tuple(ops), prob

    def __repr__(self) -> str:
        return f"RandomAugment(num_ops={self.num_ops}, level={self.level}, ops={self.ops}, prob={self.prob})"

    def draw(self, rng: np.random.Generator) -> list[Draw]:
        """The ops for one image, random numbers drawn in upstream's order (names, then skip/sign per op)."""
        names = [self.ops[i] for i in rng.integers(len(self.ops), size=self.num_ops)]
        draws = []
        for name in names:
            if rng.random() > self.prob:
                draws.append(Draw(name, applied=False))
                continue
            value = magnitude(name, self.level)
            draws.append(Draw(name, True, None if value is None else _signed(name, value, rng)))
        return draws

    @staticmethod
    def apply(img: Array, draws: Sequence[Draw]) -> Array:
        for d in draws:
            if d.applied:
                img = OPS[d.op](img) if d.arg is None else OPS[d.op](img, d.arg)
        return img

    def __call__(self, img: ImageT, rng: np.random.Generator | None = None) -> ImageT:
        """Augment a PIL image (→ PIL image) or a uint8 array (→ array)."""
        if rng is None:
            rng = np.random.default_rng(int(torch.randint(0, 2**63 - 1, (1,)).item()))
        draws = self.draw(rng)
        if isinstance(img, Image.Image):
            return Image.fromarray(self.apply(np.asarray(img), draws))
        return self.apply(img, draws)
