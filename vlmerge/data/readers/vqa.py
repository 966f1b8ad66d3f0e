"""VQAv2 questions (one sample per question) with soft answer targets (docs/tasks.md).

Reads vlmerge's tables and ViLT's alike: ViLT's test and test-dev tables type their (empty) answer
columns ``list<null>``, which the column casts of :mod:`vlmerge.data.readers.table` turn into the
declared types. ViLT writes no answer list beside its tables; :func:`answers_from_tables` rebuilds
it from the ``answers`` / ``answer_labels`` columns, as ViLT's data module does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import Dataset

from vlmerge.data.readers.table import ArrowTables, ReaderError, flat_index, numpy_values
from vlmerge.data.schema import VQA

if TYPE_CHECKING:
    from vlmerge.data.transforms import ImageTransform

log = logging.getLogger(__name__)

_COLUMNS = ("image", "questions", "question_id", "answers", "answer_labels", "answer_scores")
# The name given to a label below the largest one that no table row answers with.
UNSEEN_ANSWER = "<unseen answer {label}>"


def label_answer_pairs(path: Path) -> dict[int, str]:
    """label → answer string of every (label, answer) pair in one ``vqav2_*.arrow`` table.

    Raises:
        ReaderError: a question's answer and label lists differ in length, a value is null, or a
            label comes with two answers (or an answer with two labels) in this table.
    """
    tables = ArrowTables([path], VQA, ("answers", "answer_labels"))
    per_question = {name: pc.list_flatten(tables.column(name)) for name in ("answers", "answer_labels")}
    lengths = [numpy_values(pc.list_value_length(c), null=0) for c in per_question.values()]
    if not np.array_equal(lengths[0], lengths[1]):
        raise ReaderError(f"{path}: a question has unequal answer and label lists")
    answers, labels = (pc.list_flatten(c) for c in per_question.values())
    if answers.null_count or labels.null_count:
        raise ReaderError(f"{path}: null entries in the answers or answer_labels lists")
    unique = pa.table({"label": labels, "answer": answers}).group_by(["label", "answer"]).aggregate([])
    pairs: dict[int, str] = {}
    labels_of: dict[str, int] = {}
    for label, answer in zip(unique.column("label").to_pylist(), unique.column("answer").to_pylist()):
        if label in pairs:
            raise ReaderError(f"{path}: label {label} is both {pairs[label]!r} and {answer!r}")
        if answer in labels_of:
            raise ReaderError(f"{path}: answer {answer!r} has labels {labels_of[answer]} and {label}")
        pairs[label], labels_of[answer] = answer, label
    return pairs


def answers_from_tables(paths: Sequence[Path]) -> list[str]:
    """The answer list (index = label) that ViLT rebuilds from its tables' answer columns.

    Every (label, answer) pair of the given tables (the train and val splits) is collected; the list
    has ``max label + 1`` entries, ViLT's head size. A label that no row answers with (possible when
    human answers are counted raw) is named ``UNSEEN_ANSWER``, a name no human answer matches, and
    logged.

    Raises:
        ReaderError: the tables hold no answer at all, a negative label, or disagree with each other
            about a label's answer (the message names both files).
    """
    found: dict[int, tuple[str, Path]] = {}
    for path in paths:
        for label, answer in label_answer_pairs(path).items():
            seen = found.setdefault(label, (answer, path))
            if seen[0] != answer:
                raise ReaderError(f"{path}: label {label} is {answer!r}, but {seen[0]!r} in {seen[1]}")
    if not found:
        raise ReaderError(f"{[str(p) for p in paths]}: no answers to rebuild the VQA answer list from")
    if min(found) < 0:
        raise ReaderError(f"{found[min(found)][1]}: negative answer label {min(found)}")
    size = max(found) + 1
    by_answer: dict[str, int] = {}
    for label, (answer, path) in sorted(found.items()):
        if by_answer.setdefault(answer, label) != label:
            raise ReaderError(f"{path}: answer {answer!r} has labels {by_answer[answer]} and {label}")
    unseen = [label for label in range(size) if label not in found]
    if unseen:
        log.warning(
            "VQA answer list rebuilt from the tables: %d of %d labels never appear as an answer and are named "
            "%r (e.g. label %d)",
            len(unseen),
            size,
            UNSEEN_ANSWER,
            unseen[0],
        )
    return [found[k][0] if k in found else UNSEEN_ANSWER.format(label=k) for k in range(size)]


class VQADataset(Dataset):
    """One sample per question of the given ``vqav2_*.arrow`` files.

    Sample: ``{"image": Tensor[3, H, W], "text": str, "question_id": int, "image_index": int,
    "answers": list[str], "answer_labels": list[int], "answer_scores": list[float],
    "target": Tensor[num_answers]}``; ``target`` holds each label's soft score (0 elsewhere).
    Test rows (ViLT writes their answer lists empty) give empty answers and an all-zero target.
    """

    def __init__(self, paths: Sequence[Path], transform: ImageTransform, num_answers: int) -> None:
        self.tables = ArrowTables(paths, VQA, _COLUMNS)
        self.transform, self.num_answers = transform, num_answers
        questions = self.tables.list_lengths("questions")
        self._check_row_lengths(questions)
        self.row, self.position = flat_index(questions)
        question_id = pc.list_flatten(self.tables.column("question_id"))
        self.question_id = numpy_values(question_id, what=f"{[str(p) for p in paths]} question_id").astype(np.int64)
        self._check_labels()

    def _check_row_lengths(self, questions: np.ndarray) -> None:
        """Per row: as many ids as questions; answers, labels and scores either aligned or all empty (test)."""
        ids = self.tables.list_lengths("question_id")
        answers = {name: self.tables.list_lengths(name) for name in ("answers", "answer_labels", "answer_scores")}
        bad = ids != questions
        for lengths in answers.values():
            bad |= (lengths != questions) & (lengths != 0)
            bad |= lengths != answers["answer_labels"]
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ReaderError(
                f"{self.tables.where(row)}: {questions[row]} questions but "
                f"{ids[row]} ids / {[int(a[row]) for a in answers.values()]} answer lists"
            )

    def _check_labels(self) -> None:
        """Every question has as many scores as labels, and labels index the answer vocabulary."""
        per_question = {name: pc.list_flatten(self.tables.column(name)) for name in ("answer_labels", "answer_scores")}
        counts = [numpy_values(pc.list_value_length(c), null=np.nan) for c in per_question.values()]
        if not np.array_equal(counts[0], counts[1]):
            raise ReaderError(f"{[str(p) for p in self.tables.paths]}: a question has unequal label and score lists")
        labels = pc.list_flatten(per_question["answer_labels"])
        if len(labels) == 0:
            return
        low, high = pc.min_max(labels).values()
        if low.as_py() < 0 or high.as_py() >= self.num_answers:
            raise ReaderError(
                f"{[str(p) for p in self.tables.paths]}: answer labels span "
                f"[{low.as_py()}, {high.as_py()}], outside [0, {self.num_answers})"
            )

    def __len__(self) -> int:
        return len(self.row)

    def _answer_list(self, name: str, row: int, position: int) -> list[Any]:
        per_question = self.tables.column(name)[row]
        return per_question[position].as_py() if len(per_question) else []

    def __getitem__(self, index: int) -> dict[str, Any]:
        row, position = int(self.row[index]), int(self.position[index])
        labels = self._answer_list("answer_labels", row, position)
        scores = self._answer_list("answer_scores", row, position)
        target = torch.zeros(self.num_answers)
        target[torch.tensor(labels, dtype=torch.long)] = torch.tensor(scores, dtype=torch.float32)
        return {
            "image": self.transform(self.tables.image(row)),
            "text": self.tables.column("questions")[row][position].as_py(),
            "question_id": int(self.question_id[index]),
            "image_index": row,
            "answers": self._answer_list("answers", row, position),
            "answer_labels": labels,
            "answer_scores": scores,
            "target": target,
        }
