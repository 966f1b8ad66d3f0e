"""A fine-tuning run resolved against its task and data: everything ``python -m vlmerge.finetune`` does, as
one frozen value.

:func:`resolve_run` fills the task's paper settings (:mod:`vlmerge.tasks.registry`) where the validated
:class:`~vlmerge.finetune.config.FinetuneSettings` leave a key ``None``, and checks what needs the task's
code or its data: the batch split over the devices and the size of the training split, which turns
``epochs`` into a step count here, once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from vlmerge.data.transforms import eval_transform
from vlmerge.finetune.config import FinetuneSettings
from vlmerge.finetune.datamodule import FinetuneDataConfig
from vlmerge.finetune.module import FinetuneConfig
from vlmerge.runtime import jsonable
from vlmerge.tasks.base import Task
from vlmerge.tasks.errors import TaskError
from vlmerge.tasks.registry import get_task
from vlmerge.tasks.retrieval import RetrievalTask
from vlmerge.tasks.settings import SplitOptions, TaskSettings
from vlmerge.train.optim import OptimConfig, SpeedOptions
from vlmerge.train.trainer import TrainerConfig, accumulation_steps

T = TypeVar("T")
_MACHINE_KEYS = (
    "speed",
    "out",
    "work_dir",
    "arrow",
    "tokenizer",
    "init",
    "devices",
    "num_nodes",
    "num_workers",
    "verbose",
    "restart_stale",
)
# Keys added after runs were recorded: left out of the hash at their default, so those runs keep theirs.
_NEW_DEFAULTS: dict[str, Any] = {"embed_dropout": None, "f30k_train_val": False}


@dataclass(frozen=True, kw_only=True)
class FinetunePaths:
    """The files of one run: flags of their own, never settings (they do not change what is computed)."""

    init: Path  # checkpoint to start from, PATH.safetensors (+ PATH.json)
    arrow: Path  # folder of the ViLT arrow tables
    tokenizer: Path  # tokenizer folder (or vocab.txt)
    out: Path  # selected weights, PATH.safetensors (+ PATH.json)
    work_dir: Path  # Lightning checkpoints, logs and candidate best weights


@dataclass(frozen=True, kw_only=True)
class FinetuneRun:
    task: str
    init: Path
    out: Path
    image_size: int
    drop_path: float | None
    options: SplitOptions
    data: FinetuneDataConfig
    module: FinetuneConfig
    trainer: TrainerConfig
    train_samples: int
    steps_per_epoch: int
    embed_dropout: float | None = None
    verbose: bool = False
    restart_stale: bool = False
    # How the step runs, not what it computes: recorded, never part of the config hash.
    speed: SpeedOptions = field(default_factory=SpeedOptions)

    def resolved(self) -> dict[str, Any]:
        """Everything that determines the run, JSON-ready."""
        return jsonable(dataclasses.asdict(self))

    def config_hash(self) -> str:
        """sha256 of the resolved settings without paths and machine layout (same recipe, same hash)."""
        record = _without(self.resolved(), _MACHINE_KEYS, _NEW_DEFAULTS)
        return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def _without(value: Any, keys: tuple[str, ...], defaults: dict[str, Any]) -> Any:
    """``value`` less ``keys`` and the keys ``defaults`` holds at their default (at any depth)."""
    if isinstance(value, dict):
        return {
            k: _without(v, keys, defaults)
            for k, v in value.items()
            if k not in keys and not (k in defaults and v == defaults[k])
        }
    return value


def _or(value: T | None, default: T) -> T:
    """A setting, or the task's paper value where it is ``None``."""
    return default if value is None else value


def _check_paths(paths: FinetunePaths) -> None:
    if not paths.init.is_file():
        raise TaskError(f"--init checkpoint {paths.init} does not exist")
    if paths.out.suffix != ".safetensors":
        raise TaskError(f"--out {paths.out}: expected a .safetensors path")


def _split_options(settings: FinetuneSettings) -> SplitOptions:
    return SplitOptions(
        select_on=settings.select_on,
        f30k_val_is_test=settings.f30k_val_is_test,
        coco_train_restval=settings.coco_train_restval,
        vqa_trainable_val=settings.vqa_trainable_val,
        f30k_train_val=settings.f30k_train_val,
    )


