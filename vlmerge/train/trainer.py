"""The Lightning Trainer of a training stage, built from a frozen :class:`TrainerConfig`.

The work directory (``default_root_dir``) holds Lightning's checkpoints (``checkpoints/``, every
``ckpt_every`` steps plus ``last.ckpt``), SLURM requeue checkpoints (``hpc_ckpt_<n>.ckpt``) and
the CSV/TensorBoard logs. It is scratch space that must survive a failed or requeued job, so under
Snakemake it must not be a declared output (Snakemake deletes the outputs of failed jobs).

Under SLURM, Lightning detects ``srun`` and uses ``SLURMEnvironment``: submit with
``--signal=SIGUSR1@90`` and :class:`~vlmerge.train.requeue.SlurmRequeue` writes ``hpc_ckpt_<n>.ckpt``
at the next step 90 s before the time limit and requeues the job; :func:`resume_checkpoint` then
picks it up (Lightning's own auto-requeue can deadlock DDP, see that module). ``devices`` must
equal ``--ntasks-per-node`` and ``num_nodes`` ``--nodes``.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, Strategy

from vlmerge.model.transformer import MultiwayBlock
from vlmerge.train.errors import TrainConfigError
from vlmerge.train.progress import StepProgress
from vlmerge.train.requeue import SlurmRequeue, TerminationCheckpoint

log = logging.getLogger(__name__)

# Lightning gives its "lightning" logger a console handler of its own on import, and its records also reach
# the root handler each stage sets up (vlmerge.runtime.logs): without this every Lightning line would be
# printed twice. Imported lazily, after that set-up, so the handler is dropped here.
for _handler in list(logging.getLogger("lightning").handlers):
    if isinstance(_handler, logging.StreamHandler):
        logging.getLogger("lightning").removeHandler(_handler)

STRATEGIES = ("ddp", "fsdp")
PRECISIONS = ("auto", "32", "bf16", "16")


@dataclass(frozen=True)
class TrainerConfig:
    work_dir: Path
    max_steps: int
    accumulate: int = 1
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "ddp"
    precision: str = "auto"
    ckpt_every: int = 1000
    val_every: int = 0  # optimizer steps between validations; 0 = never
    val_batches: int = 0  # batches per validation; 0 = the whole validation set
    log_every: int = 50
    grad_clip: float | None = None
    find_unused_parameters: bool = False
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES or self.precision not in PRECISIONS:
            raise TrainConfigError(
                f"strategy {self.strategy!r} / precision {self.precision!r}: choose from {STRATEGIES} / {PRECISIONS}"
            )
        counts = {
            "max_steps": self.max_steps,
            "accumulate": self.accumulate,
            "devices": self.devices,
            "num_nodes": self.num_nodes,
            "ckpt_every": self.ckpt_every,
            "log_every": self.log_every,
        }
        if bad := {k: v for k, v in counts.items() if v < 1}:
            raise TrainConfigError(f"must be at least 1: {bad}")
        if self.val_every < 0 or self.val_batches < 0:
            raise TrainConfigError("val_every and val_batches must be >= 0")

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes


def accumulation_steps(global_batch: int, per_device: int, devices: int, num_nodes: int) -> int:
    """Gradient accumulation so that per_device × devices × nodes × accumulation = global_batch."""
    per_step = per_device * devices * num_nodes
    if global_batch % per_step:
        raise TrainConfigError(
            f"global batch {global_batch} is not a multiple of per-device batch {per_device} × "
            f"{devices} device(s) × {num_nodes} node(s) = {per_step}"
        )
    return global_batch // per_step


def _strategy(config: TrainerConfig) -> Strategy | str:
    if config.strategy == "fsdp":
        if not torch.cuda.is_available():
            raise TrainConfigError(
                "--strategy fsdp needs CUDA GPUs: Lightning's FSDPStrategy refuses "
                "accelerator='cpu'; use --strategy ddp on CPU"
            )
        return FSDPStrategy(
            auto_wrap_policy={MultiwayBlock},
            state_dict_type="full",
            activation_checkpointing_policy={MultiwayBlock} if config.activation_checkpointing else None,
        )
    if config.world_size == 1:
        return "auto"
    # Every parameter gets a gradient each pre-training step (image-only, text-only and pair
    # forwards reach every expert), so DDP's unused-parameter search is only needed when a loss
    # term is switched off. The model's only buffers are constant position indices: no broadcast.
    return DDPStrategy(find_unused_parameters=config.find_unused_parameters, broadcast_buffers=False)


PrecisionFlag = Literal["32-true", "bf16-mixed", "16-mixed"]  # the Trainer(precision=...) values used here
_PRECISION_FLAGS: dict[str, PrecisionFlag] = {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"}


def precision_flag(precision: str, cuda: bool) -> PrecisionFlag:
    """The Trainer's precision for a ``precision`` setting on a machine with (or without) CUDA.

    ``16`` is fp16 AMP (Lightning's gradient scaler; the attention logits stay in fp32, see
    ``vlmerge.model.layers.attention_fp32_logits``); CPUs lack fp16 AMP, so it needs CUDA.
    """
    if precision == "auto":
        return "bf16-mixed" if cuda else "32-true"
    if precision == "16" and not cuda:
        raise TrainConfigError("precision 16 (fp16 AMP) needs CUDA; use 32 or bf16 on CPU")
    return _PRECISION_FLAGS[precision]


def _precision(config: TrainerConfig) -> PrecisionFlag:
    return precision_flag(config.precision, torch.cuda.is_available())


def _loggers(work_dir: Path) -> list[Logger]:
    loggers: list[Logger] = [CSVLogger(work_dir, name="logs")]
    if importlib.util.find_spec("tensorboard") is not None:
        loggers.append(TensorBoardLogger(work_dir, name="tensorboard"))
    return loggers


def build_trainer(config: TrainerConfig) -> pl.Trainer:
    """A Trainer for ``config``; resume with ``fit(..., ckpt_path=resume_checkpoint(config.work_dir))``."""
    slurm = SLURMEnvironment.detect()
    requeue = [SlurmRequeue(config.work_dir)] if slurm else []
    checkpoints = ModelCheckpoint(
        dirpath=config.work_dir / "checkpoints",
        filename="step{step}",
        auto_insert_metric_name=False,
        every_n_train_steps=config.ckpt_every,
        save_top_k=1,
        save_last=True,
    )
    validate = config.val_every > 0
    return pl.Trainer(
        accelerator="cuda" if config.strategy == "fsdp" else "auto",
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy=_strategy(config),
        precision=_precision(config),
        # Built in place so that the list takes Lightning's plugin type (a list[SLURMEnvironment] would not).
        plugins=[SLURMEnvironment(auto_requeue=False)] if slurm else [],
        max_steps=config.max_steps,
        accumulate_grad_batches=config.accumulate,
        gradient_clip_val=config.grad_clip,
        default_root_dir=config.work_dir,
        logger=_loggers(config.work_dir),
        callbacks=[
            checkpoints,
            StepProgress(),
            LearningRateMonitor(logging_interval="step"),
            TerminationCheckpoint(config.work_dir),
            *requeue,
        ],
        log_every_n_steps=config.log_every,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,  # the data module shards and resumes its own sampler
        num_sanity_val_steps=0,
        check_val_every_n_epoch=None,
        # The training loader is endless (one Lightning epoch), so validation is counted in batches.
        val_check_interval=config.val_every * config.accumulate if validate else None,
        limit_val_batches=(config.val_batches or 1.0) if validate else 0,
    )


def resume_checkpoint(work_dir: Path) -> Path | None:
    """The newest of ``checkpoints/last.ckpt`` and SLURM's ``hpc_ckpt_<n>.ckpt`` in ``work_dir``, if any."""
    candidates = [work_dir / "checkpoints" / "last.ckpt", *work_dir.glob("hpc_ckpt_*.ckpt")]
    existing = [p for p in candidates if p.is_file()]
    if not existing:
        return None
    newest = max(existing, key=lambda p: p.stat().st_mtime_ns)
    log.info("resuming from %s", newest)
    return newest
