"""SBU and Conceptual Captions: ``[image_path, caption]`` pair lists → sharded caption tables.

Follows ViLT's ``write_sbu.py`` / ``write_conceptual_caption.py``: the image is matched by the
basename of ``image_path`` and read from ``images_<split>/<first four characters>/<name>``; one row
per image, ``caption`` a one-element list, ``image_id`` the basename; ``shard_size`` rows per file.
Rows are sorted by name (ViLT shuffled them without a seed). A name listed twice keeps its first
caption (ViLT kept whichever came last) and the repeat is reported. Many GCC URLs are dead, so
missing images are expected: they are skipped and listed in the manifest.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from vlmerge.data.arrow.annotations import json_list, load_json, require_dir, require_file
from vlmerge.data.arrow.conversion import Conversion
from vlmerge.data.arrow.errors import RawDataError

# dataset → split → (annotation file, image folder), both under the raw root.
_LAYOUT = {
    "sbu": {"train": ("annot.json", "images_train")},
    "gcc": {"train": ("train_annot.json", "images_train"), "val": ("val_annot.json", "images_val")},
}


def read_pairs(path: Path) -> list[tuple[str, str]]:
    """Parse an annotation file into ``(image name, caption)`` pairs, in file order."""
    pairs = []
    for i, pair in enumerate(json_list(load_json(path), str(path))):
        if not (isinstance(pair, list) and len(pair) >= 2 and isinstance(pair[0], str) and isinstance(pair[1], str)):
            raise RawDataError(f"{path}: record {i}: expected [image_path, caption], found {str(pair)[:80]}")
        name = PurePosixPath(pair[0]).name
        if not name:
            raise RawDataError(f"{path}: record {i}: image path {pair[0]!r} has no file name")
        pairs.append((name, pair[1]))
    return pairs


def first_caption_per_name(pairs: list[tuple[str, str]], run: Conversion, split: str) -> dict[str, str]:
    """One caption per image name: the first listed; later repeats are recorded as skipped."""
    captions: dict[str, str] = {}
    for name, caption in pairs:
        if name in captions:
            run.skip(split, name, "image listed again in the annotations (first caption kept)")
        else:
            captions[name] = caption
    return captions


def convert_pairs(run: Conversion) -> None:
    """Write the sharded caption tables of ``run.dataset`` (sbu or gcc)."""
    layout = _LAYOUT[run.dataset]
    # Check every input before writing anything.
    sources = {
        split: (require_file(run.raw / annot), require_dir(run.raw / images))
        for split, (annot, images) in layout.items()
    }
    for split, (annotation, images) in sources.items():
        captions = first_caption_per_name(read_pairs(annotation), run, split)
        with run.table(split) as table, run.progress(split, len(captions)) as bar:
            for name in sorted(captions):
                bar.update()
                image = run.image(images / name[:4] / name, split)
                if image is not None:
                    table.write({"image": image, "caption": [captions[name]], "image_id": name, "split": split})
        run.count(split, annotations=len(captions))
