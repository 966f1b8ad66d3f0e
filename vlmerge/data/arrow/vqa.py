"""VQAv2 questions and annotations → ``vqav2_<split>.arrow`` + the answer vocabulary.

Follows ViLT's ``write_vqa.py``: the same label ids (vocabulary in first-seen order, vqa_answers),
one row per image, grouping its questions (sorted by question id) with, per question, the
in-vocabulary answers, their labels and soft scores (human answers counted as
``vqa_answer_counting`` says). Train and val questions with no in-vocabulary answer are dropped, and
images left without a question get no row; test and test-dev rows carry questions and ids with
empty answer columns. Rows are sorted by image id (ViLT shuffled them without a seed);
``vqav2_val`` is then split into ``vqav2_trainable_val`` and ``vqav2_rest_val`` = its last
``rest_val_images`` rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from vlmerge.data.arrow.annotations import field, integer, json_list, load_json, require_dir, require_file
from vlmerge.data.arrow.conversion import Conversion
from vlmerge.data.arrow.errors import RawDataError
from vlmerge.data.arrow.vqa_answers import COUNTINGS, Counting, build_vocabulary, score_answers
from vlmerge.data.arrow.vqa_split import split_val
from vlmerge.data.schema import VQA_ANSWERS_FILE
from vlmerge.runtime import atomic_write_json

log = logging.getLogger(__name__)

_SUBSETS = {"train": "train2014", "val": "val2014", "test": "test2015", "test-dev": "test-dev2015"}
_IMAGE_FOLDERS = {"train": "train2014", "val": "val2014", "test": "test2015", "test-dev": "test2015"}
_LABELLED = ("train", "val")


@dataclass(frozen=True)
class Question:
    question_id: int
    text: str
    answers: list[str]
    labels: list[int]
    scores: list[float]


def read_human_answers(path: Path) -> tuple[dict[int, list[str]], list[str]]:
    """Human answers per question id, and every question's ``multiple_choice_answer``."""
    data = load_json(path)
    human: dict[int, list[str]] = {}
    majority = []
    for i, record in enumerate(json_list(field(data, "annotations", str(path)), f"{path}: annotations")):
        where = f"{path}: annotations[{i}]"
        majority.append(field(record, "multiple_choice_answer", where, str))
        answers = json_list(field(record, "answers", where, list), where)
        human[integer(record, "question_id", where)] = [
            field(a, "answer", f"{where}.answers[{j}]", str) for j, a in enumerate(answers)
        ]
    return human, majority


def read_questions(
    path: Path,
    human: dict[int, list[str]] | None,
    label_of: dict[str, int],
    annotations: Path | None = None,
    counting: Counting = "normalized",
) -> tuple[dict[int, list[Question]], int]:
    """Questions grouped by image id, and how many were dropped for having no labelled answer.

    ``human`` is None for the test splits, whose questions keep empty answers; ``counting`` is how
    the human answers are counted (:func:`vlmerge.data.arrow.vqa_answers.score_answers`).
    """
    by_image: dict[int, list[Question]] = {}
    dropped = 0
    for i, record in enumerate(json_list(field(load_json(path), "questions", str(path)), f"{path}: questions")):
        where = f"{path}: questions[{i}]"
        question_id = integer(record, "question_id", where)
        scored: tuple[list[str], list[int], list[float]] = ([], [], [])
        if human is not None:
            if question_id not in human:
                raise RawDataError(f"{where}: question_id {question_id} has no record in {annotations}")
            scored = score_answers(human[question_id], label_of, counting)
            if not scored[1]:
                dropped += 1
                continue
        question = Question(question_id, field(record, "question", where, str), *scored)
        by_image.setdefault(integer(record, "image_id", where), []).append(question)
    for questions in by_image.values():
        questions.sort(key=lambda q: q.question_id)
    return by_image, dropped


def index_images(folder: Path) -> dict[int, Path]:
    """Image id (the number after the last ``_`` of a COCO file name) → file."""
    index: dict[int, Path] = {}
    for path in sorted(require_dir(folder).iterdir()):
        number = path.stem.rpartition("_")[2]
        if number.isdigit():
            index.setdefault(int(number), path)
    return index


def write_split(run: Conversion, split: str, by_image: dict[int, list[Question]], folder: Path) -> None:
    """Stream one split's rows, in image-id order; images that cannot be read are skipped."""
    index, labelled, questions = index_images(folder), split in _LABELLED, 0
    with run.table(split) as table, run.progress(split, len(by_image)) as bar:
        for image_id in sorted(by_image):
            bar.update()
            image = run.image(index.get(image_id, folder / f"COCO_{folder.name}_{image_id:012d}.jpg"), split)
            if image is None:
                continue
            group = by_image[image_id]
            table.write(
                {
                    "image": image,
                    "image_id": image_id,
                    "split": split,
                    "questions": [q.text for q in group],
                    "question_id": [q.question_id for q in group],
                    # ViLT leaves the answer columns empty (not one empty list per question) in test rows.
                    "answers": [q.answers for q in group] if labelled else [],
                    "answer_labels": [q.labels for q in group] if labelled else [],
                    "answer_scores": [q.scores for q in group] if labelled else [],
                }
            )
            questions += len(group)
    run.count(split, questions=questions)


def convert_vqa(run: Conversion) -> None:
    """Write the vocabulary, then one table per split, then the trainable/rest split of val."""
    counting = run.options.vqa_answer_counting
    if counting not in COUNTINGS:
        raise RawDataError(f"vqa_answer_counting {counting!r}: expected one of {list(COUNTINGS)}")
    questions = {s: require_file(run.raw / f"v2_OpenEnded_mscoco_{sub}_questions.json") for s, sub in _SUBSETS.items()}
    annotations = {s: require_file(run.raw / f"v2_mscoco_{_SUBSETS[s]}_annotations.json") for s in _LABELLED}
    folders = {s: require_dir(run.raw / name) for s, name in _IMAGE_FOLDERS.items()}
    human, majority = {}, []
    for split, path in annotations.items():
        human[split], split_majority = read_human_answers(path)
        majority += split_majority
    vocabulary = build_vocabulary(majority, run.options.min_answer_count)
    vocabulary_path = run.out / VQA_ANSWERS_FILE
    atomic_write_json(vocabulary_path, vocabulary)
    run.outputs.append(vocabulary_path)
    run.details["answer_vocabulary_size"] = len(vocabulary)
    run.details["answer_label_order"] = "vilt"  # first-seen over train then val, as write_vqa.py
    log.info(
        "answer vocabulary: %d answers seen at least %d times; human answers counted %s",
        len(vocabulary),
        run.options.min_answer_count,
        counting,
    )
    label_of = {answer: label for label, answer in enumerate(vocabulary)}
    for split, path in questions.items():
        by_image, dropped = read_questions(path, human.get(split), label_of, annotations.get(split), counting)
        if split in _LABELLED:
            run.count(split, questions_without_label=dropped)
        write_split(run, split, by_image, folders[split])
    split_val(run)
