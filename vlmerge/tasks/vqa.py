"""VQAv2 (docs/tasks.md): image+text → pooler → VQA head; BCE over the answers; selected on the VQA score.

Training reads ``train`` (optionally plus ``trainable_val``), validation ``rest_val``; the
test-dev submission is written by :mod:`vlmerge.tasks.vqa_eval`. The answer list (label → answer
string) is ``vqav2_answers.json`` beside the tables, or, in a folder of ViLT-written tables that has
none, rebuilt from the tables' answer columns as ViLT does.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow.compute as pc
import torch
from torch.utils.data import Dataset

from vlmerge.data.readers import VQADataset
from vlmerge.data.readers.vqa import answers_from_tables
from vlmerge.data.schema import FILES, VQA_ANSWERS_FILE
from vlmerge.data.transforms import ImageTransform, eval_transform
from vlmerge.metrics import vqa_score
from vlmerge.model import Heads, VLModel
from vlmerge.objectives import vqa_loss
from vlmerge.objectives import vqa_score as batch_vqa_score
from vlmerge.tasks.base import Baseline, Batch, Rows, Task, split_files
from vlmerge.tasks.errors import TaskError
from vlmerge.tasks.settings import SplitOptions

log = logging.getLogger(__name__)


# Tables whose answer columns name the labels when no answer file is present: ViLT's data module reads
# train + trainable_val and rest_val; val is their union, listed for folders that keep only it.
VOCABULARY_SPLITS = ("train", "val", "trainable_val", "rest_val")


def answer_vocabulary(arrow: Path) -> list[str]:
    """Label → answer string: ``vqav2_answers.json`` beside the tables, else rebuilt from the tables.

    Without the file (a folder written by ViLT's ``write_vqa.py``), every (label, answer) pair of the
    train and val tables present is collected (:func:`vlmerge.data.readers.vqa.answers_from_tables`):
    the list has ViLT's head size, max label + 1.
    """
    path = Path(arrow) / VQA_ANSWERS_FILE
    if not path.exists():
        tables = [Path(arrow) / FILES["vqa"][s] for s in VOCABULARY_SPLITS]
        present = [t for t in tables if t.is_file()]
        if not present:
            raise TaskError(f"no VQA answer list {path} and no train/val table in {arrow} to rebuild it from")
        return list(_rebuilt_vocabulary(tuple((t, t.stat().st_mtime_ns, t.stat().st_size) for t in present)))
    try:
        answers = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise TaskError(f"cannot read the VQA answer vocabulary {path}: {err}") from err
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        raise TaskError(f"{path}: expected a non-empty JSON list of answer strings")
    return answers


@functools.lru_cache(maxsize=8)
def _rebuilt_vocabulary(tables: tuple[tuple[Path, int, int], ...]) -> tuple[str, ...]:
    """The answer list of ``tables`` (path, mtime, size): read once per version of the files."""
    log.info("no %s: VQA answer list rebuilt from %s", VQA_ANSWERS_FILE, ", ".join(t.name for t, _, _ in tables))
    return tuple(answers_from_tables([t for t, _, _ in tables]))


def question_targets(dataset: VQADataset) -> tuple[list[list[int]], list[list[float]]]:
    """Each question's answer labels and soft scores, in dataset order, without decoding images."""
    labels, scores = (
        pc.list_flatten(dataset.tables.column(name)).to_pylist() for name in ("answer_labels", "answer_scores")
    )
    if len(labels) != len(dataset):
        raise TaskError(f"{[str(p) for p in dataset.tables.paths]}: the questions carry no answers (a test split?)")
    return labels, scores


def best_constant_answer(dataset: VQADataset) -> int:
    """The label with the largest total soft score: the constant answer that scores best on ``dataset``."""
    totals = torch.zeros(dataset.num_answers, dtype=torch.float64)
    for labels, scores in zip(*question_targets(dataset)):
        totals[labels] += torch.tensor(scores, dtype=torch.float64)
    return int(torch.argmax(totals))  # the first maximum: ties go to the smaller label


def encode_question(model: VLModel, batch: Batch, first_only: bool = False) -> tuple[torch.Tensor]:
    """The image+text sequence [B, T+1+G², D]: text → l and image → v below F, the vl expert from F on
    (``first_only``: token 0 alone, [B, 1, D])."""
    return (model.encode_pair(batch["text_ids"], batch["text_mask"], batch["image"], first_only=first_only),)


def vqa_logits(model: VLModel, batch: Batch) -> torch.Tensor:
    """[B, answers] from the pooled image+text sequence."""
    (hidden,) = encode_question(model, batch, first_only=True)
    return model.vqa_classifier(model.pooler(hidden))


@dataclass(frozen=True)
class VQATask(Task):
    def train_splits(self, options: SplitOptions) -> tuple[str, ...]:
        return self.train + (("trainable_val",) if options.vqa_trainable_val else ())

    def selection_split(self, options: SplitOptions) -> str:
        """Always the val split (rest_val): VQA's test answers are not public, so ``select_on="test"``
        (upstream's choice for retrieval and NLVR2) leaves VQA selecting on val, as upstream did."""
        if options.select_on == "test":
            log.info("VQA test answers are not public: selecting on %s despite select_on=test", self.val)
        return self.val

    def heads(self, arrow: Path) -> Heads:
        return Heads(vqa_answers=len(answer_vocabulary(arrow)))

    def _dataset(self, arrow: Path, splits: Sequence[str], transform: ImageTransform) -> VQADataset:
        return VQADataset(split_files(arrow, self.dataset, splits), transform, len(answer_vocabulary(arrow)))

    def train_dataset(self, arrow: Path, splits: Sequence[str], transform: ImageTransform) -> Dataset:
        return self._dataset(arrow, splits, transform)

    def eval_sides(self, arrow: Path, split: str, transform: ImageTransform) -> tuple[Dataset, ...]:
        return (self._dataset(arrow, (split,), transform),)

    def encode(self, model: VLModel, batch: Batch) -> tuple[torch.Tensor, ...]:
        return encode_question(model, batch)

    def loss(self, model: VLModel, batch: Batch) -> dict[str, torch.Tensor]:
        logits, targets = vqa_logits(model, batch), batch["target"]
        score = batch_vqa_score(logits.detach(), targets) / targets.shape[0]
        return {"loss": vqa_loss(logits, targets), "vqa_score": score}

    def eval_rows(self, model: VLModel, batch: Batch, side: int) -> Rows:
        """``pred`` [B] answer label, ``score`` [B] its soft score (0 on test questions)."""
        pred = vqa_logits(model, batch).argmax(dim=1)
        score = batch["target"].gather(1, pred[:, None]).squeeze(1)
        return {"index": batch["index"], "pred": pred, "score": score.float()}

    def metrics(self, rows: Sequence[Rows], sides: Sequence[Dataset]) -> dict[str, float]:
        return {"vqa_score": float(rows[0]["score"].double().mean())}

    def constant_answer(self, arrow: Path, train_splits: Sequence[str]) -> int:
        """The label of the trivial baseline: the best constant answer on the training splits."""
        # Only the answer columns are read: the transform never runs.
        return best_constant_answer(self._dataset(arrow, train_splits, eval_transform(32)))

    def baseline(self, arrow: Path, train_splits: Sequence[str], sides: Sequence[Dataset]) -> Baseline:
        label = self.constant_answer(arrow, train_splits)
        labels, scores = question_targets(sides[0])  # type: ignore[arg-type]
        answer = answer_vocabulary(arrow)[label]
        return Baseline(
            {"vqa_score": vqa_score([label] * len(labels), labels, scores)},
            f"always {answer!r}, the answer with the largest total soft score in training",
        )
