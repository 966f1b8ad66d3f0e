"""Stage ``evaluate``: score one checkpoint on a task's report splits, against a trivial baseline (docs/tasks.md).

    python -m vlmerge.evaluate --task vqa --ckpt vqa.safetensors --arrow data/arrow \\
        --tokenizer data/arrow/tokenizer --out results/vqa/regmean.json [--method regmean] [--config JSON]

The settings are the fields of :class:`~vlmerge.evaluate.config.EvaluateSettings` (``--config`` and one
flag each, a flag overriding its key); paths are flags of their own.

VQA: the VQA score and the official accuracy on rest_val, and the evaluation-server file of
test-dev beside the JSON (``<out stem>.submission-test-dev.json``); retrieval: image→text and
text→image Recall@1/5/10 on test; NLVR2: accuracy on dev and test-P. Each split also gets the
trivial baseline (VQA: the best constant training answer; retrieval: chance; NLVR2: the
majority class) and the margin over it. The JSON records the checkpoint's checksum and config
hashes, its lineage from the sidecars, and timings; it is written atomically. A pre-trained or
merged checkpoint with contrastive heads evaluates on retrieval as is (the zero-shot tier).
Bad input ends with a one-line error and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sized
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from vlmerge.evaluate.config import EvaluateSettings
from vlmerge.runtime import atomic_write_json, provenance
from vlmerge.runtime.outputs import check_outputs, with_sidecar
from vlmerge.runtime.settings import add_settings_arguments, settings_from_args
from vlmerge.runtime.stage import run_stage

# torch, the model and the tasks are imported by the functions that run (never by ``--help``); no Lightning.
if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from vlmerge.model import VLModel
    from vlmerge.model.checkpoint import CheckpointMeta
    from vlmerge.tasks.base import Rows, Task

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class EvaluateConfig:
    """One evaluation, resolved: the settings with the method name and device filled in, absolute paths."""

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


class Evaluation:
    """A loaded checkpoint and tokenizer, ready to score splits of one task."""

    def __init__(self, config: EvaluateConfig) -> None:
        from vlmerge.data.collate import BatchCollator
        from vlmerge.data.tokenizer import load_text_tokenizer
        from vlmerge.data.transforms import eval_transform
        from vlmerge.tasks.registry import get_task

        self.config, self.task = config, get_task(config.task)
        tokenizer = load_text_tokenizer(config.tokenizer)
        self.model, self.meta = _load(config, self.task, len(tokenizer))
        self.collate = BatchCollator(tokenizer, self.model.config.max_text_len)
        self.transform = eval_transform(self.model.config.image_size)

    def rows(self, split: str) -> tuple[tuple[Dataset, ...], list[Rows]]:
        from vlmerge.tasks.evaluation import evaluation_rows

        sides = self.task.eval_sides(self.config.arrow, split, self.transform)
        return sides, evaluation_rows(
            self.task, self.model, sides, self.collate, self.config.batch_size, self.config.num_workers
        )

    def score(self, split: str, humans: dict[int, list[str]] | None) -> dict[str, Any]:
        """Metrics, baseline and margin of ``split``."""
        from vlmerge.data.readers import VQADataset
        from vlmerge.tasks.vqa import VQATask, answer_vocabulary
        from vlmerge.tasks.vqa_eval import constant_accuracy, official_accuracy

        start = time.perf_counter()
        sides, rows = self.rows(split)
        metrics = self.task.metrics(rows, sides)
        baseline = self.task.baseline(self.config.arrow, self.task.train, sides)
        if isinstance(self.task, VQATask):
            vocabulary, dataset = answer_vocabulary(self.config.arrow), sides[0]
            assert isinstance(dataset, VQADataset)
            metrics["vqa_accuracy"] = official_accuracy(rows[0], dataset, vocabulary, humans)
            label = self.task.constant_answer(self.config.arrow, self.task.train)
            baseline.metrics["vqa_accuracy"] = constant_accuracy(label, vocabulary, dataset, humans)
        return {
            "metrics": metrics,
            "baseline": baseline.metrics,
            "baseline_kind": baseline.description,
            "margin": {k: v - baseline.metrics[k] for k, v in metrics.items()},
            "samples": [len(cast(Sized, side)) for side in sides],
            "seconds": round(time.perf_counter() - start, 3),
        }

    def write_submission(self, split: str) -> dict[str, Any]:
        """The VQA evaluation-server file of ``split`` beside the result JSON."""
        from vlmerge.tasks.vqa import answer_vocabulary
        from vlmerge.tasks.vqa_eval import submission

        sides, rows = self.rows(split)
        entries = submission(rows[0], sides[0], answer_vocabulary(self.config.arrow))  # type: ignore[arg-type]
        path = self.config.out.with_name(f"{self.config.out.stem}.submission-{split}.json")
        atomic_write_json(path, entries)
        log.info("wrote %s (%d questions)", path, len(entries))
        return {"split": split, "file": path.name, "questions": len(entries)}


def _load(config: EvaluateConfig, task: Task, vocab_size: int) -> tuple[VLModel, CheckpointMeta]:
    """The checkpoint as saved (every head kept), checked to carry the task's heads."""
    from vlmerge.model.checkpoint import load_model
    from vlmerge.tasks.errors import TaskError
    from vlmerge.tasks.model_init import require_heads, resize

    model, meta = load_model(config.ckpt)
    require_heads(model.heads, task.heads(config.arrow), config.ckpt, task.name)
    if vocab_size != model.config.vocab_size:
        raise TaskError(
            f"tokenizer {config.tokenizer} has {vocab_size} tokens but {config.ckpt} "
            f"was trained with {model.config.vocab_size}"
        )
    trained_for = meta.extra.get("task")
    if trained_for not in (None, task.name):
        log.warning("%s was fine-tuned for %s, evaluated on %s", config.ckpt, trained_for, task.name)
    if config.image_size is not None and config.image_size != model.config.image_size:
        resize(model, config.image_size)
    return model.to(config.device), meta


