"""Image transforms (docs/objectives.md): PIL RGB image → float tensor [3, S, S] in [-1, 1].

"square" evaluation: bicubic resize to S×S. Training: random-resized-crop (scale 0.5–1, bicubic),
optional horizontal flip (off for tasks whose text says "left"/"right"), RandAugment(2 ops,
magnitude 7). Normalisation mean = std = 0.5 as in ViLT/VLMo ("inception normalise").

RandAugment, ``randaug_style="upstream"`` (the default): the released code's BLIP ``RandomAugment(2, 7)``
(``vlmerge.data.randaugment``: 10-level scale, each of the 2 drawn ops applied with probability 1/2,
translate 7 px, grey fill) over its op list, which has no colour-changing ops (Solarize would turn a
saturated red black, Color/Posterize/Contrast alter hues and tones that captions name).
``randaug_style="torchvision"``: torchvision's ``RandAugment(2, 7)`` instead (31-bin magnitude scale,
ops always applied, translate 0.106·W, black fill; milder at the same number), over ``randaug_ops``
(``TORCHVISION_OPS`` gives its full set). Both draw from torch's global generator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from PIL import Image
from torchvision.transforms import v2

from vlmerge.data.randaugment import UPSTREAM_OPS, RandomAugment

__all__ = [
    "TORCHVISION_OPS",
    "UPSTREAM_OPS",
    "ImageTransform",
    "RandAugmentStyle",
    "build_transform",
    "eval_transform",
    "train_transform",
]

RandAugmentStyle = Literal["upstream", "torchvision"]
TORCHVISION_OPS = tuple(v2.RandAugment._AUGMENTATION_SPACE)

ImageTransform = Callable[[Image.Image], torch.Tensor]


class _RandAugmentSubset(v2.RandAugment):
    """torchvision's RandAugment drawing only from ``ops`` (TrivialAugmentWide overrides the same table)."""

    def __init__(self, ops: Sequence[str], num_ops: int, magnitude: int) -> None:
        unknown = sorted(set(ops) - set(TORCHVISION_OPS))
        if unknown or not ops:
            raise ValueError(f"unknown or empty RandAugment ops {unknown or list(ops)}; known: {TORCHVISION_OPS}")
        super().__init__(num_ops=num_ops, magnitude=magnitude)
        self.ops = tuple(ops)

    @property
    def _AUGMENTATION_SPACE(self) -> dict:
        # Built per call from names, so the transform pickles (the library table holds lambdas).
        return {name: v2.RandAugment._AUGMENTATION_SPACE[name] for name in self.ops}


def _to_normalised_tensor() -> list[v2.Transform]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5] * 3, [0.5] * 3)]


def eval_transform(size: int) -> ImageTransform:
    """Deterministic "square" transform: PIL image → Tensor[3, size, size] in [-1, 1]."""
    return v2.Compose([v2.Resize((size, size), interpolation=v2.InterpolationMode.BICUBIC), *_to_normalised_tensor()])


def train_transform(
    size: int,
    horizontal_flip: bool = True,
    randaugment: bool = True,
    randaug_ops: Sequence[str] = UPSTREAM_OPS,
    scale: tuple[float, float] = (0.5, 1.0),
    randaug_style: RandAugmentStyle = "upstream",
) -> ImageTransform:
    """Random crop + flip + RandAugment(2, 7): PIL image → Tensor[3, size, size] in [-1, 1].

    Randomness comes from torch's global generator, which DataLoader seeds per worker.
    """
    steps: list[Callable] = [v2.RandomResizedCrop(size, scale=scale, interpolation=v2.InterpolationMode.BICUBIC)]
    if horizontal_flip:
        steps.append(v2.RandomHorizontalFlip())
    if randaugment:
        if randaug_style == "upstream":
            steps.append(RandomAugment(num_ops=2, level=7, ops=randaug_ops))
        elif randaug_style == "torchvision":
            steps.append(_RandAugmentSubset(randaug_ops, num_ops=2, magnitude=7))
        else:
            raise ValueError(f"unknown randaug_style {randaug_style!r}; choose 'upstream' or 'torchvision'")
    return v2.Compose([*steps, *_to_normalised_tensor()])


def build_transform(train: bool, size: int, horizontal_flip: bool = True) -> ImageTransform:
    """The training or evaluation transform for ``size`` px images."""
    return train_transform(size, horizontal_flip) if train else eval_transform(size)
