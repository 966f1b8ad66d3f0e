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

The evaluation transform is written with PIL and torch alone, op for op what torchvision's
``v2.Resize(BICUBIC)`` (PIL's own resize on a PIL image), ``ToImage``, ``ToDtype(float32, scale=True)`` and
``Normalize`` compute, so the stages that only evaluate never import torchvision (about a second of start-up
per process); the training transforms import it when they are built.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from PIL import Image

from vlmerge.data.randaugment import UPSTREAM_OPS, RandomAugment

if TYPE_CHECKING:
    from torchvision.transforms import v2

__all__ = [
    "TORCHVISION_OPS",
    "UPSTREAM_OPS",
    "ImageTransform",
    "RandAugmentStyle",
    "SquareResize",
    "build_transform",
    "eval_transform",
    "train_transform",
]

RandAugmentStyle = Literal["upstream", "torchvision"]
# The keys of torchvision's ``v2.RandAugment._AUGMENTATION_SPACE``, in its order (a test compares them).
TORCHVISION_OPS = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
)
MEAN = STD = (0.5, 0.5, 0.5)

ImageTransform = Callable[[Image.Image], torch.Tensor]


class SquareResize:
    """The deterministic "square" transform: PIL image → Tensor[C, size, size] (C = 3 for RGB) in [-1, 1].

    Bicubic ``Image.resize`` to size × size (the image itself when it has that size already), then the
    ``uint8`` HWC pixels viewed as CHW, converted to float32, multiplied in place by ``1/255`` and
    normalised as ``(x - mean) / std`` with per-channel tensors: the same operations in the same order as
    torchvision's v2 pipeline, hence the same bits.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.mean = torch.tensor(MEAN, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(STD, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), resample=Image.Resampling.BICUBIC)
        channels = len(image.getbands())
        pixels = torch.as_tensor(np.array(image, copy=True)).view(image.size[1], image.size[0], channels)
        scaled = pixels.permute(2, 0, 1).to(torch.float32).mul_(1.0 / 255)
        return scaled.sub(self.mean).div_(self.std)

    def __repr__(self) -> str:
        return f"SquareResize(size={self.size})"


def eval_transform(size: int) -> ImageTransform:
    """Deterministic "square" transform: PIL image → Tensor[3, size, size] in [-1, 1] (:class:`SquareResize`)."""
    return SquareResize(size)


@functools.cache
def _randaugment_subset() -> type:
    """torchvision's RandAugment drawing only from given ops (built on first use: it imports torchvision)."""
    from torchvision.transforms import v2

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

    _RandAugmentSubset.__module__ = __name__
    _RandAugmentSubset.__qualname__ = "_RandAugmentSubset"
    return _RandAugmentSubset


def __getattr__(name: str) -> Any:
    # Pickles of a training transform name ``vlmerge.data.transforms._RandAugmentSubset``: built on demand.
    if name == "_RandAugmentSubset":
        return _randaugment_subset()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _to_normalised_tensor() -> list[v2.Transform]:
    from torchvision.transforms import v2

    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(MEAN), list(STD))]


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
    from torchvision.transforms import v2

    steps: list[Callable] = [v2.RandomResizedCrop(size, scale=scale, interpolation=v2.InterpolationMode.BICUBIC)]
    if horizontal_flip:
        steps.append(v2.RandomHorizontalFlip())
    if randaugment:
        if randaug_style == "upstream":
            steps.append(RandomAugment(num_ops=2, level=7, ops=randaug_ops))
        elif randaug_style == "torchvision":
            steps.append(_randaugment_subset()(randaug_ops, num_ops=2, magnitude=7))
        else:
            raise ValueError(f"unknown randaug_style {randaug_style!r}; choose 'upstream' or 'torchvision'")
    return v2.Compose([*steps, *_to_normalised_tensor()])


def build_transform(train: bool, size: int, horizontal_flip: bool = True) -> ImageTransform:
    """The training or evaluation transform for ``size`` px images."""
    return train_transform(size, horizontal_flip) if train else eval_transform(size)
