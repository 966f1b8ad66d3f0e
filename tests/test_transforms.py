"""Image transforms: shapes, dtype, range, eval determinism, train randomness, the flip switch; the
upstream RandomAugment op by op against hand-computed values and Pillow, its sampling and magnitudes."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from vlmerge.data import randaugment as ra
from vlmerge.data.randaugment import Draw, RandomAugment
from vlmerge.data.transforms import TORCHVISION_OPS, UPSTREAM_OPS, build_transform, eval_transform, train_transform

GREY = 128


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
    assert set(UPSTREAM_OPS) == set(ra.OPS)
    transform = train_transform(32, randaug_ops=["Solarize"], randaug_style="torchvision")
    torch.manual_seed(3)
    white = Image.new("RGB", (40, 40), (255, 255, 255))
    # RandomResizedCrop of a flat image is flat; two solarize ops at magnitude 7 (threshold 0.77) turn
    # white black, then black stays black.
    assert torch.all(transform(white) == -1.0)
    for style in ("upstream", "torchvision"):
        clone = pickle.loads(pickle.dumps(train_transform(32, randaug_style=style)))  # type: ignore[arg-type]
        assert clone(white).shape == (3, 32, 32)
    with pytest.raises(ValueError, match="Blur"):
        train_transform(32, randaug_ops=["Blur"], randaug_style="torchvision")
    with pytest.raises(ValueError, match="Solarize"):
        train_transform(32, randaug_ops=["Solarize"])  # the upstream style has only its own ten ops
    with pytest.raises(ValueError, match="randaug_style"):
        train_transform(32, randaug_style="albumentations")  # type: ignore[arg-type]


def test_default_train_transform_is_the_upstream_randaugment() -> None:
    steps = train_transform(32).transforms  # type: ignore[attr-defined]
    (augment,) = [t for t in steps if isinstance(t, RandomAugment)]
    assert (augment.num_ops, augment.level, augment.ops, augment.prob) == (2, 7, UPSTREAM_OPS, 0.5)
    plain = train_transform(32, randaugment=False).transforms  # type: ignore[attr-defined]
    assert not any(isinstance(t, RandomAugment) for t in plain)


# ------------------------------------------------------------------ upstream RandomAugment: ops
def random_array(seed: int, shape: tuple[int, ...] = (23, 31, 3), low: int = 0, high: int = 256) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high, shape, dtype=np.uint8)


def test_magnitudes_at_level_7() -> None:
    assert ra.magnitude("Brightness", 7) == 1.36 and ra.magnitude("Sharpness", 7) == 1.36
    assert ra.magnitude("ShearX", 7) == 0.21 and ra.magnitude("ShearY", 7) == 0.21
    assert ra.magnitude("TranslateX", 7) == 7.0 and ra.magnitude("TranslateY", 7) == 7.0  # pixels, any size
    assert ra.magnitude("Rotate", 7) == 21.0
    assert all(ra.magnitude(op, 7) is None for op in ("Identity", "AutoContrast", "Equalize"))
    with pytest.raises(ValueError, match="Solarize"):
        ra.magnitude("Solarize", 7)


def test_brightness_is_the_truncating_lookup() -> None:
    values = np.array([0, 1, 10, 100, 150, 187, 188, 255], dtype=np.uint8)
    # By hand: v * 1.36 truncated, capped at 255 (1.36, 13.6, 136, 204, 254.32, 255.68, 346.8).
    expected = np.array([0, 1, 13, 136, 204, 254, 255, 255], dtype=np.uint8)
    assert np.array_equal(ra.brightness(values.reshape(2, 4), 1.36), expected.reshape(2, 4))
    rgb = np.stack([values] * 3, axis=-1)[None]
    assert np.array_equal(ra.brightness(rgb, 1.36)[0, :, 1], expected)


def test_autocontrast_stretches_each_channel() -> None:
    img = np.zeros((2, 3, 3), dtype=np.uint8)
    img[..., 0] = [[50, 100, 150], [50, 50, 150]]  # min 50 → 0, max 150 → 255, 100 → int(127.5)
    img[..., 1] = 77  # constant: unchanged
    img[..., 2] = [[0, 255, 3], [0, 0, 0]]  # already full range: unchanged
    out = ra.autocontrast(img)
    assert np.array_equal(out[..., 0], [[0, 127, 255], [0, 0, 255]])
    assert np.all(out[..., 1] == 77) and np.array_equal(out[..., 2], img[..., 2])
    for seed in range(5):
        x = random_array(seed, low=40, high=200)
        assert np.array_equal(ra.autocontrast(x), np.asarray(ImageOps.autocontrast(Image.fromarray(x))))


def test_equalize_matches_pillow() -> None:
    for seed in range(5):
        x = random_array(seed, high=256 if seed % 2 else 60)
        assert np.array_equal(ra.equalize(x), np.asarray(ImageOps.equalize(Image.fromarray(x))))
    flat = np.full((5, 6, 3), 90, dtype=np.uint8)
    assert np.array_equal(ra.equalize(flat), flat)


def test_sharpness_by_hand_and_matches_pillow() -> None:
    img = np.full((5, 5), 100, dtype=np.uint8)
    img[2, 2] = 113
    out = ra.sharpness(img, 1.36)
    # Centre: smooth (8·100 + 5·113)/13 = 105, 105 + 1.36·(113 − 105) = 115.88 → 115.
    # Its neighbours: smooth (7·100 + 113 + 5·100)/13 = 101, 101 + 1.36·(100 − 101) = 99.64 → 99.
    assert out[2, 2] == 115 and out[1, 1] == 99 and out[2, 3] == 99
    assert np.all(out[0] == 100) and np.all(out[:, 0] == 100)  # border rows/columns kept
    for seed in range(5):
        x = random_array(seed)
        want = np.asarray(ImageEnhance.Sharpness(Image.fromarray(x)).enhance(1.36))
        assert np.array_equal(ra.sharpness(x, 1.36), want)  # overshoot clipped to 0/255 as Pillow does


def marked(shape: tuple[int, int], y: int, x: int) -> np.ndarray:
    img = np.zeros((*shape, 3), dtype=np.uint8)
    img[y, x] = 255
    return img


def test_translate_moves_by_exactly_7_pixels_and_fills_grey() -> None:
    img = marked((20, 30), 10, 15)
    left = ra.translate_x(img, 7.0)  # upstream's matrix [[1, 0, -7], [0, 1, 0]]: content moves left
    assert np.array_equal(left[:, :23], img[:, 7:]) and np.all(left[:, 23:] == GREY)
    assert left[10, 8].tolist() == [255, 255, 255]
    right = ra.translate_x(img, -7.0)
    assert np.array_equal(right[:, 7:], img[:, :23]) and np.all(right[:, :7] == GREY)
    up = ra.translate_y(img, 7.0)
    assert np.array_equal(up[:13], img[7:]) and np.all(up[13:] == GREY)
    down = ra.translate_y(img, -7.0)
    assert np.array_equal(down[7:], img[:13]) and np.all(down[:7] == GREY)
    big = marked((200, 300), 100, 150)  # 7 px whatever the size, not a fraction of it
    assert ra.translate_x(big, 7.0)[100, 143].tolist() == [255, 255, 255]


def centroid(channel: np.ndarray) -> tuple[float, float]:
    ys, xs = np.indices(channel.shape)
    w = channel.astype(np.float64)
    return float((ys * w).sum() / w.sum()), float((xs * w).sum() / w.sum())


def test_shear_moves_pixels_by_factor_times_the_other_coordinate() -> None:
    img = marked((30, 30), 20, 5)
    img[0, 5] = 255
    out = ra.shear_x(img, 0.21)[..., 0]
    assert out[0, 5] == 255  # row 0 does not move
    # Row 20 moves by 0.21·20 = 4.2 px: bilinear weights 0.8 at x = 9 and 0.2 at x = 10.
    assert abs(int(out[20, 9]) - 204) <= 1 and abs(int(out[20, 10]) - 51) <= 1
    black = (0, 0, 0)  # centroids below: no grey fill
    assert centroid(ra.shear_x(img, 0.21, black)[15:, :, 0]) == pytest.approx((20 - 15, 9.2), abs=0.01)
    down = ra.shear_y(marked((30, 30), 5, 20), -0.21, black)[..., 0]  # column 20 moves up by 4.2 px
    assert centroid(down) == pytest.approx((0.8, 20), abs=0.01)
    corner = ra.shear_x(np.zeros((30, 30, 3), dtype=np.uint8), 0.21)
    assert np.all(corner[29, :5] == GREY) and np.all(corner[0] == 0)  # uncovered pixels are grey


def test_rotate_about_the_centre_counter_clockwise() -> None:
    size, c = 65, 32  # odd size: pixel 32 is the centre
    ys, xs = np.indices((size, size))
    radius = np.hypot(ys - c, xs - c)
    disk = np.where(radius <= 15, 255, 0).astype(np.uint8)
    out = ra.rotate(np.stack([disk] * 3, axis=-1), 21.0)[..., 0]
    # A centred disk is symmetric: inside stays white, the ring around it black; the corners come
    # from outside the image (corner (0, 0) is 45.3 px from the centre, the image reaches 32.5) → grey.
    assert np.all(out[radius <= 13] == 255) and np.all(out[(radius >= 17) & (radius <= 30)] == 0)
    assert out[0, 0] == out[0, -1] == out[-1, 0] == out[-1, -1] == GREY
    # A point 20 px right of the centre goes to (x, y) = (32 + 20·cos 21°, 32 − 20·sin 21°).
    spot = np.zeros((size, size, 3), dtype=np.uint8)
    spot[c - 1 : c + 2, c + 19 : c + 22] = 255
    y, x = centroid(ra.rotate(spot, 21.0, fill=(0, 0, 0))[..., 0])
    assert (y, x) == pytest.approx((c - 20 * np.sin(np.radians(21)), c + 20 * np.cos(np.radians(21))), abs=0.3)
    y, x = centroid(ra.rotate(spot, -21.0, fill=(0, 0, 0))[..., 0])
    assert (y, x) == pytest.approx((c + 20 * np.sin(np.radians(21)), c + 20 * np.cos(np.radians(21))), abs=0.3)


def test_identity_and_apply() -> None:
    x = random_array(7)
    assert ra.identity(x) is x
    draws = [Draw("Brightness", True, 1.36), Draw("TranslateX", False), Draw("TranslateY", True, -7.0)]
    assert np.array_equal(RandomAugment.apply(x, draws), ra.translate_y(ra.brightness(x, 1.36), -7.0))


# --------------------------------------------------------------- upstream RandomAugment: sampling
def test_sampling_is_reproducible_from_the_seed(image: Image.Image) -> None:
    augment = RandomAugment()
    first = [augment.draw(np.random.default_rng(11)) for _ in range(3)]
    assert first == [augment.draw(np.random.default_rng(11)) for _ in range(3)]
    runs = [[augment.draw(rng) for _ in range(20)] for rng in (np.random.default_rng(1), np.random.default_rng(2))]
    assert runs[0] != runs[1]
    # Without an rng: drawn from torch's global generator (what KeyedSamples seeds per sample).
    outs = []
    for _ in range(2):
        torch.manual_seed(5)
        outs.append([np.asarray(augment(image)) for _ in range(8)])
    assert all(np.array_equal(a, b) for a, b in zip(*outs))
    assert any(not np.array_equal(outs[0][0], o) for o in outs[0][1:])
    got = augment(image, np.random.default_rng(3))
    assert isinstance(got, Image.Image) and got.size == image.size and got.mode == "RGB"
    expected = RandomAugment.apply(np.asarray(image), augment.draw(np.random.default_rng(3)))
    assert np.array_equal(np.asarray(got), expected)
    assert np.array_equal(augment(np.asarray(image), np.random.default_rng(3)), expected)


def test_sampling_frequencies_and_signs() -> None:
    augment, rng = RandomAugment(), np.random.default_rng(0)
    draws = [d for _ in range(20_000) for d in augment.draw(rng)]
    assert len(draws) == 40_000
    counts = {op: sum(d.op == op for d in draws) for op in UPSTREAM_OPS}
    # Each op: Binomial(40000, 1/10), mean 4000, sd 60; applied: Binomial(40000, 1/2), mean 20000, sd 100.
    assert all(3_400 < n < 4_600 for n in counts.values()), counts
    applied = [d for d in draws if d.applied]
    assert 19_000 < len(applied) < 21_000
    for op in UPSTREAM_OPS:
        ran = [d for d in applied if d.op == op]
        assert 1_600 < len(ran) < 2_400  # half of ~4000
        unsigned = ra.magnitude(op, 7)
        assert {None if d.arg is None else abs(d.arg) for d in ran} == {unsigned}
        if op in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"):
            negative = sum(d.arg is not None and d.arg < 0 for d in ran)
            assert 0.4 < negative / len(ran) < 0.6
        elif unsigned is not None:
            assert all(d.arg == 1.36 for d in ran)  # enhance ops have no sign
    assert all(d.arg is None for d in draws if not d.applied)
    # Two draws with replacement: the same op twice about 1/10 of the time.
    pairs = [augment.draw(rng) for _ in range(5_000)]
    same = sum(a.op == b.op for a, b in pairs)
    assert 350 < same < 650  # Binomial(5000, 1/10): mean 500, sd 21
