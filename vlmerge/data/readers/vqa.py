"""VQAv2 questions (one sample per question) with soft answer targets (docs/tasks.md)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.compute as pc
import torch
from torch.utils.data import Dataset

from vlmerge.data.readers.table import ArrowTables, ReaderError, flat_index
from vlmerge.data.schema import VQA

if TYPE_CHECKING:
    from vlmerge.data.transforms import ImageTransform

_COLUMNS = ("image", "questions", "question_id", "answers", "answer_labels", "answer_scores")


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
        self.question_id = pc.list_flatten(self.tables.column("question_id")).to_numpy().astype(np.int64)
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
        counts = [pc.list_value_length(c).to_numpy(zero_copy_only=False) for c in per_question.values()]
        if not np.array_equal(*counts):
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
