"""Command line of ``python -m vlmerge.evaluate``, validated once into a frozen :class:`EvaluateConfig`."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vlmerge.tasks.errors import TaskError
from vlmerge.tasks.registry import TASKS

SUBMISSION_SPLITS = ("test-dev", "test")


@dataclass(frozen=True)
class EvaluateConfig:
    task: str
    ckpt: Path
    arrow: Path
    tokenizer: Path
    out: Path
    method: str
    batch_size: int = 32
    num_workers: int = 0
    image_size: int | None = None  # None: the checkpoint's
    device: str = "cpu"
    vqa_annotations: Path | None = None
    vqa_submission_split: str = "test-dev"
    verbose: bool = False

    def resolved(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in self.__dict__.items()}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vlmerge.evaluate",
                                description="Evaluate a checkpoint on VQAv2, COCO, Flickr30k or NLVR2.")
    p.add_argument("--task", required=True, choices=sorted(TASKS))
    p.add_argument("--ckpt", required=True, type=Path, help="checkpoint, PATH.safetensors (+ PATH.json)")
    p.add_argument("--arrow", required=True, type=Path, help="folder of the ViLT arrow tables")
    p.add_argument("--tokenizer", required=True, type=Path, help="tokenizer folder (or vocab.txt)")
    p.add_argument("--out", required=True, type=Path, help="result JSON, e.g. results/<task>/<method>.json")
    p.add_argument("--method", help="method name recorded in the result (default: the --out file name)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=2, help="data loading processes")
    p.add_argument("--image-size", type=int, help="evaluation resolution in pixels (default: the checkpoint's)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--vqa-annotations", type=Path,
                   help="official v2_mscoco_val2014_annotations.json: VQA accuracy from the ten human answers "
                        "(default: from the soft scores of the Arrow tables)")
    p.add_argument("--vqa-submission-split", default="test-dev", choices=SUBMISSION_SPLITS,
                   help="VQA questions of the evaluation-server file (test: all of test2015)")
    p.add_argument("--verbose", action="store_true")
    return p


def parse_args(argv: list[str] | None) -> EvaluateConfig:
    """Parse and validate; raises TaskError (a one-line message) on bad values."""
    a = _parser().parse_args(argv)
    if not a.ckpt.is_file():
        raise TaskError(f"--ckpt {a.ckpt} does not exist")
    if a.out.suffix != ".json":
        raise TaskError(f"--out {a.out}: expected a .json path")
    if a.batch_size < 1 or a.num_workers < 0 or (a.image_size is not None and a.image_size < 1):
        raise TaskError("need --batch-size >= 1, --num-workers >= 0, --image-size >= 1")
    if a.vqa_annotations is not None and not a.vqa_annotations.is_file():
        raise TaskError(f"--vqa-annotations {a.vqa_annotations} does not exist")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    try:
        torch.device(device)
    except RuntimeError as err:
        raise TaskError(f"--device {a.device!r}: {err}") from None
    return EvaluateConfig(a.task, a.ckpt.resolve(), a.arrow.resolve(), a.tokenizer.resolve(), a.out.resolve(),
                          a.method or a.out.stem, a.batch_size, a.num_workers, a.image_size, device,
                          a.vqa_annotations.resolve() if a.vqa_annotations else None, a.vqa_submission_split,
                          a.verbose)
