"""Merging modality-specific experts into one modality-agnostic model (docs/merging.md).

:func:`merge` turns an MS state dict (plus the seed and gram statistics where a method needs them)
into an MA state dict; :data:`METHODS` lists the registered methods with their parameters and papers.
Gram statistics are collected with :mod:`vlmerge.grams.collect` and stored with
:mod:`vlmerge.files.grams`; :mod:`vlmerge.merging.distance` measures how far experts drifted.
"""

# Importing the method modules registers them.
from vlmerge.merging import arithmetic, interpolation, regmean, task_arithmetic  # noqa: F401
from vlmerge.merging.apply import merge, merge_with_report
from vlmerge.merging.errors import GramsError, MergeError
from vlmerge.merging.grams import GramStats, reduce_grams
from vlmerge.merging.keys import KeyGroup, block_groups, gram_targets, infer_layout
from vlmerge.merging.registry import METHODS, Merged, MethodSpec, get_method, register
from vlmerge.merging.selection import TASK_EXPERTS, Selection

__all__ = [
    "METHODS",
    "TASK_EXPERTS",
    "GramStats",
    "GramsError",
    "KeyGroup",
    "MergeError",
    "Merged",
    "MethodSpec",
    "Selection",
    "block_groups",
    "get_method",
    "gram_targets",
    "infer_layout",
    "merge",
    "merge_with_report",
    "reduce_grams",
    "register",
]
