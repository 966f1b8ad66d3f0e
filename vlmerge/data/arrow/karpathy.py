"""COCO and Flickr30k captions with Karpathy's splits → ``*_caption_karpathy_<split>.arrow``.

Follows ViLT's ``write_coco_karpathy.py`` / ``write_f30k_karpathy.py``: one row per image with all
its ``raw`` sentences, ``image_id`` = the file name. Rows are sorted by file name (ViLT shuffled
them without a seed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vlmerge.data.arrow.annotations import field, json_list, load_json, require_dir
from vlmerge.data.arrow.conversion import Conversion
from vlmerge.data.arrow.errors import RawDataError
from vlmerge.data.schema import FILES

# Annotation file under <raw>/karpathy/, and the image folder for records without a "filepath"
# (the Flickr30k file has none; the COCO file always names train2014 or val2014).
_SOURCES = {
    "coco": ("dataset_coco.json", None),
    "f30k": ("dataset_flickr30k.json", "flickr30k-images"),
}


@dataclass(frozen=True)
class KarpathyImage:
    path: Path
    filename: str
    split: str
    captions: list[str]


def read_karpathy(raw: Path, dataset: str) -> list[KarpathyImage]:
    """Parse ``<raw>/karpathy/dataset_*.json`` into one record per image, in file order."""
    name, default_folder = _SOURCES[dataset]
    path = raw / "karpathy" / name
    images = json_list(field(load_json(path), "images", str(path)), f"{path}: images")
    records = []
    for i, image in enumerate(images):
        where = f"{path}: images[{i}]"
        filename = field(image, "filename", where, str)
        split = field(image, "split", where, str)
        if split not in FILES[dataset]:
            raise RawDataError(f"{where}: unknown split {split!r} (expected one of {sorted(FILES[dataset])})")
        folder = image.get("filepath", default_folder)
        if not isinstance(folder, str):
            raise RawDataError(f"{where}: missing field 'filepath'")
        sentences = json_list(field(image, "sentences", where, list), where)
        captions = [field(s, "raw", f"{where}.sentences[{j}]", str) for j, s in enumerate(sentences)]
        records.append(KarpathyImage(raw / folder / filename, filename, split, captions))
    return records


def convert_karpathy(run: Conversion) -> None:
    """Write one table per Karpathy split of ``run.dataset`` (coco or f30k)."""
    records = read_karpathy(run.raw, run.dataset)
    for folder in sorted({r.path.parent for r in records}):
        require_dir(folder)
    for split in FILES[run.dataset]:
        chosen = sorted((r for r in records if r.split == split), key=lambda r: r.filename)
        captions = 0
        with run.table(split) as table, run.progress(split, len(chosen)) as bar:
            for record in chosen:
                bar.update()
                if not record.captions:
                    run.skip(split, record.filename, "no captions in the annotations")
                    continue
                image = run.image(record.path, split)
                if image is None:
                    continue
                table.write({"image": image, "caption": record.captions, "image_id": record.filename, "split": split})
                captions += len(record.captions)
        run.count(split, captions=captions)
