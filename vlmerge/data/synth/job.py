"""What one dataset writer gets (a ``Job``) and returns (``Written``), plus the seeded helpers they share."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from vlmerge.data.synth.render import encode, render
from vlmerge.data.synth.scenes import Scene
from vlmerge.runtime import Progress, atomic_write_bytes


class ImageSink:
    """Renders, encodes and writes one image at a time (nothing is kept in memory) and counts them."""

    def __init__(self, image_size: int, progress: Progress) -> None:
        self.image_size, self.progress = image_size, progress
        self._dirs: set[Path] = set()

    def save(self, path: Path, scene: Scene, fmt: str = "JPEG") -> None:
        if path.parent not in self._dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._dirs.add(path.parent)
        path.write_bytes(encode(render(scene, self.image_size), fmt))
        self.progress.update()


@dataclass(frozen=True)
class Job:
    """One dataset to write under ``root``: its per-split counts, the seed and the image sink."""

    seed: int
    dataset: str
    root: Path
    counts: Mapping[str, int]
    sink: ImageSink
    questions_per_image: int = 4
    captions_per_image: int = 5

    def rng(self, *names: str) -> random.Random:
        """An RNG for (seed, dataset, *names): a split's content does not depend on other splits' counts."""
        return random.Random("/".join((str(self.seed), self.dataset, *names)))

    def ids(self, split: str, start: int, span: int) -> list[int]:
        """``counts[split]`` distinct ids in ``[start, start + span)``, in random order."""
        return [start + i for i in self.rng(split, "ids").sample(range(span), self.counts[split])]

    def relative(self, path: Path) -> str:
        """``path`` as the final ``<dataset>/...`` name under the output folder (for synth.json)."""
        return f"{self.dataset}/{path.relative_to(self.root).as_posix()}"


@dataclass
class Written:
    """What a writer produced: per split, counts by unit; per split, files left out on purpose."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    missing: dict[str, list[str]] = field(default_factory=dict)


def balanced_labels(rng: random.Random, n: int) -> list[bool]:
    """``n`` booleans, half True (one more when n is odd, decided by ``rng``), shuffled."""
    labels = [True, False] * (n // 2) + ([rng.random() < 0.5] if n % 2 else [])
    rng.shuffle(labels)
    return labels


class BalancedCoin:
    """A coin that gives exactly as many heads as tails over every block of ``block`` tosses."""

    def __init__(self, rng: random.Random, block: int = 16) -> None:
        self._rng, self._block = rng, block
        self._left: list[bool] = []

    def __call__(self) -> bool:
        if not self._left:
            self._left = balanced_labels(self._rng, self._block)
        return self._left.pop()


def write_json(path: Path, obj: object) -> None:
    """Compact JSON like the published annotation files (insertion order, stable bytes)."""
    atomic_write_bytes(path, json.dumps(obj, ensure_ascii=False).encode("utf-8"))


def write_jsonl(path: Path, records: Iterable[dict]) -> None:
    """JSON lines, one record per line (NLVR2's format)."""
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    atomic_write_bytes(path, lines.encode("utf-8"))
