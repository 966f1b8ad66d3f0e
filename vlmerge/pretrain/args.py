"""Command line of ``python -m vlmerge.pretrain``, validated once into a frozen :class:`PretrainRun`."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmerge.model import PRESETS, ModelConfig, ModelConfigError, Sharing, model_config
from vlmerge.pretrain.data import PRETRAIN_DATASETS, PretrainDataConfig
from vlmerge.train.errors import TrainConfigError
from vlmerge.pretrain.init_weights import InitSpec
from vlmerge.train.optim import OptimConfig
from vlmerge.pretrain.module import LossWeights, PretrainConfig
from vlmerge.train.trainer import PRECISIONS, STRATEGIES, TrainerConfig, accumulation_steps
from vlmerge.runtime import jsonable

_MODEL_KEYS = {f.name for f in dataclasses.fields(ModelConfig)} - {"preset", "vocab_size"}
_FLOAT_KEYS = ("drop_path", "embed_dropout")


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
    verbose: bool = False
    restart_stale: bool = False

    def resolved(self) -> dict[str, Any]:
        """Everything that determines the run, JSON-ready."""
        return {"out": str(self.out), "preset": self.preset, "sharing": self.sharing.value,
                "init": self.init.describe(), "model_overrides": dict(sorted(self.model_overrides.items())),
                "data": jsonable(dataclasses.asdict(self.data)), "module": jsonable(dataclasses.asdict(self.module)),
                "trainer": jsonable(dataclasses.asdict(self.trainer))}

    def identity(self, inputs: dict[str, str], train_files: dict[str, int]) -> dict[str, Any]:
        """What defines the computation (for ``work_dir.claim_work_dir``): not paths, workers or cadences.

        ``inputs``: name → sha256 of the init checkpoint and tokenizer; ``train_files``: name → bytes.
        """
        resolved = self.resolved()
        data = {k: resolved["data"][k] for k in ("datasets", "image_size", "batch_size", "seed", "mlm_prob",
                                                 "max_text_len", "augment")}
        return {"preset": self.preset, "sharing": self.sharing.value, "init": self.init.kind,
                "model_overrides": resolved["model_overrides"], "inputs": inputs, "train_files": train_files,
                "data": data, "module": resolved["module"],
                "trainer": {"max_steps": self.trainer.max_steps, "accumulate": self.trainer.accumulate,
                            "world_size": self.trainer.world_size}}


def _pairs(text: str, what: str) -> dict[str, str]:
    """``"a=1,b=2"`` → {"a": "1", "b": "2"}."""
    items = [item.partition("=") for item in text.split(",") if item]
    if any(not key or not sep or not value for key, sep, value in items):
        raise TrainConfigError(f"{what} {text!r}: expected KEY=VALUE[,KEY=VALUE…]")
    return {key.strip(): value.strip() for key, _, value in items}


def _number(text: str, what: str, kind: type = float) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise TrainConfigError(f"{what}: not a number: {text!r}") from None


def _loss_weights(text: str) -> LossWeights:
    given = _pairs(text, "--loss-weights")
    unknown = sorted(set(given) - {"mlm", "itc", "itm"})
    if unknown:
        raise TrainConfigError(f"--loss-weights: unknown term(s) {unknown}; terms are mlm, itc, itm")
    weights = {k: _number(v, f"--loss-weights {k}") for k, v in given.items()}
    if any(w < 0 for w in weights.values()) or not any(weights.get(k, 1.0) > 0 for k in ("mlm", "itc", "itm")):
        raise TrainConfigError(f"--loss-weights {text!r}: weights must be >= 0 and not all 0")
    return LossWeights(**weights)


def _model_overrides(text: str, image_size: int | None) -> dict[str, Any]:
    given = _pairs(text, "--model")
    unknown = sorted(set(given) - _MODEL_KEYS)
    if unknown:
        raise TrainConfigError(f"--model: unknown key(s) {unknown}; valid keys are {sorted(_MODEL_KEYS)} "
                               "(vocab_size comes from the tokenizer)")
    overrides = {k: _number(v, f"--model {k}", float if k in _FLOAT_KEYS else int) for k, v in given.items()}
    return overrides | ({"image_size": image_size} if image_size is not None else {})


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vlmerge.pretrain",
                                description="Pre-train a vision-language model with MLM + ITC + ITM.")
    p.add_argument("--arrow", required=True, type=Path, help="folder of the ViLT arrow tables")
    p.add_argument("--tokenizer", required=True, type=Path, help="tokenizer folder (or vocab.txt)")
    p.add_argument("--out", required=True, type=Path, help="final weights, PATH.safetensors (+ PATH.json)")
    p.add_argument("--work-dir", required=True, type=Path,
                   help="Lightning checkpoints and logs; reruns resume from here (not a Snakemake output)")
    p.add_argument("--preset", default="tiny", help=f"model size: {', '.join(PRESETS)}")
    p.add_argument("--sharing", default="shared", help=f"expert layout: {', '.join(s.value for s in Sharing)}")
    p.add_argument("--init", default="scratch", help="scratch, beit:PATH or seed:PATH (an MA checkpoint)")
    p.add_argument("--model", default="", help="model config overrides, e.g. num_layers=4,dim=64,drop_path=0")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps")
    p.add_argument("--warmup", type=int, help="warm-up steps (default: 1.25%% of --steps, the paper's ratio)")
    p.add_argument("--batch-size", type=int, default=32, help="samples per device and micro-batch")
    p.add_argument("--global-batch", type=int, help="samples per optimizer step (default: no accumulation)")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--grad-clip", type=float, help="clip the gradient norm to this value")
    p.add_argument("--image-size", type=int, help="training resolution in pixels (default: the preset's)")
    p.add_argument("--datasets", default=",".join(PRETRAIN_DATASETS), help="caption corpora to train on")
    p.add_argument("--devices", type=int, default=1, help="devices (processes) per node")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--strategy", default="ddp", help=f"{' or '.join(STRATEGIES)}")
    p.add_argument("--precision", default="auto", help=f"{', '.join(PRECISIONS)} (auto: bf16 on CUDA, 32 on CPU)")
    p.add_argument("--activation-checkpointing", action="store_true", help="fsdp: recompute block activations")
    p.add_argument("--ckpt-every", type=int, default=1000, help="steps between Lightning checkpoints")
    p.add_argument("--val-every", type=int, default=1000, help="steps between COCO-val validations (0: none)")
    p.add_argument("--val-batches", type=int, default=0, help="batches per validation (0: all of COCO val)")
    p.add_argument("--log-every", type=int, default=50, help="steps between logged training metrics")
    p.add_argument("--num-workers", type=int, default=2, help="data loading processes per device")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mlm-prob", type=float, default=0.25)
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                   help="random crop, flip and RandAugment of training images (--no-augment: plain resize)")
    p.add_argument("--loss-weights", default="mlm=1,itc=1,itm=1", help="weights of the loss terms")
    p.add_argument("--restart-stale-work-dir", action="store_true",
                   help="move a work directory of another run aside and start afresh (default: an error)")
    p.add_argument("--verbose", action="store_true")
    return p


def _validate(a: argparse.Namespace) -> PretrainRun:
    if a.preset not in PRESETS:
        raise TrainConfigError(f"unknown --preset {a.preset!r}; choose one of {sorted(PRESETS)}")
    sharing, init = Sharing.parse(a.sharing), InitSpec.parse(a.init)
    overrides = _model_overrides(a.model, a.image_size)
    try:
        config = model_config(a.preset, **overrides)
    except ModelConfigError as err:
        raise TrainConfigError(str(err)) from None
    if a.steps < 1 or a.batch_size < 1 or a.num_workers < 0 or not 0 < a.mlm_prob <= 1 or a.lr <= 0:
        raise TrainConfigError("need --steps >= 1, --batch-size >= 1, --num-workers >= 0, 0 < --mlm-prob <= 1 "
                               "and --lr > 0")
    warmup = round(0.0125 * a.steps) if a.warmup is None else a.warmup
    if not 0 <= warmup <= a.steps:
        raise TrainConfigError(f"--warmup {warmup} must be in [0, --steps {a.steps}]")
    global_batch = a.global_batch or a.batch_size * a.devices * a.nodes
    datasets = tuple(d for d in a.datasets.split(",") if d)
    data = PretrainDataConfig(a.arrow.resolve(), a.tokenizer.resolve(), datasets, config.image_size, a.batch_size,
                              a.num_workers, a.seed, a.mlm_prob, config.max_text_len, validate=a.val_every > 0,
                              augment=a.augment)
    weights = _loss_weights(a.loss_weights)
    module = PretrainConfig(a.steps, warmup, OptimConfig(lr=a.lr, weight_decay=a.weight_decay), weights, a.seed)
    trainer = TrainerConfig(a.work_dir.resolve(), a.steps, accumulation_steps(global_batch, a.batch_size, a.devices,
                            a.nodes), a.devices, a.nodes, a.strategy, a.precision, a.ckpt_every, a.val_every,
                            a.val_batches, a.log_every, a.grad_clip, not weights.uses_every_head,
                            a.activation_checkpointing)
    out = a.out.resolve()
    if out.suffix != ".safetensors":
        raise TrainConfigError(f"--out {out}: expected a .safetensors path")
    return PretrainRun(out, a.preset, sharing, init, overrides, data, module, trainer, a.verbose,
                       a.restart_stale_work_dir)


def parse_args(argv: list[str] | None) -> PretrainRun:
    """Parse and validate; raises TrainConfigError (a one-line message) on inconsistent values."""
    try:
        return _validate(_parser().parse_args(argv))
    except ModelConfigError as err:
        raise TrainConfigError(str(err)) from None
