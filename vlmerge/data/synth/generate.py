"""``generate``: write every requested synthetic dataset in its published raw layout, then ``synth.json``.

Each dataset is written into a temporary sibling folder and swapped in when complete, so a rerun never
mixes files of two runs (a stale image could otherwise stand in for a GCC entry that must be missing).
Only folders this generator wrote (they hold ``MARKER``) are ever replaced.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vlmerge.data.synth.errors import SynthError
from vlmerge.data.synth.job import ImageSink, Job, Written, write_json
from vlmerge.data.synth.karpathy import write_coco, write_f30k
from vlmerge.data.synth.nlvr2 import write_nlvr2
from vlmerge.data.synth.sizes import SIZES, SPLITS, resolve_counts
from vlmerge.data.synth.vg import write_vg
from vlmerge.data.synth.vqa import write_vqa
from vlmerge.data.synth.webcaptions import write_gcc, write_sbu
from vlmerge.runtime import Progress, atomic_write_json

log = logging.getLogger(__name__)

SUMMARY = "synth.json"
MARKER = ".vlmerge-synth.json"  # in each dataset folder: what was generated there
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 12, 1024
WRITERS: dict[str, Callable[[Job], Written]] = {
    "coco": write_coco,
    "f30k": write_f30k,
    "vqa": write_vqa,
    "nlvr2": write_nlvr2,
    "vg": write_vg,
    "sbu": write_sbu,
    "gcc": write_gcc,
}


@dataclass(frozen=True)
class Request:
    """A validated generation request: datasets in canonical order, counts resolved against the size preset."""

    seed: int
    size: str
    image_size: int
    datasets: tuple[str, ...]
    counts: dict[str, dict[str, int]]


def _request(
    seed: int,
    size: str,
    datasets: Sequence[str] | None,
    counts: Mapping[str, Mapping[str, int]] | None,
    image_size: int,
) -> Request:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SynthError(f"seed {seed!r}: must be a non-negative integer")
    if (
        isinstance(image_size, bool)
        or not isinstance(image_size, int)
        or not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE
    ):
        raise SynthError(f"image size {image_size!r}: must be an integer in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}]")
    if isinstance(datasets, str):
        raise SynthError(f"datasets {datasets!r}: give a sequence of names, not one string")
    names = list(SPLITS) if datasets is None else list(datasets)
    for name in names:
        if name not in SPLITS:
            raise SynthError(f"unknown dataset {name!r}; choose from {list(SPLITS)}")
    if not names or len(set(names)) != len(names):
        raise SynthError(f"datasets {names}: need at least one, each once")
    names = [d for d in SPLITS if d in names]  # canonical order
    return Request(seed, size, image_size, tuple(names), resolve_counts(size, names, counts))


def _check_replaceable(folder: Path) -> None:
    if folder.is_file() or (folder.is_dir() and any(folder.iterdir()) and not (folder / MARKER).is_file()):
        raise SynthError(f"{folder} exists and was not written by vlmerge.synth; refusing to replace it")


def _write_dataset(out: Path, request: Request, dataset: str) -> Written:
    """Write ``dataset`` into a temporary folder, then swap it in for ``out/<dataset>``."""
    final, tmp, old = out / dataset, out / f".tmp-synth-{dataset}", out / f".old-synth-{dataset}"
    for leftover in (tmp, old):  # names only this generator uses: leftovers of an interrupted run
        shutil.rmtree(leftover, ignore_errors=True)
    counts, preset = request.counts[dataset], SIZES[request.size]
    images = sum(counts.values()) * (2 if dataset == "nlvr2" else 1) - counts.get("test-dev", 0)
    with Progress(images, f"synth {dataset}", unit="img", logger=log) as progress:
        job = Job(
            request.seed,
            dataset,
            tmp,
            counts,
            ImageSink(request.image_size, progress),
            preset.questions_per_image,
            preset.captions_per_image,
        )
        written = WRITERS[dataset](job)
    write_json(
        tmp / MARKER,
        {
            "dataset": dataset,
            "seed": request.seed,
            "size": request.size,
            "image_size": request.image_size,
            "counts": written.counts,
            "missing": written.missing,
        },
    )
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return written


def generate(
    out: Path,
    *,
    seed: int = 0,
    size: str = "tiny",
    datasets: Sequence[str] | None = None,
    counts: Mapping[str, Mapping[str, int]] | None = None,
    image_size: int = 48,
) -> dict:
    """Write synthetic ``out/<dataset>/`` folders in the published raw layouts (docs/raw-formats.md).

    Same arguments → byte-identical files. Returns the record also written to ``out/synth.json``:
    seed, size, image size, requested counts, and per dataset/split what was written and which
    files are missing on purpose (GCC's dead links). ``synth.json`` describes this call's datasets;
    each ``out/<dataset>/`` also keeps its own record in ``MARKER``.
    """
    request = _request(seed, size, datasets, counts, image_size)
    out = Path(out)
    for name in request.datasets:
        _check_replaceable(out / name)
    out.mkdir(parents=True, exist_ok=True)
    written = {name: _write_dataset(out, request, name) for name in request.datasets}
    summary = {
        "generator": "vlmerge.synth",
        "seed": seed,
        "size": size,
        "image_size": image_size,
        "datasets": list(request.datasets),
        "requested": request.counts,
        "written": {name: w.counts for name, w in written.items()},
        "missing": {name: w.missing for name, w in written.items() if w.missing},
    }
    atomic_write_json(out / SUMMARY, summary)
    log.info("wrote %s to %s", ", ".join(request.datasets), out)
    return summary
