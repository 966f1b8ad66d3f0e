"""NLVR2 statements (JSON lines) → ``nlvr2_{train,dev,test1}.arrow`` (+ the balanced/unbalanced subsets).

Follows ViLT's ``write_nlvr2.py``: one row per image pair — the identifier without its sentence
index, ``dev-850-0-0`` → ``dev-850-0`` — holding both images, all its sentences and their
"True"/"False" labels, in the order the pairs first appear in the file. Images are
``<pair>-img0.png`` / ``-img1.png`` in ``images/train/<directory>/`` for train and ``<split>/``
otherwise. When ``nlvr2/data/balanced/balanced_{dev,test1}.json`` and
``unbalanced/unbalanced_{dev,test1}.json`` are present, each becomes ``nlvr2_<subset>_<split>.arrow``
with its images from the ``dev/`` or ``test1/`` folder; absent ones are logged and left out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path

from vlmerge.data.arrow.annotations import field, integer, load_json_lines, require_dir, require_file
from vlmerge.data.arrow.conversion import Conversion
from vlmerge.data.arrow.errors import RawDataError
from vlmerge.data.schema import FILES, NLVR2_SUBSETS

log = logging.getLogger(__name__)

_LABELS = ("True", "False")


@dataclass
class ImagePair:
    folder: Path
    sentences: list[str] = dataclass_field(default_factory=list)
    labels: list[str] = dataclass_field(default_factory=list)


def image_folder(raw: Path, split: str) -> Path:
    """Where a split's images live: ``images/train`` for train, ``<split>/`` (or ``images/<split>/``) otherwise."""
    if split == "train":
        return require_dir(raw / "images" / "train")
    # ViLT's DATA.md puts dev/ and test1/ at the root; some copies keep them beside images/train.
    for candidate in (raw / split, raw / "images" / split):
        if candidate.is_dir():
            return candidate
    return require_dir(raw / split)


def read_pairs(path: Path, images: Path, train: bool) -> dict[str, ImagePair]:
    """Group the statements of one split by image pair, in order of first appearance."""
    pairs: dict[str, ImagePair] = {}
    for where, record in load_json_lines(path):
        identifier = field(record, "identifier", where, str)
        sentence = field(record, "sentence", where, str)
        label = field(record, "label", where, str)
        if label not in _LABELS:
            raise RawDataError(f"{where}: label {label!r} is not 'True' or 'False'")
        pair_id, sep, _ = identifier.rpartition("-")
        if not sep:
            raise RawDataError(f"{where}: identifier {identifier!r} has no sentence index")
        folder = images / str(integer(record, "directory", where)) if train else images
        pair = pairs.setdefault(pair_id, ImagePair(folder))
        pair.sentences.append(sentence)
        pair.labels.append(label)
    return pairs


def subset_sources(raw: Path) -> dict[str, tuple[Path, Path]]:
    """The balanced/unbalanced subsets present: split → (annotation file, image folder of its base split)."""
    sources = {}
    for split in NLVR2_SUBSETS:
        subset, _, base = split.partition("_")
        annotation = raw / "nlvr2" / "data" / subset / f"{split}.json"
        if annotation.is_file():
            sources[split] = (annotation, image_folder(raw, base))
        else:
            log.info("nlvr2: no %s, so no %s table", annotation, FILES["nlvr2"][split])
    return sources


def convert_nlvr2(run: Conversion) -> None:
    """Write one table per NLVR2 split, and one per balanced/unbalanced subset found."""
    sources = {
        split: (require_file(run.raw / "nlvr2" / "data" / f"{split}.json"), image_folder(run.raw, split))
        for split in FILES["nlvr2"]
        if split not in NLVR2_SUBSETS
    }
    sources |= subset_sources(run.raw)
    for split, (annotation, images) in sources.items():
        pairs = read_pairs(annotation, images, train=split == "train")
        statements = 0
        with run.table(split) as table, run.progress(split, len(pairs), unit="pair") as bar:
            for pair_id, pair in pairs.items():
                bar.update()
                image_0 = run.image(pair.folder / f"{pair_id}-img0.png", split)
                image_1 = run.image(pair.folder / f"{pair_id}-img1.png", split)
                if image_0 is None or image_1 is None:
                    continue
                table.write(
                    {
                        "image_0": image_0,
                        "image_1": image_1,
                        "questions": pair.sentences,
                        "answers": pair.labels,
                        "identifier": pair_id,
                    }
                )
                statements += len(pair.sentences)
        run.count(split, statements=statements)
