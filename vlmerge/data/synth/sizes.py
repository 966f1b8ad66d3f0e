"""How much to generate: one preset per size (counts per dataset and split), plus validated overrides."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vlmerge.data.synth.errors import SynthError

# Splits of each dataset, and what one count unit is: an image (pair for NLVR2, annotation entry for SBU/GCC).
SPLITS: dict[str, tuple[str, ...]] = {
    "coco": ("train", "restval", "val", "test"),
    "f30k": ("train", "val", "test"),
    "vqa": ("train", "val", "test", "test-dev"),
    "nlvr2": ("train", "dev", "test1"),
    "vg": ("train",),
    "sbu": ("train",),
    "gcc": ("train", "val"),
}
UNITS: dict[str, str] = {
    "coco": "images",
    "f30k": "images",
    "vqa": "images (test-dev: test images it uses)",
    "nlvr2": "image pairs",
    "vg": "images",
    "sbu": "entries",
    "gcc": "entries (a few without image)",
}
MAX_COUNT = 1_000_000  # ids of a split are drawn from a block of this many


@dataclass(frozen=True)
class SizePreset:
    counts: Mapping[str, Mapping[str, int]]
    questions_per_image: int = 4  # VQA, ±1 per image
    captions_per_image: int = 5  # COCO/F30K, as in Karpathy's files


SIZES: dict[str, SizePreset] = {
    # Tests: a few dozen images per split, generated in well under two seconds.
    "tiny": SizePreset(
        {
            "coco": {"train": 24, "restval": 8, "val": 8, "test": 8},
            "f30k": {"train": 16, "val": 8, "test": 8},
            "vqa": {"train": 24, "val": 12, "test": 8, "test-dev": 4},
            "nlvr2": {"train": 24, "dev": 12, "test1": 12},
            "vg": {"train": 16},
            "sbu": {"train": 24},
            "gcc": {"train": 24, "val": 8},
        }
    ),
    # The embedded demo: ~19k pre-training pairs (COCO train ×5 + VG regions + SBU + GCC) and small
    # fine-tuning sets, so that pre-training matters (docs/overview.md).
    "small": SizePreset(
        {
            "coco": {"train": 2000, "restval": 300, "val": 300, "test": 300},
            "f30k": {"train": 1000, "val": 200, "test": 200},
            "vqa": {"train": 1500, "val": 400, "test": 200, "test-dev": 100},
            "nlvr2": {"train": 1500, "dev": 250, "test1": 250},
            "vg": {"train": 1500},
            "sbu": {"train": 3000},
            "gcc": {"train": 3000, "val": 300},
        }
    ),
}


def resolve_counts(
    size: str, datasets: Sequence[str], overrides: Mapping[str, Mapping[str, int]] | None
) -> dict[str, dict[str, int]]:
    """The preset's counts for ``datasets`` with ``overrides`` applied; every name and value checked."""
    if size not in SIZES:
        raise SynthError(f"unknown size {size!r}; choose one of {sorted(SIZES)}")
    counts = {d: dict(SIZES[size].counts[d]) for d in datasets}
    for dataset, splits in (overrides or {}).items():
        if dataset not in counts:
            known = "unknown dataset" if dataset not in SPLITS else "dataset not being generated"
            raise SynthError(f"count for {dataset!r}: {known} (generating {list(datasets)})")
        for split, n in splits.items():
            if split not in SPLITS[dataset]:
                raise SynthError(f"count {dataset}.{split}: unknown split; {dataset} has {list(SPLITS[dataset])}")
            if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_COUNT:
                raise SynthError(f"count {dataset}.{split}={n!r}: must be an integer in [1, {MAX_COUNT}]")
            counts[dataset][split] = n
    vqa = counts.get("vqa")
    if vqa and vqa["test-dev"] > vqa["test"]:
        raise SynthError(
            f"count vqa.test-dev={vqa['test-dev']} exceeds vqa.test={vqa['test']}: "
            "test-dev questions are a subset of the test images'"
        )
    return counts
