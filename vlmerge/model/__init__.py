"""The multiway vision-language transformer in plain PyTorch (docs/model.md).

Build with :func:`create_model`, save and load with :mod:`vlmerge.model.checkpoint`, turn a shared
model into per-expert weights with :func:`expand_experts`, import BEiT and vl-merging weights with
:mod:`vlmerge.model.import_beit` and :mod:`vlmerge.model.import_vlmerging`.
"""

from vlmerge.model.config import PRESETS, ModelConfig, config_hash, model_config
from vlmerge.model.errors import CheckpointError, ModelConfigError
from vlmerge.model.expand import expand_experts
from vlmerge.model.heads import Heads
from vlmerge.model.layout import PART_PARAMS, ExpertLayout, Modality, Part, Sharing, detect_sharing, expert_layout
from vlmerge.model.model import VLModel, create_model

__all__ = [
    "PART_PARAMS",
    "PRESETS",
    "CheckpointError",
    "ExpertLayout",
    "Heads",
    "Modality",
    "ModelConfig",
    "ModelConfigError",
    "Part",
    "Sharing",
    "VLModel",
    "config_hash",
    "create_model",
    "detect_sharing",
    "expand_experts",
    "expert_layout",
    "model_config",
]
