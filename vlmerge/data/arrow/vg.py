"""Visual Genome region descriptions → ``vg.arrow``.

Follows ViLT's ``write_vg.py``: one row per image with every region phrase as a caption and the
regions' boxes in the ``width``/``height``/``x``/``y`` columns, ``image_id`` the id as a string.
Images are looked up in ``images/VG_100K`` and ``images/VG_100K_2``; rows are sorted by image id
(ViLT shuffled them without a seed). Images without regions have no caption and get no row.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path

from vlmerge.data.arrow.annotations import field, integer, json_list, load_json
from vlmerge.data.arrow.conversion import Conversion
from vlmerge.data.arrow.errors import RawDataError

_IMAGE_FOLDERS = ("VG_100K", "VG_100K_2")
_BOX = ("width", "height", "x", "y")


@dataclass
class Regions:
    """All regions of one image, as parallel columns."""

    caption: list[str] = dataclass_field(default_factory=list)
    width: list[int] = dataclass_field(default_factory=list)
    height: list[int] = dataclass_field(default_factory=list)
    x: list[int] = dataclass_field(default_factory=list)
    y: list[int] = dataclass_field(default_factory=list)


def read_regions(path: Path) -> dict[int, Regions]:
    """Parse ``region_descriptions.json`` into regions per image id (regions in file order)."""
    by_image: dict[int, Regions] = {}
    for i, entry in enumerate(json_list(load_json(path), str(path))):
        where = f"{path}: [{i}]"
        image_id = integer(entry, "id", where)
        regions = by_image.setdefault(image_id, Regions())
        for j, region in enumerate(json_list(field(entry, "regions", where, list), where)):
            at = f"{where}.regions[{j}]"
            regions.caption.append(field(region, "phrase", at, str))
            for key in _BOX:
                getattr(regions, key).append(integer(region, key, at))
    return by_image


def index_images(root: Path) -> dict[int, Path]:
    """Image id → file, over the VG image folders present (the first folder wins a clash)."""
    folders = [root / name for name in _IMAGE_FOLDERS if (root / name).is_dir()]
    if not folders:
        raise RawDataError(f"missing image folder: {root / _IMAGE_FOLDERS[0]} (nor {_IMAGE_FOLDERS[1]})")
    index: dict[int, Path] = {}
    for folder in folders:
        for path in sorted(folder.iterdir()):
            if path.stem.isdigit():
                index.setdefault(int(path.stem), path)
    return index


def convert_vg(run: Conversion) -> None:
    """Write ``vg.arrow``."""
    by_image = read_regions(run.raw / "annotations" / "region_descriptions.json")
    images = index_images(run.raw / "images")
    chosen = sorted(image_id for image_id, regions in by_image.items() if regions.caption)
    phrases = 0
    with run.table("train") as table, run.progress("train", len(chosen)) as bar:
        for image_id in chosen:
            bar.update()
            path = images.get(image_id, run.raw / "images" / _IMAGE_FOLDERS[0] / f"{image_id}.jpg")
            image = run.image(path, "train")
            if image is None:
                continue
            regions = by_image[image_id]
            table.write({"image": image, **vars(regions), "image_id": str(image_id)})
            phrases += len(regions.caption)
    run.count("train", phrases=phrases, images_without_regions=len(by_image) - len(chosen))