def run(config: EvaluateConfig) -> dict[str, Any]:
    from vlmerge.model import config_hash
    from vlmerge.tasks.lineage import lineage, weights_sha256
    from vlmerge.tasks.vqa import VQATask
    from vlmerge.tasks.vqa_eval import read_human_answers

    submission = config.out.with_name(f"{config.out.stem}.submission-{config.vqa_submission_split}.json")
    check_outputs(
        [("--out", config.out), ("--out's submission file", submission)],
        [*with_sidecar("--ckpt", config.ckpt), ("--vqa-annotations", config.vqa_annotations)],
    )
    start = time.perf_counter()
    record = provenance("evaluate", config.resolved())
    evaluation = Evaluation(config)
    task, meta = evaluation.task, evaluation.meta
    humans = read_human_answers(config.vqa_annotations) if config.vqa_annotations else None
    result: dict[str, Any] = {
        "task": task.name,
        "method": config.method,
        "checkpoint": {
            "file": config.ckpt.name,
            "sha256": weights_sha256(config.ckpt),
            "model_config_hash": config_hash(meta.config, meta.sharing.value),
            "finetune_config_hash": meta.extra.get("finetune_config_hash"),
            "trained_for": meta.extra.get("task"),
            "sharing": meta.sharing.value,
            "image_size": evaluation.model.config.image_size,
            "selection": _selection(meta.extra),
        },
        "lineage": lineage(config.ckpt, meta),
        "splits": {split: evaluation.score(split, humans) for split in task.test},
    }
    if isinstance(task, VQATask):
        result["vqa"] = {
            "accuracy_source": "annotations" if humans else "soft scores",
            "submission": evaluation.write_submission(config.vqa_submission_split),
        }
    result["timings"] = {"total_s": round(time.perf_counter() - start, 3)}
    result["provenance"] = record
    atomic_write_json(config.out, result)
    log.info("wrote %s", config.out)
    return result


def _selection(extra: dict[str, Any]) -> dict[str, Any] | None:
    selection = extra.get("selection")
    return None if selection is None else {k: selection[k] for k in ("metric", "value", "step", "split")}


def _parser() -> argparse.ArgumentParser:
    """Paths of this invocation, then every field of :class:`EvaluateSettings` as ``--config`` + flags."""
    p = argparse.ArgumentParser(
        prog="python -m vlmerge.evaluate", description="Evaluate a checkpoint on VQAv2, COCO, Flickr30k or NLVR2."
    )
    p.add_argument("--ckpt", required=True, type=Path, help="checkpoint, PATH.safetensors (+ PATH.json)")
    p.add_argument("--arrow", required=True, type=Path, help="folder of the ViLT arrow tables")
    p.add_argument("--tokenizer", required=True, type=Path, help="tokenizer folder (or vocab.txt)")
    p.add_argument("--out", required=True, type=Path, help="result JSON, e.g. results/<task>/<method>.json")
    p.add_argument(
        "--vqa-annotations",
        type=Path,
        help="official v2_mscoco_val2014_annotations.json: VQA accuracy from the ten human answers "
        "(default: from the soft scores of the Arrow tables)",
    )
    p.add_argument("--verbose", action="store_true")
    add_settings_arguments(p, EvaluateSettings)
    return p


def _resolve(args: argparse.Namespace) -> EvaluateConfig:
    """The evaluation the parsed command line asks for; raises an InputError (a one-line message)."""
    from vlmerge.tasks.errors import TaskError
    from vlmerge.tasks.evaluation import resolve_device

    settings = settings_from_args(args, EvaluateSettings)
    if not args.ckpt.is_file():
        raise TaskError(f"--ckpt {args.ckpt} does not exist")
    if args.out.suffix != ".json":
        raise TaskError(f"--out {args.out}: expected a .json path")
    if args.vqa_annotations is not None and not args.vqa_annotations.is_file():
        raise TaskError(f"--vqa-annotations {args.vqa_annotations} does not exist")
    return EvaluateConfig(
        task=settings.task,
        ckpt=args.ckpt.resolve(),
        arrow=args.arrow.resolve(),
        tokenizer=args.tokenizer.resolve(),
        out=args.out.resolve(),
        method=settings.method or args.out.stem,
        batch_size=settings.batch_size,
        num_workers=settings.num_workers,
        image_size=settings.image_size,
        device=resolve_device(settings.device),
        vqa_annotations=args.vqa_annotations.resolve() if args.vqa_annotations else None,
        vqa_submission_split=settings.vqa_submission_split,
        verbose=args.verbose,
    )


def main(argv: list[str] | None = None) -> int:
    """Exit code 0 when the result is written, 2 for bad input."""
    args = _parser().parse_args(argv)
    return run_stage("evaluate", lambda: run(_resolve(args)), verbose=args.verbose)


if __name__ == "__main__":
    raise SystemExit(main())
