"""Settings of stage ``pretrain``: every hyper-parameter once, with its default, range and help.

- :class:`PretrainRecipe`: what every pre-training run of an experiment shares (optimiser, data, precision …);
- :class:`PretrainSettings`: one run, what ``python -m vlmerge.pretrain`` reads from ``--config`` and its flags;
- :class:`PretrainSection`: the ``pretrain:`` block of ``config.yaml``, which turns a run name into
  that run's :class:`PretrainSettings` (:meth:`PretrainSection.settings_for`).

Plain pydantic and torch-free names only, so that ``snakemake -n`` validates the settings without
importing torch. Checks that need files or torch (an init checkpoint exists, the global batch divides
evenly, the model sizes fit together) run in the stage itself (:mod:`vlmerge.pretrain.run`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from vlmerge.catalog.names import PRETRAIN_DATASETS, Sharing
from vlmerge.errors import ConfigError
from vlmerge.runtime.settings import Settings, build
from vlmerge.train.launch import LaunchSettings
from vlmerge.train.settings import Geometry, TrainingRecipe

# vlmerge.data.collate.MaskingMode and vlmerge.model.config.DropPathMode (kept equal by a test).
MlmMasking = Literal["bernoulli_words", "upstream_fixed_budget"]
DropPathMode = Literal["per_modality", "per_sample"]
# The rows of vlmerge.model.config.PRESETS and the ModelConfig fields a run may override with their types
# (tests keep both equal to the model's; ``preset`` and ``vocab_size`` are not overrides).
Preset = Literal["tiny", "base", "large"]
MODEL_KEYS: dict[str, Any] = {  # a type, or the Literal of drop_path_mode
    "num_layers": int,
    "dim": int,
    "num_heads": int,
    "mlp_dim": int,
    "image_size": int,
    "patch_size": int,
    "max_text_len": int,
    "drop_path": float,
    "embed_dropout": float,
    "init_std": float,
    "layer_scale": float,
    "fusion_start_layer": int,
    "drop_path_mode": DropPathMode,  # set by the recipe's drop_path_mode, not ``model``
}
# Warm-up steps per optimizer step of the paper (1,250 of 100k): the default of a run without ``warmup``.
WARMUP_FRACTION = 0.0125

LossTerm = Literal["mlm", "itc", "itm"]
# vlmerge.objectives.ITCGather (kept equal by a test; the objectives import torch).
ItcGather = Literal["exact", "upstream"]
NonNegative = Annotated[float, Field(ge=0)]
UNIT_WEIGHTS: dict[LossTerm, float] = {"mlm": 1.0, "itc": 1.0, "itm": 1.0}


def _checked_init(text: str, kinds: tuple[str, ...]) -> str:
    """``scratch`` or ``<kind>:PATH`` for a kind of ``kinds`` (whether PATH exists is the stage's check)."""
    kind, sep, path = text.partition(":")
    if text != "scratch" and (kind not in kinds or not sep or not path):
        raise ValueError(f"expected scratch or {' or '.join(f'{k}:PATH' for k in kinds)}")
    return text


class PretrainRecipe(TrainingRecipe):
    """The hyper-parameters every pre-training run of an experiment shares (defaults: the stage's own)."""

    datasets: tuple[str, ...] = Field(
        PRETRAIN_DATASETS, min_length=1, description=f"caption corpora to train on, of {', '.join(PRETRAIN_DATASETS)}"
    )
    image_size: int | None = Field(None, gt=0, description="training resolution in pixels (null: the preset's)")
    batch_size: int = Field(32, ge=1, description="samples per device and micro-batch")
    global_batch: int | None = Field(
        None, ge=1, description="samples per optimizer step, reached by gradient accumulation (null: no accumulation)"
    )
    lr: float = Field(2e-4, gt=0, description="peak learning rate of AdamW")
    mlm_prob: float = Field(0.25, gt=0, le=1, description="share of the words masked for MLM")
    activation_checkpointing: bool = Field(False, description="fsdp: recompute block activations")
    ckpt_every: int = Field(1000, ge=1, description="steps between resumable Lightning checkpoints")
    val_every: int = Field(1000, ge=0, description="steps between COCO-val validations (0: none)")
    loss_weights: dict[LossTerm, NonNegative] = Field(
        UNIT_WEIGHTS, description="weights of the loss terms mlm, itc, itm (>= 0, not all 0; a term not given weighs 1)"
    )
    # Where the released code departs from the default (profiles/slurm/paper.yaml sets the upstream values).
    itc_gather: ItcGather = Field(
        "exact",
        description="ITC negatives from other ranks: exact (gathered with gradient) or upstream (gathered without "
        "gradient, the full-batch loss on every rank: the contrastive gradient is 1/world of the exact one)",
    )
    logit_scale_max: float | None = Field(
        100.0, gt=0, description="cap of the ITC temperature exp(logit_scale) (null: no cap, as upstream)"
    )
    decay_norm_and_scale: bool = Field(
        False,
        description="decay by upstream's name rule (only names with bias/norm.weight/LayerNorm.weight/norm1/norm2 "
        "patterns exempt: gamma_*, cls_token, logit scales, per-expert norm weights decayed)",
    )
    coco_restval: bool = Field(
        True, description="COCO captions of Karpathy train + restval (false: train only, as upstream)"
    )
    dedup_captions: bool = Field(
        False, description="drop an image's repeated captions, keeping the first (as upstream; hits VG most)"
    )
    mlm_masking: MlmMasking = Field(
        "bernoulli_words",
        description="MLM masking: bernoulli_words (each real word with probability mlm_prob, at least one per "
        "text) or upstream_fixed_budget (the released code's whole-word draw of round(mlm_prob x padded length) "
        "tokens among every position but [CLS]/[SEP], pads included, pads then left unmasked)",
    )
    pad_text_to_max: bool = Field(
        False, description="pad every text to max_text_len (as upstream) instead of to the batch's longest"
    )
    drop_path_mode: DropPathMode = Field(
        "per_modality",
        description="stochastic depth of image+text input below F: per_modality (the text and image halves "
        "drop independently) or per_sample (one draw per sample for both, as upstream); kept in the checkpoint",
    )

    @field_validator("datasets")
    @classmethod
    def _known_datasets(cls, datasets: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(datasets) - set(PRETRAIN_DATASETS))
        if unknown:
            raise ValueError(f"unknown corpora {unknown}; choose from {list(PRETRAIN_DATASETS)}")
        return datasets

    @field_validator("loss_weights")
    @classmethod
    def _some_loss(cls, weights: dict[LossTerm, float]) -> dict[LossTerm, float]:
        """Every term, 1 unless given; a run must train something."""
        full = dict(UNIT_WEIGHTS)
        full.update(weights)
        if not any(full.values()):
            raise ValueError("the weights must not all be 0")
        return full


class PretrainSettings(PretrainRecipe, Geometry):
    """One pre-training run: the recipe plus the model, its start, its length and the process geometry."""

    preset: Preset = Field("tiny", description="model size")
    sharing: Sharing = Field(
        "shared",
        validate_default=True,  # the enum, shown in --help by its value
        description="expert layout: " + ", ".join(s.value for s in Sharing),
    )
    init: str = Field(
        "scratch",
        description="start: scratch, beit:PATH (BEiT weights) or seed:PATH (an MA "
        "checkpoint, copied into every expert)",
    )
    model: dict[str, int | float] = Field(
        {},
        description="ModelConfig overrides, e.g. num_layers=4,dim=64,drop_path=0 (vocab_size comes from the tokenizer)",
    )
    steps: int = Field(1000, ge=1, description="optimizer steps")
    warmup: int | None = Field(
        None, ge=0, description=f"warm-up steps (null: {WARMUP_FRACTION} x steps, the paper's ratio)"
    )

    @field_validator("init")
    @classmethod
    def _init_form(cls, init: str) -> str:
        return _checked_init(init, ("beit", "seed"))

    @field_validator("model")
    @classmethod
    def _model_overrides(cls, model: dict[str, int | float]) -> dict[str, int | float]:
        """Known ModelConfig fields only, each of its field's type (a whole number where it is an int)."""
        unknown = sorted(set(model) - set(MODEL_KEYS))
        if unknown:
            raise ValueError(f"unknown key(s) {unknown}; valid keys are {sorted(MODEL_KEYS)}")
        if "drop_path_mode" in model:
            raise ValueError("drop_path_mode is a setting of its own (drop_path_mode), not a model size")
        fractional = sorted(k for k, v in model.items() if MODEL_KEYS[k] is int and not float(v).is_integer())
        if fractional:
            raise ValueError(f"{fractional} must be whole numbers")
        return {k: MODEL_KEYS[k](v) for k, v in model.items()}

    @field_validator("warmup")
    @classmethod
    def _warmup_within_steps(cls, warmup: int | None, info: ValidationInfo) -> int | None:
        steps = info.data.get("steps")  # absent when steps itself is invalid (reported on its own)
        if warmup is not None and steps is not None and warmup > steps:
            raise ValueError(f"{warmup} must be in [0, steps {steps}]")
        return warmup

    @property
    def warmup_steps(self) -> int:
        """``warmup``, or the paper's ratio of ``steps``."""
        return round(WARMUP_FRACTION * self.steps) if self.warmup is None else self.warmup


class RunLength(Settings):
    """Steps and warm-up steps of one of the paper's runs."""

    steps: int = Field(ge=1, description="optimizer steps")
    warmup: int = Field(ge=0, description="warm-up steps")

    @field_validator("warmup")
    @classmethod
    def _warmup_within_steps(cls, warmup: int, info: ValidationInfo) -> int:
        steps = info.data.get("steps")
        if steps is not None and warmup > steps:
            raise ValueError(f"{warmup} must be in [0, steps {steps}]")
        return warmup


class MSRunLength(RunLength):
    """The MS run: its length and its expert layout (any but shared)."""

    sharing: Sharing = Field(Sharing.MODALITY_SPECIFIC, description="expert layout of the MS model")

    @field_validator("sharing")
    @classmethod
    def _not_shared(cls, sharing: Sharing) -> Sharing:
        if sharing is Sharing.SHARED:
            raise ValueError("an MS run splits some part per expert: not shared")
        return sharing


class PretrainRuns(Settings):
    """The paper's three runs (docs/overview.md): the MA seed, MS from the seed, and the MA baseline."""

    seed: RunLength
    ms: MSRunLength
    ma: RunLength


class PretrainSection(PretrainRecipe):
    """The ``pretrain:`` block of ``config.yaml``: the shared recipe, the start, the runs and their geometry."""

    init: str = Field("scratch", description="start of the seed and MA-baseline runs: scratch or beit:PATH")
    runs: PretrainRuns
    launch: LaunchSettings

    @field_validator("init")
    @classmethod
    def _init_form(cls, init: str) -> str:
        return _checked_init(init, ("beit",))

    def run_length(self, run: str) -> RunLength:
        """Steps and warm-up of ``seed``, ``seed<N>`` (the seed run's warm-up ratio) or ``ma``."""
        if run == "ma":
            return self.runs.ma
        if run == "seed":
            return self.runs.seed
        match = re.fullmatch(r"seed([0-9]+)", run)
        if match is None:
            raise ConfigError(f"pretrain: unknown run {run!r}; runs are seed, seed<N>, ma and ms_<sharing>")
        steps, seed = int(match[1]), self.runs.seed
        return RunLength(steps=steps, warmup=round(seed.warmup * steps / seed.steps))

    def settings_for(
        self, run: str, preset: str, model: Mapping[str, Any], seed_checkpoint: str | None
    ) -> PretrainSettings:
        """The settings of ``run``: ``seed[<N>]`` and ``ma`` start from ``init``, ``ms_<sharing>[@seed<N>]``
        from ``seed_checkpoint``; ``preset`` and ``model`` (ModelConfig overrides) come from the model section.
        """
        if run.startswith("ms_"):
            if seed_checkpoint is None:
                raise ConfigError(f"pretrain: run {run!r} starts from a seed checkpoint; none given")
            length: RunLength = self.runs.ms
            sharing, init = run.removeprefix("ms_").partition("@")[0], f"seed:{seed_checkpoint}"
        else:
            length, sharing, init = self.run_length(run), Sharing.SHARED.value, self.init
        recipe = self.model_dump(include=set(PretrainRecipe.model_fields))
        return build(
            PretrainSettings,
            recipe
            | {
                "preset": preset,
                "sharing": sharing,
                "init": init,
                "model": dict(model),
                "steps": length.steps,
                "warmup": length.warmup,
            },
            where="pretrain",
        )


__all__ = ["MODEL_KEYS", "PretrainRecipe", "PretrainSection", "PretrainSettings", "RunLength"]
