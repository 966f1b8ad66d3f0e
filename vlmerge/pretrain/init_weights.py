"""The model a training stage starts from: from scratch, from BEiT, or from a seed (MA) checkpoint.

``seed:PATH`` is the paper's recipe (docs/overview.md, docs/model.md): an MA checkpoint whose shared block weights
are copied into every expert (``expand_experts``), so that all experts start identical (W⁰).
Weights are loaded strictly, before any Trainer exists.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmerge.model import Heads, ModelConfig, Sharing, VLModel, expand_experts, model_config
from vlmerge.model.checkpoint import load_state, strict_load
from vlmerge.model.import_beit import init_from_beit
from vlmerge.train.errors import TrainConfigError

log = logging.getLogger(__name__)

INIT_KINDS = ("scratch", "beit", "seed")
# Fields a seed checkpoint fixes; the image size (relative positions are resampled) and
# regularisation rates may change between seed and continued training.
_STRUCTURAL = ("num_layers", "dim", "num_heads", "mlp_dim", "patch_size", "max_text_len", "vocab_size")


@dataclass(frozen=True)
class InitSpec:
    kind: str  # scratch | beit | seed
    path: Path | None = None

    @classmethod
    def parse(cls, text: str) -> InitSpec:
        """``scratch``, ``beit:PATH`` or ``seed:PATH`` (the file must exist)."""
        kind, _, path = text.partition(":")
        if kind not in INIT_KINDS or (kind == "scratch") != (path == ""):
            raise TrainConfigError(f"--init {text!r}: expected scratch, beit:PATH or seed:PATH")
        if kind == "scratch":
            return cls("scratch")
        if not Path(path).is_file():
            raise TrainConfigError(f"--init {kind} checkpoint {path} does not exist")
        return cls(kind, Path(path).resolve())

    def describe(self) -> str:
        return self.kind if self.path is None else f"{self.kind}:{self.path}"


def _from_seed(path: Path, config: ModelConfig, sharing: Sharing, heads: Heads) -> VLModel:
    state, meta = load_state(path)
    if meta.sharing is not Sharing.SHARED:
        raise TrainConfigError(f"seed checkpoint {path} is {meta.sharing.value}, not a shared (MA) model")
    seed_config = meta.config
    differs = {
        f: (getattr(seed_config, f), getattr(config, f))
        for f in _STRUCTURAL
        if getattr(seed_config, f) != getattr(config, f)
    }
    if differs:
        raise TrainConfigError(
            f"seed checkpoint {path} does not match the requested model (seed, requested): {differs}"
        )
    if meta.token_types != 2:
        raise TrainConfigError(f"seed checkpoint {path} has {meta.token_types} token types, expected 2")
    model = VLModel(dataclasses.replace(config, image_size=seed_config.image_size), sharing, meta.heads)
    if sharing is not Sharing.SHARED:
        state = expand_experts(state, seed_config, sharing)
    strict_load(model, state, path)
    model.add_heads(heads)  # heads the seed lacks start fresh
    if config.grid != seed_config.grid:
        model.resize_image_relpos(config.grid)
    log.info(
        "%s model from the shared seed %s (%d steps), every expert a copy of its shared weights",
        sharing.value,
        path,
        meta.steps,
    )
    return model


def initial_model(init: InitSpec, preset: str, sharing: Sharing | str, heads: Heads, **overrides: Any) -> VLModel:
    """The starting model; seed torch beforehand for reproducible fresh weights."""
    config, sharing = model_config(preset, **overrides), Sharing.parse(sharing)
    if init.kind == "seed":
        assert init.path is not None
        return _from_seed(init.path, config, sharing, heads)
    model = VLModel(config, sharing, heads)
    if init.kind == "beit":
        assert init.path is not None
        init_from_beit(model, init.path)
    return model
