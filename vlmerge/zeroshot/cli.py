"""Stage ``zeroshot``: image↔text retrieval straight from a checkpoint's contrastive heads, before fine-tuning.

    python -m vlmerge.zeroshot --ckpt results/merged/interpolation.safetensors --arrow-dir data/arrow \\
        --tokenizer data/arrow/tokenizer --out results/zeroshot/interpolation.json [--config JSON]
    python -m vlmerge.zeroshot --ckpt coco=results/merged/coco/regmean.safetensors \\
        --ckpt f30k=results/merged/f30k/regmean.safetensors ... --out results/zeroshot/regmean.json

For each retrieval dataset (``datasets``: COCO and Flickr30k) every test image goes through the image-only
path of the model and the ITC image projection, every test caption through the text-only path and the ITC
text projection (:func:`vlmerge.tasks.retrieval.image_features` / ``text_features``: term (a) of the
pre-training ITC loss); the cosine similarities of all pairs give image→text (``tr_r*``) and text→image
(``ir_r*``) Recall@1/5/10 with ties counted against the positive (:func:`vlmerge.metrics.retrieval_recall`),
beside chance recall. ``--ckpt PATH`` scores one checkpoint on every dataset; ``--ckpt DATASET=PATH`` gives
a dataset its own (a merge made per task), and the JSON records which checkpoint gave each number.

Plain torch inference (no Lightning) on any device, batched, in bf16 autocast on CUDA. A checkpoint without
the contrastive heads (e.g. one fine-tuned for VQA) is refused. The JSON is written atomically; bad input
ends with a one-line error and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
from collections.abc import Sized
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from vlmerge.catalog.names import RETRIEVAL_TASKS
from vlmerge.runtime import atomic_write_json, provenance
from vlmerge.runtime.outputs import check_outputs, with_sidecar
from vlmerge.runtime.settings import add_settings_arguments, settings_from_args
from vlmerge.runtime.stage import run_stage
from vlmerge.zeroshot.config import ZeroshotSettings

# torch, the model and the tasks are imported by the functions that run (never by ``--help``).
if TYPE_CHECKING:
    from vlmerge.data.collate import BatchCollator
    from vlmerge.model import VLModel
    from vlmerge.model.checkpoint import CheckpointMeta

log = logging.getLogger(__name__)
ITC_HEADS = "itc_image_proj, itc_text_proj, logit_scale"


@dataclass(frozen=True, kw_only=True)
class ZeroshotConfig:
    """One zero-shot run, resolved: the checkpoint of each dataset, absolute paths, a concrete device."""

    checkpoints: dict[str, Path]  # dataset → checkpoint, in the order scored
    arrow: Path
    tokenizer: Path
    out: Path
    method: str
    batch_size: int = 64
    num_workers: int = 0
    image_size: int | None = None  # None: the checkpoint's
    device: str = "cpu"
    verbose: bool = False

    def resolved(self) -> dict[str, Any]:
        return {
            "checkpoints": {d: str(p) for d, p in self.checkpoints.items()},
            **{k: str(v) if isinstance(v, Path) else v for k, v in self.__dict__.items() if k != "checkpoints"},
        }


def check_itc_heads(path: Path, meta: CheckpointMeta) -> None:
    """Refuse a checkpoint without the contrastive heads: a fresh projection would rank at random."""
    from vlmerge.tasks.errors import TaskError

    if not meta.heads.itc:
        trained_for = meta.extra.get("task")
        what = f"it was fine-tuned for {trained_for}" if trained_for else f"it has {meta.heads}"
        raise TaskError(
            f"{path} has no contrastive (ITC) heads ({ITC_HEADS}); {what}. "
            "Zero-shot retrieval needs a pre-trained, MS or merged checkpoint"
        )


def load_checked(path: Path, vocab_size: int, image_size: int | None, device: str) -> tuple[VLModel, CheckpointMeta]:
    """The checkpoint as saved, on ``device`` in eval mode, checked to carry the ITC heads and the tokenizer's
    vocabulary; ``image_size`` (when given) resamples the image part of the relative positions."""
    from vlmerge.model.checkpoint import load_model, read_meta
    from vlmerge.tasks.errors import TaskError
    from vlmerge.tasks.model_init import resize

    check_itc_heads(path, read_meta(path))  # before reading the weights
    model, meta = load_model(path)
    if vocab_size != model.config.vocab_size:
        raise TaskError(f"the tokenizer has {vocab_size} tokens but {path} was trained with {model.config.vocab_size}")
    if meta.extra.get("task") is not None:
        log.warning("%s was fine-tuned for %s: its scores are not zero-shot", path, meta.extra["task"])
    if image_size is not None and image_size != model.config.image_size:
        resize(model, image_size)
    return model.to(device).eval(), meta


def autocast(device: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA; full precision elsewhere."""
    import torch

    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Checkpoints:
    """Each distinct checkpoint loaded once, the last one kept (the datasets usually share one)."""

    def __init__(self, config: ZeroshotConfig, vocab_size: int) -> None:
        self.config, self.vocab_size = config, vocab_size
        self._path: Path | None = None
        self._loaded: tuple[VLModel, CheckpointMeta] | None = None

    def get(self, path: Path) -> tuple[VLModel, CheckpointMeta]:
        if self._path != path or self._loaded is None:
            self._loaded = None  # free the previous model first
            self._loaded = load_checked(path, self.vocab_size, self.config.image_size, self.config.device)
            self._path = path
        return self._loaded


