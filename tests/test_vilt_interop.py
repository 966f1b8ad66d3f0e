"""A folder of VQA tables as ViLT's ``write_vqa.py`` writes them evaluates exactly like vlmerge's own.

vlmerge's tables of a tiny synthetic VQAv2 are copied into ViLT's layout: rows shuffled (ViLT shuffles),
written through pandas with ViLT's column order and types, the test and test-dev answer columns
``list<null>``, and no ``vqav2_answers.json`` (ViLT rebuilds the answer list from the tables). The same
checkpoint then goes through ``python -m vlmerge.evaluate`` on both folders.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
import torch

from tests.builders import tiny_model
from vlmerge.data.arrow import ConvertOptions, convert
from vlmerge.data.schema import FILES, VQA_ANSWERS_FILE
from vlmerge.data.synth import generate
from vlmerge.data.tokenizer import load_tokenizer, train_wordpiece
from vlmerge.evaluate.cli import main
from vlmerge.model.checkpoint import save_model
from vlmerge.tasks import get_task
from vlmerge.tasks.vqa import answer_vocabulary
from vlmerge.vocab.cli import arrow_texts

# write_vqa.py's DataFrame columns, in its order.
VILT_COLUMNS = ["image", "questions", "answers", "answer_labels", "answer_scores", "image_id", "question_id", "split"]
VILT_TYPES = {
    "image": pa.binary(),
    "questions": pa.list_(pa.string()),
    "answers": pa.list_(pa.list_(pa.string())),
    "answer_labels": pa.list_(pa.list_(pa.int64())),
    "answer_scores": pa.list_(pa.list_(pa.float64())),
    "image_id": pa.int64(),
    "question_id": pa.list_(pa.int64()),
    "split": pa.string(),
}
UNLABELLED = ("test", "test-dev")


def read_rows(path: Path) -> list[dict]:
    with pa.OSFile(str(path)) as source:
        return pa.ipc.open_file(source).read_all().to_pylist()


def read_schema(path: Path) -> pa.Schema:
    with pa.OSFile(str(path)) as source:
        return pa.ipc.open_file(source).schema


def write_vilt_table(path: Path, rows: list[dict], split: str) -> None:
    """One table the way write_vqa.py writes it: a list of row lists → DataFrame → ``from_pandas``."""
    unlabelled = split in UNLABELLED
    records = [
        [
            *(row[c] for c in ("image", "questions")),
            *([] if unlabelled else row[c] for c in ("answers", "answer_labels", "answer_scores")),
            *(row[c] for c in ("image_id", "question_id", "split")),
        ]
        for row in rows
    ]
    frame = pd.DataFrame(records, columns=VILT_COLUMNS)
    frame["split"] = frame["split"].astype(object)  # the pandas of ViLT's time: object strings → Arrow string
    table = pa.Table.from_pandas(frame)
    with pa.OSFile(str(path), "wb") as sink, pa.RecordBatchFileWriter(sink, table.schema) as writer:
        writer.write_table(table)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, Path]:
    """(vlmerge's arrow folder, its ViLT-layout copy, tokenizer folder, raw VQA root)."""
    root = tmp_path_factory.mktemp("vilt-interop")
    raw, ours, theirs = root / "raw", root / "ours", root / "vilt"
    generate(raw, seed=0, size="tiny", datasets=["vqa"], counts={"vqa": {"val": 10, "test": 5, "test-dev": 3}})
    convert("vqa", raw / "vqa", ours, ConvertOptions(min_answer_count=1, rest_val_images=5))
    theirs.mkdir()
    shuffle = random.Random(0)
    for split, name in FILES["vqa"].items():
        rows = read_rows(ours / name)
        shuffle.shuffle(rows)
        write_vilt_table(theirs / name, rows, split)
    tokenizer = train_wordpiece(arrow_texts(ours), root / "tokenizer", vocab_size=300)
    return ours, theirs, tokenizer, raw / "vqa"


def test_the_copy_is_in_vilts_layout(folders) -> None:
    ours, theirs, _, _ = folders
    assert (ours / VQA_ANSWERS_FILE).is_file() and not (theirs / VQA_ANSWERS_FILE).exists()
    for split, name in FILES["vqa"].items():
        schema = read_schema(theirs / name)
        assert schema.names == VILT_COLUMNS and b"pandas" in schema.metadata
        for column, kind in VILT_TYPES.items():
            null = split in UNLABELLED and column in ("answers", "answer_labels", "answer_scores")
            assert schema.field(column).type == (pa.list_(pa.null()) if null else kind), (split, column)
        mine = sorted(read_rows(ours / name), key=lambda r: r["image_id"])
        assert sorted(read_rows(theirs / name), key=lambda r: r["image_id"]) == mine
    assert read_rows(theirs / FILES["vqa"]["rest_val"]) != read_rows(ours / FILES["vqa"]["rest_val"])  # shuffled


def test_answer_list_rebuilt_from_vilt_tables_is_vlmerges(folders) -> None:
    ours, theirs, _, _ = folders
    assert answer_vocabulary(theirs) == answer_vocabulary(ours) == json.loads((ours / VQA_ANSWERS_FILE).read_text())
    assert get_task("vqa").heads(theirs) == get_task("vqa").heads(ours)


def test_same_scores_and_submission_on_both_folders(folders, tmp_path: Path) -> None:
    ours, theirs, tokenizer, raw = folders
    ckpt = tmp_path / "model.safetensors"
    model = tiny_model(len(load_tokenizer(tokenizer)), "shared", get_task("vqa").heads(ours), seed=3)
    # Lift the three answers most given in training, so that the untrained model answers with a mix of
    # them and scores above zero: equal scores then say the labels mean the same answers in both folders.
    totals: dict[int, float] = {}
    for row in read_rows(ours / FILES["vqa"]["train"]):
        for labels, scores in zip(row["answer_labels"], row["answer_scores"]):
            for label, score in zip(labels, scores):
                totals[label] = totals.get(label, 0.0) + score
    with torch.no_grad():
        model.vqa_classifier[-1].bias[sorted(totals, key=totals.__getitem__)[-3:]] += 5.0
    save_model(ckpt, model)
    results, submissions = [], []
    for arrow in (ours, theirs):
        out = tmp_path / arrow.name / "vqa.json"
        argv = ["--task", "vqa", "--ckpt", str(ckpt), "--arrow", str(arrow), "--tokenizer", str(tokenizer)]
        argv += ["--out", str(out), "--num-workers", "0", "--batch-size", "4", "--device", "cpu"]
        argv += ["--vqa-annotations", str(raw / "v2_mscoco_val2014_annotations.json")]
        assert main(argv) == 0
        result = json.loads(out.read_text())
        results.append({s: {k: v[k] for k in ("metrics", "baseline", "samples")} for s, v in result["splits"].items()})
        submissions.append(json.loads(out.with_name(result["vqa"]["submission"]["file"]).read_text()))
    assert results[0] == results[1]
    assert submissions[0] == submissions[1]
    (split,) = results[0].values()
    assert split["samples"][0] > 0 and set(split["metrics"]) == {"vqa_score", "vqa_accuracy"}
    assert split["metrics"]["vqa_score"] > 0 and len({e["answer"] for e in submissions[0]}) > 1
    assert len(submissions[0]) == sum(len(r["questions"]) for r in read_rows(ours / FILES["vqa"]["test-dev"]))
