"""Drawing scenes with PIL and encoding them as the real datasets store them (JPEG, or PNG for NLVR2)."""

from __future__ import annotations

import io
import math

from PIL import Image, ImageDraw

from vlmerge.data.synth.scenes import Obj, Scene
from vlmerge.data.synth.vocab import BACKGROUND, COLORS, GRID, SIZES

JPEG_QUALITY = 95


def _round(v: float) -> int:
    return math.floor(v + 0.5)


def object_box(obj: Obj, image_size: int) -> tuple[int, int, int, int]:
    """Inclusive pixel box ``(x0, y0, x1, y1)`` of ``obj``, centred in its grid cell."""
    cell = image_size / GRID
    cx, cy = (obj.col + 0.5) * cell, (obj.row + 0.5) * cell
    half = SIZES[obj.size] * cell / 2
    return _round(cx - half), _round(cy - half), _round(cx + half) - 1, _round(cy + half) - 1


def render(scene: Scene, image_size: int) -> Image.Image:
    """RGB image ``[image_size, image_size]``: plain background, flat-coloured shapes, no anti-aliasing."""
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        x0, y0, x1, y1 = object_box(obj, image_size)
        fill = COLORS[obj.color]
        if obj.shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif obj.shape == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        else:  # triangle, apex up: its bounding-box centre lies inside it
            draw.polygon(((x0 + x1) / 2, y0, x1, y1, x0, y1), fill=fill)
    return image


def encode(image: Image.Image, fmt: str) -> bytes:
    """File bytes in ``fmt`` ("JPEG" or "PNG"); identical bytes for identical pixels."""
    buf = io.BytesIO()
    if fmt == "JPEG":
        # 4:4:4 chroma: with the default 4:2:0 a 7-px shape's colour bleeds into the background.
        image.save(buf, "JPEG", quality=JPEG_QUALITY, subsampling=0)
    elif fmt == "PNG":
        image.save(buf, "PNG")
    else:
        raise ValueError(f"unsupported image format {fmt!r}")
    return buf.getvalue()
