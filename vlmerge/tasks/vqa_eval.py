"""VQA evaluation beyond the soft score: official accuracy and the evaluation-server submission.

The official accuracy needs the ten human answers of each question, which the Arrow tables do
not keep (they hold the in-vocabulary answers and soft scores). Given the official annotation
file (``v2_mscoco_val2014_annotations.json``) it is computed from the humans' answers exactly as
they are in the file — not normalised here, since the official rule (:func:`vlmerge.metrics.vqa_accuracy`,
``mode="official"``) normalises only when they disagree. Without the file it is computed from the
soft scores (:func:`vlmerge.metrics.humans_agreeing`), so it counts the humans as the tables did.
Tables written with ``vqa_answer_counting: normalized`` count normalised answers: that is the
``mode="always_normalize"`` accuracy, equal to the official one except on questions whose humans
all gave one raw answer that the (normalised) vocabulary answer matches only after normalisation
("Yes" ×10, "yes." ×10), where it gives 1 and the official script 0. Tables written as ViLT writes
them (``raw``, or ViLT's own files) count only the humans who typed the vocabulary answer exactly,
so "Two" never agrees with "2" there, even where the official script would normalise. The result
records which source was used. ViLT's test and test-dev tables (answer columns ``list<null>``) are
read like vlmerge's for the submission.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from vlmerge.data.readers import VQADataset
from vlmerge.metrics import humans_agreeing, leave_one_out_accuracy, vqa_accuracy
from vlmerge.tasks.base import Rows
from vlmerge.tasks.errors import TaskError
from vlmerge.tasks.vqa import question_targets


def read_human_answers(path: Path) -> dict[int, list[str]]:
    """question_id → the human answers of an official VQA annotation file, raw (not normalised)."""
    try:
        record = json.loads(Path(path).read_text())
        return {int(a["question_id"]): [h["answer"] for h in a["answers"]] for a in record["annotations"]}
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise TaskError(f"cannot read VQA annotations {path}: {type(err).__name__}: {err}") from err


def predicted_answers(rows: Rows, vocabulary: Sequence[str]) -> list[str]:
    return [vocabulary[int(label)] for label in rows["pred"]]


def question_ids(rows: Rows, dataset: VQADataset) -> list[int]:
    return [int(dataset.question_id[int(i)]) for i in rows["index"]]


def _accuracy(
    answers: Sequence[str], soft_scores: Sequence[float], ids: Sequence[int], humans: Mapping[int, list[str]] | None
) -> float:
    """Mean official accuracy of ``answers`` to questions ``ids`` against the raw ``humans`` (the current
    official rule); without ``humans``, from the answers' soft scores (the humans who gave each
    answer, by :func:`humans_agreeing` — the always-normalising rule)."""
    if humans is None:
        return sum(leave_one_out_accuracy(humans_agreeing(s)) for s in soft_scores) / len(soft_scores)
    missing = [q for q in ids if q not in humans]
    if missing:
        raise TaskError(f"the VQA annotations lack {len(missing)} evaluated questions, e.g. question_id {missing[0]}")
    return vqa_accuracy(answers, [humans[q] for q in ids], mode="official")


def official_accuracy(
    rows: Rows, dataset: VQADataset, vocabulary: Sequence[str], humans: Mapping[int, list[str]] | None
) -> float:
    """Mean official accuracy of the rows' predictions."""
    return _accuracy(predicted_answers(rows, vocabulary), rows["score"].tolist(), question_ids(rows, dataset), humans)


def constant_accuracy(
    label: int, vocabulary: Sequence[str], dataset: VQADataset, humans: Mapping[int, list[str]] | None
) -> float:
    """Mean official accuracy of answering ``vocabulary[label]`` to every question of ``dataset``."""
    labels, scores = question_targets(dataset)
    soft = [dict(zip(row_labels, row_scores)).get(label, 0.0) for row_labels, row_scores in zip(labels, scores)]
    return _accuracy([vocabulary[label]] * len(soft), soft, [int(q) for q in dataset.question_id], humans)


def submission(rows: Rows, dataset: VQADataset, vocabulary: Sequence[str]) -> list[dict[str, int | str]]:
    """``[{"question_id", "answer"}]`` with every question of ``dataset`` exactly once, by question id.

    ``rows`` must be merged (one row per dataset index), which removes distributed padding.
    """
    ids = question_ids(rows, dataset)
    answers = predicted_answers(rows, vocabulary)
    entries = dict(zip(ids, answers))
    if len(entries) != len(ids) or len(ids) != len(dataset):
        raise TaskError(
            f"VQA submission: {len(entries)} distinct question ids among {len(ids)} rows, "
            f"expected each of the {len(dataset)} questions exactly once"
        )
    return [{"question_id": q, "answer": entries[q]} for q in sorted(entries)]
