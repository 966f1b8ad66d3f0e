"""The headline metrics of each task: the columns of the paper's main table (docs/tasks.md).

Splits are the ones ``python -m vlmerge.evaluate`` reports (``Task.test``; a test checks that the
two agree): VQA on its evaluation split, retrieval on test, NLVR2 on dev and test-P.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vlmerge.catalog.names import TASKS


@dataclass(frozen=True)
class Column:
    """One headline number: ``splits.<split>.metrics.<metric>`` of a task's result JSON."""

    task: str
    split: str
    metric: str
    label: str


HEADLINES: dict[str, tuple[Column, ...]] = {
    "vqa": (Column("vqa", "rest_val", "vqa_score", "VQA score"),),
    "coco": (Column("coco", "test", "ir_r1", "COCO IR@1"), Column("coco", "test", "tr_r1", "COCO TR@1")),
    "f30k": (Column("f30k", "test", "ir_r1", "F30K IR@1"), Column("f30k", "test", "tr_r1", "F30K TR@1")),
    "nlvr2": (Column("nlvr2", "dev", "accuracy", "NLVR2 dev"), Column("nlvr2", "test1", "accuracy", "NLVR2 test-P")),
}


def columns(tasks: Sequence[str]) -> list[Column]:
    """The headline columns of ``tasks``, in the paper's task order (VQA, COCO, F30K, NLVR2)."""
    return [column for task in TASKS if task in tasks for column in HEADLINES[task]]
