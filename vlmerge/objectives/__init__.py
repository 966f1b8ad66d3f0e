"""Training objectives: tensors in, loss out (docs/objectives.md, docs/tasks.md).

No module here imports the model, Lightning or the data, or logs: each loss is a function of
tensors, testable on its own (as open_clip's ``loss.py``).
"""

from vlmerge.objectives.classification import ClassificationOutput, classification_loss
from vlmerge.objectives.errors import ObjectiveInputError
from vlmerge.objectives.gather import all_gather_no_grad, all_gather_with_grad, rank, rank_offset, world_size
from vlmerge.objectives.itc import (
    ITC_GATHERS,
    MAX_LOGIT_SCALE,
    ContrastiveOutput,
    ITCGather,
    contrastive_loss,
    contrastive_targets,
    itc_loss,
)
from vlmerge.objectives.itm import HardNegatives, itm_labels, itm_loss, sample_hard_negatives
from vlmerge.objectives.mlm import IGNORE_INDEX, MLMOutput, mlm_loss
from vlmerge.objectives.nlvr2 import nlvr2_loss
from vlmerge.objectives.retrieval import retrieval_loss
from vlmerge.objectives.vqa import vqa_loss, vqa_score, vqa_targets

__all__ = [
    "IGNORE_INDEX",
    "ITC_GATHERS",
    "MAX_LOGIT_SCALE",
    "ClassificationOutput",
    "ContrastiveOutput",
    "HardNegatives",
    "ITCGather",
    "MLMOutput",
    "ObjectiveInputError",
    "all_gather_no_grad",
    "all_gather_with_grad",
    "classification_loss",
    "contrastive_loss",
    "contrastive_targets",
    "itc_loss",
    "itm_labels",
    "itm_loss",
    "mlm_loss",
    "nlvr2_loss",
    "rank",
    "rank_offset",
    "retrieval_loss",
    "sample_hard_negatives",
    "vqa_loss",
    "vqa_score",
    "vqa_targets",
    "world_size",
]
