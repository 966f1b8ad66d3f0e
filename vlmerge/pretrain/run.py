"""One pre-training run: validated settings and paths resolved into the configs the training code takes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmerge.model import Sharing, model_config
from vlmerge.pretrain.config import PretrainSettings
from vlmerge.pretrain.data import PretrainDataConfig
from vlmerge.pretrain.init_weights import InitSpec
from vlmerge.pretrain.module import LossWeights, PretrainConfig
from vlmerge.runtime import jsonable
from vlmerge.train.errors import TrainConfigError
from vlmerge.train.optim import OptimConfig, SpeedOptions
from vlmerge.train.trainer import TrainerConfig, accumulation_steps

# Settings added after runs were recorded, with their defaults: part of a run's identity only when not default.
_LATER_DATA: dict[str, Any] = {
    "coco_restval": True,
    "dedup_captions": False,
    "mlm_masking": "bernoulli_words",
    "pad_text_to_max": False,
}
_LATER_MODULE: dict[str, Any] = {"itc_gather": "exact", "logit_scale_max": 100.0}


@dataclass(frozen=True)
class RunPaths:
    """Where a run reads and writes: not settings, so never part of ``--config``."""

    arrow: Path
    tokenizer: Path
    out: Path
    work_dir: Path


@dataclass(frozen=True)
class PretrainRun:
    out: Path
    preset: str
    sharing: Sharing
    init: InitSpec
    model_overrides: dict[str, Any]
    data: PretrainDataConfig
    module: PretrainConfig
    trainer: TrainerConfig
    restart_stale: bool = False
    # How the step runs, not what it computes: recorded, never part of the identity.
    speed: SpeedOptions = field(default_factory=SpeedOptions)

    def resolved(self) -> dict[str, Any]:
        """Everything that determines the run, JSON-ready."""
        return {
            "out": str(self.out),
            "preset": self.preset,
            "sharing": self.sharing.value,
            "init": self.init.describe(),
            "model_overrides": dict(sorted(self.model_overrides.items())),
            "data": jsonable(dataclasses.asdict(self.data)),
            "module": jsonable(dataclasses.asdict(self.module)),
            "trainer": jsonable(dataclasses.asdict(self.trainer)),
            "speed": jsonable(dataclasses.asdict(self.speed)),
        }

    def identity(self, inputs: dict[str, str], train_files: dict[str, int]) -> dict[str, Any]:
        """What defines the computation (for ``work_dir.claim_work_dir``): not paths, workers or cadences.

        ``inputs``: name → sha256 of the init checkpoint and tokenizer; ``train_files``: name → bytes.
        """
        resolved = self.resolved()
        data = {
            k: resolved["data"][k]
            for k in ("datasets", "image_size", "batch_size", "seed", "mlm_prob", "max_text_len", "augment")
        }
        # Options added later count only where they leave their defaults, so work directories of earlier
        # runs (which never set them) keep their identity.
        data |= {k: resolved["data"][k] for k, default in _LATER_DATA.items() if resolved["data"][k] != default}
        module = {k: v for k, v in resolved["module"].items() if k not in _LATER_MODULE or v != _LATER_MODULE[k]}
        module["optim"] = {k: v for k, v in module["optim"].items() if k != "decay_norm_and_scale" or v}
        return {
            "preset": self.preset,
            "sharing": self.sharing.value,
            "init": self.init.kind,
            "model_overrides": resolved["model_overrides"],
            "inputs": inputs,
            "train_files": train_files,
            "data": data,
            "module": module,
            "trainer": {
                "max_steps": self.trainer.max_steps,
                "accumulate": self.trainer.accumulate,
                "world_size": self.trainer.world_size,
            },
        }


def model_overrides(settings: PretrainSettings) -> dict[str, Any]:
    """``settings.model`` with the training resolution, which overrides the preset's image size, and a
    stochastic-depth mode other than the default (the checkpoint keeps it, so fine-tuning inherits it)."""
    size = {"image_size": settings.image_size} if settings.image_size is not None else {}
    mode = {"drop_path_mode": settings.drop_path_mode} if settings.drop_path_mode != "per_modality" else {}
    return dict(settings.model) | size | mode


def trainer_config(settings: PretrainSettings, work_dir: Path, weights: LossWeights) -> TrainerConfig:
    """The Trainer of ``settings``; accumulation fills the gap to ``global_batch`` (which must divide evenly)."""
    world = settings.batch_size * settings.devices * settings.nodes
    accumulate = accumulation_steps(
        global_batch=settings.global_batch or world,
        per_device=settings.batch_size,
        devices=settings.devices,
        num_nodes=settings.nodes,
    )
    return TrainerConfig(
        work_dir=work_dir,
        max_steps=settings.steps,
        accumulate=accumulate,
        devices=settings.devices,
        num_nodes=settings.nodes,
        strategy=settings.strategy,
        precision=settings.precision,
        ckpt_every=settings.ckpt_every,
        val_every=settings.val_every,
        val_batches=settings.val_batches,
        log_every=settings.log_every,
        grad_clip=settings.grad_clip,
        # a zero weight leaves a head without a gradient, which DDP must then look for
        find_unused_parameters=not weights.uses_every_head,
        activation_checkpointing=settings.activation_checkpointing,
    )


def resolve_run(settings: PretrainSettings, paths: RunPaths, restart_stale: bool = False) -> PretrainRun:
    """The run of ``settings``; raises an InputError (one line) where the settings do not fit together.

    The settings are valid one by one; here they meet the model presets, the init file and the geometry.
    """
    out = paths.out.resolve()
    if out.suffix != ".safetensors":
        raise TrainConfigError(f"--out {out}: expected a .safetensors path")
    init = InitSpec.parse(settings.init)
    overrides = model_overrides(settings)
    config = model_config(settings.preset, **overrides)  # ModelConfigError on sizes that do not fit together
    data = PretrainDataConfig(
        arrow=paths.arrow.resolve(),
        tokenizer=paths.tokenizer.resolve(),
        datasets=settings.datasets,
        image_size=config.image_size,
        batch_size=settings.batch_size,
        num_workers=settings.num_workers,
        seed=settings.seed,
        mlm_prob=settings.mlm_prob,
        max_text_len=config.max_text_len,
        validate=settings.val_every > 0,
        augment=settings.augment,
        coco_restval=settings.coco_restval,
        dedup_captions=settings.dedup_captions,
        mlm_masking=settings.mlm_masking,
        pad_text_to_max=settings.pad_text_to_max,
    )
    weights = LossWeights(**settings.loss_weights)
    module = PretrainConfig(
        max_steps=settings.steps,
        warmup_steps=settings.warmup_steps,
        weights=weights,
        optim=OptimConfig(
            lr=settings.lr, weight_decay=settings.weight_decay, decay_norm_and_scale=settings.decay_norm_and_scale
        ),
        seed=settings.seed,
        itc_gather=settings.itc_gather,
        logit_scale_max=settings.logit_scale_max,
    )
    return PretrainRun(
        out=out,
        preset=settings.preset,
        sharing=settings.sharing,
        init=init,
        model_overrides=overrides,
        data=data,
        module=module,
        trainer=trainer_config(settings, paths.work_dir.resolve(), weights),
        restart_stale=restart_stale,
        speed=SpeedOptions.from_recipe(settings),
    )
