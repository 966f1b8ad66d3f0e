"""SBU and Conceptual Captions: ``images_<split>/<first four chars>/<name>`` plus ``[path, caption]`` lists.

Images are matched to annotations by the basename of the annotation's path, which is a URL here as in
the crawled originals. GCC entries whose image is deliberately not written mimic its dead URLs.
"""

from __future__ import annotations

from vlmerge.data.synth.captions import captions
from vlmerge.data.synth.job import Job, Written, write_json
from vlmerge.data.synth.scenes import sample_scene

GCC_SPLITS = ("train", "val")
MISSING_EVERY = 30  # GCC: about one entry in thirty has no image (at least one when a split has two or more)


def _names(job: Job, split: str) -> list[str]:
    """Distinct 16-hex-digit names; their first four characters (the folder) vary."""
    rng = job.rng(split, "names")
    names: dict[str, None] = {}
    while len(names) < job.counts[split]:
        names[f"{rng.getrandbits(64):016x}"] = None
    return list(names)


def _write(job: Job, split: str, host: str, missing: int, written: Written) -> list[list[str]]:
    rng, names = job.rng(split), _names(job, split)
    skip = set(job.rng(split, "missing").sample(range(len(names)), missing))
    entries, gone = [], []
    for i, name in enumerate(names):
        scene = sample_scene(rng)
        path = job.root / f"images_{split}" / name[:4] / name
        if i in skip:
            gone.append(job.relative(path))
        else:
            job.sink.save(path, scene)
        entries.append([f"{host}/{name[:4]}/{name}", captions(scene, rng, 1)[0]])
    written.counts[split] = {"entries": len(entries), "images": len(entries) - len(gone)}
    if gone:
        written.missing[split] = gone
    return entries


def write_sbu(job: Job) -> Written:
    written = Written()
    write_json(job.root / "annot.json", _write(job, "train", "http://sbu.synthetic.invalid", 0, written))
    return written


def write_gcc(job: Job) -> Written:
    written = Written()
    for split in GCC_SPLITS:
        n = job.counts[split]
        missing = max(1, n // MISSING_EVERY) if n >= 2 else 0
        entries = _write(job, split, "http://gcc.synthetic.invalid", missing, written)
        write_json(job.root / f"{split}_annot.json", entries)
    return written
