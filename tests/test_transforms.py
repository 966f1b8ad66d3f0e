"""Image transforms: shapes, dtype, range, eval determinism, train randomness, the flip switch."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from vlmerge.data.transforms import TORCHVISION_OPS, UPSTREAM_OPS, build_transform, eval_transform, train_transform


@pytest.fixture(scope="module")
def image() -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (45, 70, 3), dtype=np.uint8)
    pixels[:5] = 255  # saturated and black areas reach both ends of the range
    pixels[-5:] = 0
    return Image.fromarray(pixels)


def halves() -> Image.Image:
    """Left half red, right half blue."""
    pixels = np.zeros((40, 60, 3), dtype=np.uint8)
    pixels[:, :30, 0] = 255
    pixels[:, 30:, 2] = 255
    return Image.fromarray(pixels)


@pytest.mark.parametrize("train", [False, True])
def test_shape_dtype_range(image: Image.Image, train: bool) -> None:
    torch.manual_seed(0)
    transform = build_transform(train, 32)
    for _ in range(20):
        x = transform(image)
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert x.min() >= -1.0 and x.max() <= 1.0


def test_eval_is_square_bicubic_resize_normalised(image: Image.Image) -> None:
    x = eval_transform(24)(image)
    assert torch.equal(x, eval_transform(24)(image))
    reference = np.asarray(image.resize((24, 24), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    expected = torch.from_numpy((reference - 0.5) / 0.5).permute(2, 0, 1)
    # torchvision's bicubic on PIL images is PIL's: equal up to float rounding.
    assert torch.allclose(x, expected, atol=1e-6)


def test_train_is_random_and_seeded(image: Image.Image) -> None:
    transform = train_transform(32)
    torch.manual_seed(1)
    first = [transform(image) for _ in range(4)]
    torch.manual_seed(1)
    again = [transform(image) for _ in range(4)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], first[1])


def red_on_left(x: torch.Tensor) -> bool:
    half = x.shape[-1] // 2
    redness = x[0] - x[2]  # red minus blue channel
    return bool(redness[:, :half].mean() > redness[:, half:].mean())


@pytest.mark.parametrize("flip", [False, True])
def test_horizontal_flip_switch(flip: bool) -> None:
    torch.manual_seed(2)
    transform = train_transform(32, horizontal_flip=flip, randaugment=False)
    left = [red_on_left(transform(halves())) for _ in range(60)]
    if flip:
        assert 10 < sum(left) < 50  # Binomial(60, 1/2): outside this range has probability < 1e-6
    else:
        assert all(left)


def test_randaugment_op_lists() -> None:
    assert set(UPSTREAM_OPS) < set(TORCHVISION_OPS) and "Solarize" not in UPSTREAM_OPS
    transform = train_transform(32, randaug_ops=["Solarize"])
    torch.manual_seed(3)
    white = Image.new("RGB", (40, 40), (255, 255, 255))
    # RandomResizedCrop of a flat image is flat; two solarize ops at magnitude 7 (threshold 0.77) turn
    # white black, then black stays black.
    assert torch.all(transform(white) == -1.0)
    clone = pickle.loads(pickle.dumps(train_transform(32)))
    assert clone(white).shape == (3, 32, 32)
    with pytest.raises(ValueError, match="Blur"):
        train_transform(32, randaug_ops=["Blur"])