def score_dataset(
    dataset: str, model: VLModel, config: ZeroshotConfig, collate: BatchCollator
) -> tuple[str, dict[str, Any]]:
    """Recall@K of ``model`` on ``dataset``'s test split, its chance baseline and margin: (split, record)."""
    from vlmerge.data.transforms import eval_transform
    from vlmerge.tasks.evaluation import evaluation_rows
    from vlmerge.tasks.registry import get_task

    start = time.perf_counter()
    task = get_task(dataset)
    split = task.test[-1]
    sides = task.eval_sides(config.arrow, split, eval_transform(model.config.image_size))
    with autocast(config.device):
        rows = evaluation_rows(task, model, sides, collate, config.batch_size, config.num_workers)
    metrics = task.metrics(rows, sides)
    baseline = task.baseline(config.arrow, task.train, sides)
    return split, {
        "metrics": metrics,
        "baseline": baseline.metrics,
        "baseline_kind": baseline.description,
        "margin": {k: v - baseline.metrics[k] for k, v in metrics.items()},
        "samples": [len(cast(Sized, side)) for side in sides],
        "seconds": round(time.perf_counter() - start, 3),
    }


def checkpoint_record(path: Path, model: VLModel, meta: CheckpointMeta) -> dict[str, Any]:
    from vlmerge.model import config_hash
    from vlmerge.tasks.lineage import weights_sha256

    return {
        "path": str(path),
        "file": path.name,
        "sha256": weights_sha256(path),
        "model_config_hash": config_hash(meta.config, meta.sharing.value),
        "sharing": meta.sharing.value,
        "image_size": model.config.image_size,
        "trained_for": meta.extra.get("task"),
    }


def run(config: ZeroshotConfig) -> dict[str, Any]:
    from vlmerge.data.collate import BatchCollator
    from vlmerge.data.tokenizer import load_text_tokenizer
    from vlmerge.tasks.lineage import lineage

    check_outputs(
        [("--out", config.out)], [w for path in set(config.checkpoints.values()) for w in with_sidecar("--ckpt", path)]
    )
    start = time.perf_counter()
    record = provenance("zeroshot", config.resolved())
    tokenizer = load_text_tokenizer(config.tokenizer)
    checkpoints = Checkpoints(config, len(tokenizer))
    datasets: dict[str, Any] = {}
    for dataset, path in config.checkpoints.items():
        model, meta = checkpoints.get(path)
        collate = BatchCollator(tokenizer, model.config.max_text_len)
        split, scores = score_dataset(dataset, model, config, collate)
        datasets[dataset] = {
            "split": split,
            "checkpoint": checkpoint_record(path, model, meta),
            "lineage": lineage(path, meta),
            **scores,
        }
        recalls = scores["metrics"]
        log.info(
            "%s %s: mean recall %.4f (IR@1 %.4f, TR@1 %.4f; chance %.4f) from %s in %.1fs",
            dataset,
            split,
            recalls["mean_recall"],
            recalls["ir_r1"],
            recalls["tr_r1"],
            scores["baseline"]["mean_recall"],
            path.name,
            scores["seconds"],
        )
    result = {
        "stage": "zeroshot",
        "method": config.method,
        "datasets": datasets,
        "timings": {"total_s": round(time.perf_counter() - start, 3)},
        "provenance": record,
    }
    atomic_write_json(config.out, result)
    log.info("wrote %s", config.out)
    return result


