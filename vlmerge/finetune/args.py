"""Command line of ``python -m vlmerge.finetune``, validated once into a frozen :class:`FinetuneRun`.

Defaults are the task's paper settings (:mod:`vlmerge.tasks.registry`). Validation reads the
size of the training split, so that ``--epochs`` becomes a step count here, once.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vlmerge.data.transforms import eval_transform
from vlmerge.tasks.base import Task
from vlmerge.finetune.datamodule import FinetuneDataConfig
from vlmerge.tasks.errors import TaskError
from vlmerge.finetune.run import FinetuneRun
from vlmerge.tasks.registry import TASKS, get_task
from vlmerge.tasks.retrieval import RetrievalTask
from vlmerge.tasks.settings import SplitOptions
from vlmerge.finetune.module import FinetuneConfig
from vlmerge.train.optim import OptimConfig
from vlmerge.train.trainer import PRECISIONS, STRATEGIES, TrainerConfig, accumulation_steps

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vlmerge.finetune",
                                description="Fine-tune a checkpoint on VQAv2, COCO, Flickr30k or NLVR2.")
    p.add_argument("--task", required=True, choices=sorted(TASKS))
    p.add_argument("--init", required=True, type=Path, help="checkpoint to start from, PATH.safetensors (+ PATH.json)")
    p.add_argument("--arrow", required=True, type=Path, help="folder of the ViLT arrow tables")
    p.add_argument("--tokenizer", required=True, type=Path, help="tokenizer folder (or vocab.txt)")
    p.add_argument("--out", required=True, type=Path, help="selected weights, PATH.safetensors (+ PATH.json)")
    p.add_argument("--work-dir", required=True, type=Path, help="Lightning checkpoints, logs and candidate "
                   "best weights; reruns resume from here (not a Snakemake output)")
    schedule = p.add_mutually_exclusive_group()
    schedule.add_argument("--epochs", type=int, help="passes over the training split (default: the task's)")
    schedule.add_argument("--steps", type=int, help="optimizer steps instead of epochs")
    p.add_argument("--batch-size", type=int, help="per-device micro-batch (default: global batch / devices)")
    p.add_argument("--global-batch", type=int, help="samples per optimizer step (default: the task's)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the task's)")
    p.add_argument("--warmup-ratio", type=float, default=0.1, help="fraction of the steps spent warming up")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--grad-clip", type=float, help="clip the gradient norm to this value")
    p.add_argument("--image-size", type=int, help="fine-tuning resolution in pixels (default: the task's)")
    p.add_argument("--drop-path", type=float, help="stochastic depth (default: the task's, else the checkpoint's)")
    p.add_argument("--head-lr-mult", type=float, help="learning-rate factor of the task head (default: the task's)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                   help="random crop, flip and RandAugment of training images (--no-augment: plain resize)")
    p.add_argument("--horizontal-flip", action=argparse.BooleanOptionalAction,
                   help="random horizontal flips (default: the task's; off where text names left and right)")
    p.add_argument("--devices", type=int, default=1, help="devices (processes) per node")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--strategy", default="ddp", help=f"{' or '.join(STRATEGIES)}")
    p.add_argument("--precision", default="auto", help=f"{', '.join(PRECISIONS)} (auto: bf16 on CUDA, 32 on CPU)")
    p.add_argument("--num-workers", type=int, default=2, help="data loading processes per device")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-every", type=int, help="optimizer steps between validations (default: one epoch)")
    p.add_argument("--val-batches", type=int, default=0, help="batches per validation and side (0: the whole split)")
    p.add_argument("--ckpt-every", type=int, help="steps between Lightning checkpoints (default: --val-every)")
    p.add_argument("--log-every", type=int, default=50, help="steps between logged training metrics")
    p.add_argument("--select-on", default="val", choices=("val", "test"),
                   help="split that selects the checkpoint; 'test' reproduces an upstream quirk")
    p.add_argument("--f30k-val-is-test", action="store_true", help="upstream quirk: Flickr30k validation on test")
    p.add_argument("--coco-train-restval", action=argparse.BooleanOptionalAction, default=True,
                   help="train COCO on train + restval (upstream left restval out)")
    p.add_argument("--vqa-trainable-val", action="store_true", help="VQA: also train on trainable_val")
    p.add_argument("--restart-stale-work-dir", action="store_true",
                   help="move a work directory of another run aside and start afresh (default: an error)")
    p.add_argument("--verbose", action="store_true")
    return p


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _check_numbers(a: argparse.Namespace) -> None:
    positive = {"--epochs": a.epochs, "--steps": a.steps, "--batch-size": a.batch_size,
                "--global-batch": a.global_batch, "--image-size": a.image_size, "--val-every": a.val_every,
                "--ckpt-every": a.ckpt_every, "--lr": a.lr, "--head-lr-mult": a.head_lr_mult}
    if bad := {k: v for k, v in positive.items() if v is not None and v <= 0}:
        raise TaskError(f"must be positive: {bad}")
    if not 0 <= a.warmup_ratio <= 1 or a.num_workers < 0 or a.val_batches < 0:
        raise TaskError("need 0 <= --warmup-ratio <= 1, --num-workers >= 0, --val-batches >= 0")
    if a.drop_path is not None and not 0 <= a.drop_path < 1:
        raise TaskError(f"--drop-path {a.drop_path} must be in [0, 1)")


def _train_samples(task: Task, arrow: Path, splits: tuple[str, ...]) -> int:
    return len(task.train_dataset(arrow, splits, eval_transform(32)))  # type: ignore[arg-type]


def _batches(a: argparse.Namespace, default_global: int) -> tuple[int, int, int]:
    """(per-device batch, global batch, accumulation steps)."""
    world = a.devices * a.nodes
    global_batch = _or(a.global_batch, default_global)
    batch_size = _or(a.batch_size, global_batch // world if global_batch % world == 0 else 0)
    if batch_size == 0:
        raise TaskError(f"global batch {global_batch} does not split over {world} devices; give --batch-size")
    return batch_size, global_batch, accumulation_steps(global_batch, batch_size, a.devices, a.nodes)


def _validate(a: argparse.Namespace) -> FinetuneRun:
    _check_numbers(a)
    task, settings = get_task(a.task), get_task(a.task).settings
    if not a.init.is_file():
        raise TaskError(f"--init checkpoint {a.init} does not exist")
    if a.out.suffix != ".safetensors":
        raise TaskError(f"--out {a.out}: expected a .safetensors path")
    options = SplitOptions(a.select_on, a.f30k_val_is_test, a.coco_train_restval, a.vqa_trainable_val)
    if a.val_batches and isinstance(task, RetrievalTask):
        raise TaskError("--val-batches: retrieval ranks whole splits, so it must be 0")
    batch_size, global_batch, accumulate = _batches(a, settings.global_batch)
    world = a.devices * a.nodes
    arrow, train_splits = a.arrow.resolve(), task.train_splits(options)
    samples = _train_samples(task, arrow, train_splits)
    steps_per_epoch = samples // (world * batch_size) // accumulate
    if steps_per_epoch == 0:
        raise TaskError(f"{samples} training samples of {train_splits} cannot fill one global batch of {global_batch}")
    max_steps = _or(a.steps, _or(a.epochs, settings.epochs) * steps_per_epoch)
    val_every = min(_or(a.val_every, steps_per_epoch), max_steps)
    image_size = _or(a.image_size, settings.image_size)
    data = FinetuneDataConfig(arrow, a.tokenizer.resolve(), train_splits, task.selection_split(options), image_size,
                              batch_size, a.num_workers, a.seed, _or(a.horizontal_flip, settings.horizontal_flip),
                              augment=a.augment)
    head_lr_mult = _or(a.head_lr_mult, settings.head_lr_mult)
    multipliers = tuple((m, head_lr_mult) for m in task.head_modules) if head_lr_mult != 1 else ()
    optim = OptimConfig(lr=_or(a.lr, settings.lr), weight_decay=a.weight_decay, lr_multipliers=multipliers)
    module = FinetuneConfig(max_steps, round(a.warmup_ratio * max_steps), optim, a.seed)
    # Fine-tuning leaves parameters without gradients (experts and heads the task does not route through).
    trainer = TrainerConfig(a.work_dir.resolve(), max_steps, accumulate, a.devices, a.nodes, a.strategy, a.precision,
                            _or(a.ckpt_every, val_every), val_every, a.val_batches, a.log_every, a.grad_clip,
                            find_unused_parameters=True)
    return FinetuneRun(task.name, a.init.resolve(), a.out.resolve(), image_size, _or(a.drop_path, settings.drop_path),
                       options, data, module, trainer, samples, steps_per_epoch, a.verbose,
                       a.restart_stale_work_dir)


def parse_args(argv: list[str] | None) -> FinetuneRun:
    """Parse and validate; raises TaskError/TrainConfigError/ReaderError (one-line messages) on bad input."""
    return _validate(_parser().parse_args(argv))
