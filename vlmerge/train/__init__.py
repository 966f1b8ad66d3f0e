"""Training: LightningModules that compose a built model with the objectives, data modules, the trainer.

Lightning composes, it does not own: weights are created or loaded (:mod:`vlmerge.train.init_weights`)
before a Trainer exists, and modules receive the built model.
"""

from vlmerge.train.data import PRETRAIN_DATASETS, PretrainData, PretrainDataConfig, pretrain_files
from vlmerge.train.errors import TrainConfigError
from vlmerge.train.init_weights import InitSpec, initial_model
from vlmerge.train.optim import OptimConfig, build_optimizer, parameter_groups, warmup_linear_schedule
from vlmerge.train.pretrain_module import LossWeights, PretrainConfig, PretrainModule
from vlmerge.train.sampler import ResumableSampler, evaluation_keys
from vlmerge.train.trainer import TrainerConfig, accumulation_steps, build_trainer, resume_checkpoint

__all__ = [
    "PRETRAIN_DATASETS",
    "InitSpec",
    "LossWeights",
    "OptimConfig",
    "PretrainConfig",
    "PretrainData",
    "PretrainDataConfig",
    "PretrainModule",
    "ResumableSampler",
    "TrainConfigError",
    "TrainerConfig",
    "accumulation_steps",
    "build_optimizer",
    "build_trainer",
    "evaluation_keys",
    "initial_model",
    "parameter_groups",
    "pretrain_files",
    "resume_checkpoint",
    "warmup_linear_schedule",
]
