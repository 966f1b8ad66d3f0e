"""COCO and Flickr30k captions in Karpathy's split files (``karpathy/dataset_{coco,flickr30k}.json``)."""

from __future__ import annotations

from collections.abc import Callable

from vlmerge.data.synth.captions import captions
from vlmerge.data.synth.job import Job, Written, write_json
from vlmerge.data.synth.phrases import tokens
from vlmerge.data.synth.scenes import sample_scene

COCO_SPLITS = ("train", "restval", "val", "test")
F30K_SPLITS = ("train", "val", "test")
_ID_SPAN = 1_000_000  # ids of one split are drawn from their own block, disjoint from other splits'


def coco_filename(subset: str, image_id: int) -> str:
    """``COCO_val2014_000000391895.jpg`` (shared with VQA, which uses COCO's images)."""
    return f"COCO_{subset}_{image_id:012d}.jpg"


def _images(
    job: Job, splits: tuple[str, ...], first_id: int, place: Callable[[str, int], tuple[str, dict]]
) -> tuple[list[dict], Written]:
    """Render every split's images; ``place(split, id)`` gives the image's path and its entry's file fields."""
    entries, written = [], Written()
    for index, split in enumerate(splits):
        rng = job.rng(split)
        for image_id in job.ids(split, first_id + index * _ID_SPAN, _ID_SPAN):
            (path, entry), scene = place(split, image_id), sample_scene(rng)
            job.sink.save(job.root / path, scene)
            entry["sentences"] = captions(scene, rng, job.captions_per_image)
            entries.append(entry)
        written.counts[split] = {"images": job.counts[split], "captions": job.counts[split] * job.captions_per_image}
    return entries, written


def _finish(entries: list[dict], job: Job, dataset: str) -> None:
    """Shuffle images across splits (the published files are not grouped) and number images and sentences."""
    job.rng("order").shuffle(entries)
    sentid = 0
    for imgid, entry in enumerate(entries):
        raws = entry.pop("sentences")
        entry["sentids"] = list(range(sentid, sentid + len(raws)))
        entry["imgid"] = imgid
        entry["sentences"] = [
            {"tokens": tokens(raw), "raw": raw, "imgid": imgid, "sentid": sentid + k} for k, raw in enumerate(raws)
        ]
        sentid += len(raws)
    write_json(job.root / "karpathy" / f"dataset_{dataset}.json", {"images": entries, "dataset": dataset})


def write_coco(job: Job) -> Written:
    """``train2014/``, ``val2014/`` (restval/val/test all come from val2014, as in Karpathy's split)."""

    def place(split: str, image_id: int) -> tuple[str, dict]:
        subset = "train2014" if split == "train" else "val2014"
        name = coco_filename(subset, image_id)
        return f"{subset}/{name}", {"filepath": subset, "filename": name, "split": split, "cocoid": image_id}

    entries, written = _images(job, COCO_SPLITS, 1, place)
    _finish(entries, job, "coco")
    return written


def write_f30k(job: Job) -> Written:
    """``flickr30k-images/<id>.jpg``; entries have no ``filepath``/``cocoid``, as in the published file."""

    def place(split: str, image_id: int) -> tuple[str, dict]:
        return f"flickr30k-images/{image_id}.jpg", {"filename": f"{image_id}.jpg", "split": split}

    entries, written = _images(job, F30K_SPLITS, 1_000_000_000, place)
    _finish(entries, job, "flickr30k")
    return written
