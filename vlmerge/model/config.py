"""Model sizes: a frozen config, the named presets and a stable hash of an architecture."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

from vlmerge.model.errors import ModelConfigError

# Stochastic depth of an image+text input below F, where the text and image halves run apart: one draw per
# half (per_modality) or one per sample for both halves, as one mask over upstream's concatenated sequence.
DropPathMode = Literal["per_modality", "per_sample"]
DROP_PATH_MODES: tuple[DropPathMode, ...] = ("per_modality", "per_sample")
# Fields added after checkpoints were written, with their defaults: hashed only when they leave them.
_LATER_FIELDS: dict[str, Any] = {"fusion_start_layer": None, "drop_path_mode": "per_modality"}


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the multiway transformer. ``preset`` names the row of PRESETS it started from."""

    preset: str
    num_layers: int
    dim: int
    num_heads: int
    mlp_dim: int
    image_size: int
    patch_size: int = 16
    max_text_len: int = 40
    vocab_size: int = 30522
    drop_path: float = 0.1
    embed_dropout: float = 0.1  # text embedding dropout (BERT's hidden_dropout_prob)
    init_std: float = 0.02  # std of from-scratch Linear/Embedding weights (BEiT, BERT)
    layer_scale: float = 0.1  # initial gamma_1/gamma_2 (BEiT's init_values for the base model)
    # F, the first fusion layer (vl-merging's ``vlffn_start_layer_index``); None: num_layers - 2. Stored as
    # None whenever it equals that default, so configs that leave it out keep their hash (see config_hash).
    fusion_start_layer: int | None = None
    drop_path_mode: DropPathMode = "per_modality"

    def __post_init__(self) -> None:
        if self.drop_path_mode not in DROP_PATH_MODES:
            raise ModelConfigError(f"drop_path_mode {self.drop_path_mode!r}: choose from {DROP_PATH_MODES}")
        if self.dim % self.num_heads:
            raise ModelConfigError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.image_size % self.patch_size:
            raise ModelConfigError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.num_layers < 3:
            raise ModelConfigError(f"num_layers {self.num_layers} < 3 leaves no unimodal layer before fusion")
        if self.max_text_len < 2:
            raise ModelConfigError(f"max_text_len {self.max_text_len} < 2")
        if self.init_std <= 0 or self.layer_scale <= 0:
            raise ModelConfigError(f"init_std {self.init_std} and layer_scale {self.layer_scale} must be > 0")
        if self.fusion_start_layer is not None:
            if not 1 <= self.fusion_start_layer < self.num_layers:
                raise ModelConfigError(
                    f"fusion_start_layer {self.fusion_start_layer} is outside [1, num_layers {self.num_layers}): "
                    "F needs a unimodal layer before it and a fusion layer from it on"
                )
            if self.fusion_start_layer == self.num_layers - 2:
                object.__setattr__(self, "fusion_start_layer", None)  # the default, spelled one way

    @property
    def fusion_start(self) -> int:
        """F: the first layer with a ``vl`` expert (vl-merging's ``vlffn_start_layer_index``)."""
        return self.num_layers - 2 if self.fusion_start_layer is None else self.fusion_start_layer

    @property
    def grid(self) -> int:
        """Patches per image side."""
        return self.image_size // self.patch_size

    def overrides(self) -> dict[str, Any]:
        """Fields that differ from this config's preset (what a sidecar records)."""
        base = PRESETS[self.preset]
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(base, f.name)
        }


PRESETS: dict[str, ModelConfig] = {
    # The embedded default and the tests: one synthetic-scene grid cell per 16-pixel patch. Trained from
    # scratch for a few hundred steps, so weights start at 1/sqrt(dim) with layer scale 1: with 0.02 and 0.1
    # at width 128 the image [CLS] barely depends on the image (mean pairwise 1 - cos 0.0014 at init) and
    # ITC/ITM sit at chance for the whole embedded run (measured; README, "The embedded default").
    "tiny": ModelConfig(
        "tiny",
        num_layers=4,
        dim=128,
        num_heads=4,
        mlp_dim=512,
        image_size=48,
        vocab_size=4096,
        init_std=128**-0.5,
        layer_scale=1.0,
    ),
    "base": ModelConfig("base", num_layers=12, dim=768, num_heads=12, mlp_dim=3072, image_size=224),
    # Upstream's large config starts fusion at layer 21 (vlffn_start_layer_index), not num_layers - 2 = 22.
    "large": ModelConfig(
        "large", num_layers=24, dim=1024, num_heads=16, mlp_dim=4096, image_size=224, fusion_start_layer=21
    ),
}


def model_config(preset: str, **overrides: Any) -> ModelConfig:
    """The preset's config with ``overrides`` applied (e.g. ``vocab_size`` from the tokenizer)."""
    if preset not in PRESETS:
        raise ModelConfigError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}")
    names = {f.name for f in dataclasses.fields(ModelConfig)} - {"preset"}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ModelConfigError(f"unknown model config key(s) {unknown}; valid keys are {sorted(names)}")
    return dataclasses.replace(PRESETS[preset], **overrides)


def config_hash(config: ModelConfig, sharing: str) -> str:
    """sha256 of every config field and the sharing layout (the identity recorded in a sidecar).

    ``fusion_start_layer`` and ``drop_path_mode`` enter only when they are not the default (None, F =
    num_layers - 2; per_modality), so configs and checkpoints from before the fields existed keep their hash.
    """
    fields = dataclasses.asdict(config)
    for name, default in _LATER_FIELDS.items():
        if fields[name] == default:
            del fields[name]
    record = {"config": fields, "sharing": sharing}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
