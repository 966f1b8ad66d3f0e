"""Evaluation metrics: VQA answer normalisation and score/accuracy, retrieval recall@k, accuracy."""

from vlmerge.metrics.accuracy import accuracy, majority_class
from vlmerge.metrics.normalize import normalize_answer
from vlmerge.metrics.retrieval import (
    KS,
    chance_recall,
    chance_retrieval_recall,
    image_to_text_ranks,
    mean_recall,
    retrieval_recall,
    text_to_image_ranks,
)
from vlmerge.metrics.vqa import (
    ACCURACY_MODES,
    AccuracyMode,
    humans_agreeing,
    leave_one_out_accuracy,
    question_accuracy,
    vqa_accuracy,
    vqa_score,
)

__all__ = [
    "ACCURACY_MODES",
    "KS",
    "AccuracyMode",
    "accuracy",
    "chance_recall",
    "chance_retrieval_recall",
    "humans_agreeing",
    "image_to_text_ranks",
    "leave_one_out_accuracy",
    "majority_class",
    "mean_recall",
    "normalize_answer",
    "question_accuracy",
    "retrieval_recall",
    "text_to_image_ranks",
    "vqa_accuracy",
    "vqa_score",
]
