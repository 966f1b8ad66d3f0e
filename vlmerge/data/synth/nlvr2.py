"""NLVR2 in ViLT's DATA.md layout: PNG pairs in ``images/train/<n>/``, ``dev/`` and ``test1/``, JSON-lines
statements in ``nlvr2/data/<split>.json``, plus the ``balanced/`` and ``unbalanced/`` subsets of dev and test1.
"""

from __future__ import annotations

import random

from vlmerge.data.synth.job import Job, Written, balanced_labels, write_jsonl
from vlmerge.data.synth.phrases import sentence
from vlmerge.data.synth.scenes import Scene, sample_scene
from vlmerge.data.synth.statements import state

NLVR2_SPLITS = ("train", "dev", "test1")
SUBSET_SPLITS = ("dev", "test1")  # the splits with balanced/unbalanced subsets
TRAIN_DIRECTORIES = 100  # the published train images are spread over numbered sub-folders
_HOST = "https://nlvr2.synthetic.invalid"


def _plan(rng: random.Random, pairs: int) -> list[tuple[int, int, int]]:
    """(set, pair, sentences) for ``pairs`` image pairs: sets of 1-4 pairs, 1-2 sentences per pair."""
    plan: list[tuple[int, int, int]] = []
    set_id = rng.randrange(10)
    while len(plan) < pairs:
        for pair in range(min(rng.randint(1, 4), pairs - len(plan))):
            plan.append((set_id, pair, rng.randint(1, 2)))
        set_id += rng.randint(1, 3)
    return plan


def _line(prefix: str, k: int, text: str, label: bool, left: Scene, rng: random.Random) -> dict:
    """One statement with NLVR2's extra fields (URLs, writer, synset, query, validators' labels)."""
    obj = rng.choice(left.objects)
    label_text = "True" if label else "False"
    return {
        "validation": {f"r{rng.randrange(1000)}": label_text for _ in range(rng.randint(1, 3))},
        "sentence": text,
        "left_url": f"{_HOST}/{prefix}-img0.png",
        "writer": f"w{rng.randrange(200)}",
        "label": label_text,
        "right_url": f"{_HOST}/{prefix}-img1.png",
        "synset": f"{obj.shape}.n.01",
        "query": f"{obj.color} {obj.shape}s {rng.randint(1, 9)}",
        "identifier": f"{prefix}-{k}",
    }


def _split(job: Job, split: str) -> tuple[list[dict], int]:
    """Write one split's image pairs; returns its statement lines and number of pairs."""
    rng = job.rng(split)
    plan = _plan(rng, job.counts[split])
    labels = balanced_labels(job.rng(split, "labels"), sum(n for _, _, n in plan))
    lines = []
    for set_id, pair, sentences in plan:
        prefix = f"{split}-{set_id}-{pair}"
        directory = rng.randrange(TRAIN_DIRECTORIES)
        folder = job.root / "images" / "train" / str(directory) if split == "train" else job.root / split
        left, right = sample_scene(rng), sample_scene(rng)
        job.sink.save(folder / f"{prefix}-img0.png", left, "PNG")
        job.sink.save(folder / f"{prefix}-img1.png", right, "PNG")
        for k in range(sentences):
            statement = state(left, right, labels.pop(), rng)
            line = _line(prefix, k, sentence(statement.text, rng, period=0.9), statement.label, left, rng)
            lines.append(line | ({"directory": directory} if split == "train" else {}))
    return lines, len(plan)


def balanced_subsets(lines: list[dict]) -> dict[str, list[dict]]:
    """Split one split's lines into NLVR2's ``balanced`` and ``unbalanced`` subsets, keeping their order.

    Here an image pair is balanced when its statements carry both labels (the published subsets
    separate sentences seen with both true and false image pairs from the others); every line goes
    to exactly one subset.
    """
    labels: dict[str, set[str]] = {}
    for line in lines:
        labels.setdefault(line["identifier"].rsplit("-", 1)[0], set()).add(line["label"])
    subsets: dict[str, list[dict]] = {"balanced": [], "unbalanced": []}
    for line in lines:
        both = len(labels[line["identifier"].rsplit("-", 1)[0]]) == 2
        subsets["balanced" if both else "unbalanced"].append(line)
    return subsets


def write_nlvr2(job: Job) -> Written:
    """Labels are balanced per split; train pairs go to ``images/train/<directory>/``, named on each line,
    dev and test1 pairs to ``dev/`` and ``test1/`` at the root, as ViLT's DATA.md lays them out."""
    written = Written()
    for split in NLVR2_SPLITS:
        lines, pairs = _split(job, split)
        write_jsonl(job.root / "nlvr2" / "data" / f"{split}.json", lines)
        if split in SUBSET_SPLITS:
            for subset, subset_lines in balanced_subsets(lines).items():
                write_jsonl(job.root / "nlvr2" / "data" / subset / f"{subset}_{split}.json", subset_lines)
        true = sum(line["label"] == "True" for line in lines)
        written.counts[split] = {"pairs": pairs, "images": 2 * pairs, "sentences": len(lines), "true": true}
    return written
