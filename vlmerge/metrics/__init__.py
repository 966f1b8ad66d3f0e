"""Evaluation metrics: VQA answer normalisation and score/accuracy, retrieval recall@k, accuracy."""

from vlmerge.metrics.normalize import normalize_answer

__all__ = ["normalize_answer"]