# --------------------------------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    """Paths of this invocation, then every field of :class:`ZeroshotSettings` as ``--config`` + flags."""
    p = argparse.ArgumentParser(
        prog="python -m vlmerge.zeroshot",
        description="Zero-shot image-text retrieval Recall@K from a checkpoint's contrastive heads.",
    )
    p.add_argument(
        "--ckpt",
        required=True,
        action="append",
        metavar="[DATASET=]PATH",
        help="checkpoint PATH.safetensors (+ PATH.json) for every dataset, or DATASET=PATH for one dataset "
        "(repeatable; a dataset's own checkpoint wins)",
    )
    p.add_argument("--arrow-dir", "--arrow", dest="arrow", required=True, type=Path, help="folder of the Arrow tables")
    p.add_argument("--tokenizer", required=True, type=Path, help="tokenizer folder (or vocab.txt)")
    p.add_argument("--out", required=True, type=Path, help="result JSON, e.g. results/zeroshot/<method>.json")
    p.add_argument("--verbose", action="store_true")
    add_settings_arguments(p, ZeroshotSettings)
    return p


def parse_checkpoints(values: list[str], datasets: tuple[str, ...]) -> dict[str, Path]:
    """``--ckpt`` values → the checkpoint of each of ``datasets`` (in their order), each checked to exist."""
    from vlmerge.tasks.errors import TaskError

    default: Path | None = None
    own: dict[str, Path] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if sep and name in RETRIEVAL_TASKS:
            if name in own:
                raise TaskError(f"--ckpt {value}: {name} already has {own[name]}")
            own[name] = Path(rest)
        elif default is not None:
            raise TaskError(f"--ckpt {value}: a second checkpoint for every dataset (the first is {default})")
        else:
            default = Path(value)
    extra = sorted(set(own) - set(datasets))
    if extra:
        raise TaskError(f"--ckpt names {extra}, which are not among the datasets scored {list(datasets)}")
    checkpoints = {}
    for dataset in datasets:
        path = own.get(dataset, default)
        if path is None:
            raise TaskError(f"no --ckpt for {dataset}: give --ckpt PATH or --ckpt {dataset}=PATH")
        if not path.is_file():
            raise TaskError(f"--ckpt {path} does not exist")
        checkpoints[dataset] = path.resolve()
    return checkpoints


def _resolve(args: argparse.Namespace) -> ZeroshotConfig:
    """The run the parsed command line asks for; raises an InputError (a one-line message)."""
    from vlmerge.tasks.errors import TaskError
    from vlmerge.tasks.evaluation import resolve_device

    settings = settings_from_args(args, ZeroshotSettings)
    if args.out.suffix != ".json":
        raise TaskError(f"--out {args.out}: expected a .json path")
    return ZeroshotConfig(
        checkpoints=parse_checkpoints(args.ckpt, settings.datasets),
        arrow=args.arrow.resolve(),
        tokenizer=args.tokenizer.resolve(),
        out=args.out.resolve(),
        method=settings.method or args.out.stem,
        batch_size=settings.batch_size,
        num_workers=settings.num_workers,
        image_size=settings.image_size,
        device=resolve_device(settings.device),
        verbose=args.verbose,
    )


def main(argv: list[str] | None = None) -> int:
    """Exit code 0 when the result is written, 2 for bad input."""
    args = _parser().parse_args(argv)
    return run_stage("zeroshot", lambda: run(_resolve(args)), verbose=args.verbose)


if __name__ == "__main__":
    raise SystemExit(main())