def _batches(settings: FinetuneSettings, paper: TaskSettings) -> tuple[int, int, int]:
    """(per-device batch, global batch, accumulation steps)."""
    world = settings.devices * settings.nodes
    global_batch = _or(settings.global_batch, paper.global_batch)
    batch_size = _or(settings.batch_size, global_batch // world if global_batch % world == 0 else 0)
    if batch_size == 0:
        raise TaskError(f"global batch {global_batch} does not split over {world} devices; give batch_size")
    return batch_size, global_batch, accumulation_steps(global_batch, batch_size, settings.devices, settings.nodes)


def _train_samples(task: Task, arrow: Path, splits: tuple[str, ...]) -> int:
    return len(task.train_dataset(arrow, splits, eval_transform(32)))  # type: ignore[arg-type]


def _optim(settings: FinetuneSettings, task: Task) -> OptimConfig:
    """AdamW settings; the task head learns ``head_lr_mult`` times faster."""
    head_lr_mult = _or(settings.head_lr_mult, task.settings.head_lr_mult)
    multipliers = tuple((m, head_lr_mult) for m in task.head_modules) if head_lr_mult != 1 else ()
    return OptimConfig(
        lr=_or(settings.lr, task.settings.lr), weight_decay=settings.weight_decay, lr_multipliers=multipliers
    )


def resolve_run(
    settings: FinetuneSettings, paths: FinetunePaths, *, verbose: bool = False, restart_stale: bool = False
) -> FinetuneRun:
    """The run ``settings`` ask for; raises TaskError/TrainConfigError/ReaderError (one-line messages)."""
    task = get_task(settings.task)
    paper = task.settings
    _check_paths(paths)
    options = _split_options(settings)
    if settings.val_batches and isinstance(task, RetrievalTask):
        raise TaskError("val_batches: retrieval ranks whole splits, so it must be 0")
    batch_size, global_batch, accumulate = _batches(settings, paper)
    arrow, train_splits = paths.arrow.resolve(), task.train_splits(options)
    samples = _train_samples(task, arrow, train_splits)
    steps_per_epoch = samples // (settings.devices * settings.nodes * batch_size) // accumulate
    if steps_per_epoch == 0:
        raise TaskError(f"{samples} training samples of {train_splits} cannot fill one global batch of {global_batch}")
    max_steps = _or(settings.steps, _or(settings.epochs, paper.epochs) * steps_per_epoch)
    val_every = min(_or(settings.val_every, steps_per_epoch), max_steps)
    image_size = _or(settings.image_size, paper.image_size)
    data = FinetuneDataConfig(
        arrow=arrow,
        tokenizer=paths.tokenizer.resolve(),
        train_splits=train_splits,
        select_split=task.selection_split(options),
        image_size=image_size,
        batch_size=batch_size,
        num_workers=settings.num_workers,
        seed=settings.seed,
        horizontal_flip=_or(settings.horizontal_flip, paper.horizontal_flip),
        augment=settings.augment,
    )
    module = FinetuneConfig(
        max_steps=max_steps,
        warmup_steps=round(settings.warmup_ratio * max_steps),
        optim=_optim(settings, task),
        seed=settings.seed,
    )
    # Fine-tuning leaves parameters without gradients (experts and heads the task does not route through).
    trainer = TrainerConfig(
        work_dir=paths.work_dir.resolve(),
        max_steps=max_steps,
        accumulate=accumulate,
        devices=settings.devices,
        num_nodes=settings.nodes,
        strategy=settings.strategy,
        precision=settings.precision,
        ckpt_every=_or(settings.ckpt_every, val_every),
        val_every=val_every,
        val_batches=settings.val_batches,
        log_every=settings.log_every,
        grad_clip=settings.grad_clip,
        find_unused_parameters=True,
    )
    return FinetuneRun(
        task=task.name,
        init=paths.init.resolve(),
        out=paths.out.resolve(),
        image_size=image_size,
        drop_path=_or(settings.drop_path, paper.drop_path),
        embed_dropout=_or(settings.embed_dropout, paper.embed_dropout),
        options=options,
        data=data,
        module=module,
        trainer=trainer,
        train_samples=samples,
        steps_per_epoch=steps_per_epoch,
        verbose=verbose,
        restart_stale=restart_stale,
        speed=SpeedOptions.from_recipe(settings),
    )
