"""Arrow readers against naive per-row references, on small tables written here with pyarrow."""

from __future__ import annotations

import io
import pickle
from collections.abc import Sized
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

from vlmerge.data.readers import ArrowTables, CaptionPairs, NLVR2Dataset, ReaderError, RetrievalDataset, VQADataset
from vlmerge.data.readers.vqa import UNSEEN_ANSWER, answers_from_tables
from vlmerge.data.schema import CAPTION, NLVR2, VQA


def to_tensor(img: Image.Image) -> torch.Tensor:
    """uint8 [3, H, W], exact pixel values (module level so datasets pickle)."""
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)


def samples(data: Dataset) -> list[dict]:
    """Every sample of a map-style dataset, by index."""
    return [data[i] for i in range(len(cast(Sized, data)))]


def colour(i: int) -> tuple[int, int, int]:
    return (i * 37 % 256, i * 91 % 256, i * 53 % 256)


def png(i: int, size: tuple[int, int] = (6, 4)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour(i)).save(buffer, format="PNG")
    return buffer.getvalue()


def write(path: Path, schema: pa.Schema, rows: dict[str, list]) -> Path:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        writer.write_table(pa.table(rows, schema=schema))
    return path


def caption_rows(first: int, captions: list[list[str]]) -> dict[str, list]:
    n = len(captions)
    return {
        "image": [png(first + i) for i in range(n)],
        "caption": captions,
        "image_id": [f"img{first + i}" for i in range(n)],
        "split": ["train"] * n,
    }


CAPTIONS_A = [["a red circle", "one circle"], [], ["two squares", "a b", "c d e"]]
CAPTIONS_B = [["a blue triangle"], ["x", "y", "z", "w"]]


@pytest.fixture()
def caption_files(tmp_path: Path) -> list[Path]:
    return [
        write(tmp_path / "sbu_0.arrow", CAPTION, caption_rows(0, CAPTIONS_A)),
        write(tmp_path / "sbu_1.arrow", CAPTION, caption_rows(3, CAPTIONS_B)),
    ]


def naive_pairs(captions: list[list[str]]) -> list[tuple[int, str]]:
    return [(row, text) for row, texts in enumerate(captions) for text in texts]


def test_caption_pairs_match_naive_enumeration(caption_files: list[Path]) -> None:
    data = CaptionPairs(caption_files, to_tensor)
    expected = naive_pairs(CAPTIONS_A + CAPTIONS_B)
    assert len(data) == len(expected)
    for index, (row, text) in enumerate(expected):
        sample = data[index]
        assert (sample["text"], sample["image_index"], sample["text_index"]) == (text, row, index)
        assert sample["image"].shape == (3, 4, 6)
        assert sample["image"][:, 0, 0].tolist() == list(colour(row))  # the right image was decoded


def test_dedup_keeps_each_images_first_occurrence_of_a_caption(tmp_path: Path) -> None:
    captions_a = [["b", "a", "b", "c", "a"], [], ["a", "a"]]
    captions_b = [["a", "z"], ["y", "x", "y"]]  # "a" again, but of another image: kept
    files = [
        write(tmp_path / "vg_0.arrow", CAPTION, caption_rows(0, captions_a)),
        write(tmp_path / "vg_1.arrow", CAPTION, caption_rows(3, captions_b)),
    ]
    expected = [(0, "b"), (0, "a"), (0, "c"), (2, "a"), (3, "a"), (3, "z"), (4, "y"), (4, "x")]
    data = CaptionPairs(files, to_tensor, dedup=True)
    assert [(s["image_index"], s["text"]) for s in samples(data)] == expected
    assert [s["text_index"] for s in samples(data)] == list(range(len(expected)))
    assert data[3]["image"][:, 0, 0].tolist() == list(colour(2))
    # The default keeps every pair, duplicates included.
    assert len(CaptionPairs(files, to_tensor)) == len(naive_pairs(captions_a + captions_b)) == 12


def test_tables_are_memory_mapped(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    path = write(
        tmp_path / "big.arrow",
        CAPTION,
        {
            "image": [buffer.getvalue()] * 200,
            "caption": [["x"]] * 200,
            "image_id": ["i"] * 200,
            "split": ["train"] * 200,
        },
    )
    before = pa.total_allocated_bytes()
    data = CaptionPairs([path], to_tensor)
    assert pa.total_allocated_bytes() - before < path.stat().st_size / 10
    assert len(pickle.dumps(data)) < path.stat().st_size / 10  # pickles by path, re-maps on load
    clone = pickle.loads(pickle.dumps(data))
    assert torch.equal(clone[199]["image"], data[199]["image"])


def test_vilt_pandas_written_tables_read_the_same(tmp_path: Path, caption_files: list[Path]) -> None:
    # ViLT writes through pandas: pandas metadata, its own column order, maybe large string types.
    frame = pd.DataFrame(caption_rows(0, CAPTIONS_A))[["split", "image_id", "caption", "image"]]
    table = pa.Table.from_pandas(frame)
    assert table.schema.metadata and b"pandas" in table.schema.metadata
    path = tmp_path / "vilt.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    ours, theirs = CaptionPairs(caption_files[:1], to_tensor), CaptionPairs([path], to_tensor)
    assert len(ours) == len(theirs)
    for index in range(len(ours)):
        a, b = ours[index], theirs[index]
        assert a["text"] == b["text"] and torch.equal(a["image"], b["image"])


def test_missing_or_malformed_inputs_name_the_file(tmp_path: Path, caption_files: list[Path]) -> None:
    with pytest.raises(ReaderError, match="nope.arrow"):
        CaptionPairs([caption_files[0], tmp_path / "nope.arrow"], to_tensor)
    not_arrow = tmp_path / "junk.arrow"
    not_arrow.write_bytes(b"not arrow at all")
    with pytest.raises(ReaderError, match="junk.arrow"):
        CaptionPairs([not_arrow], to_tensor)
    with pytest.raises(ReaderError, match="sbu_0.arrow: no column 'questions'"):
        VQADataset(caption_files[:1], to_tensor, num_answers=3)
    rows = caption_rows(0, CAPTIONS_B)
    rows["image"][1] = b"\x89PNG broken"
    broken = CaptionPairs([write(tmp_path / "broken.arrow", CAPTION, rows)], to_tensor)
    assert broken.caption(1) == "x"
    with pytest.raises(ReaderError, match="broken.arrow row 1"):
        broken[1]


def test_retrieval_sides_and_index(caption_files: list[Path]) -> None:
    data = RetrievalDataset(caption_files, to_tensor)
    expected = naive_pairs(CAPTIONS_A + CAPTIONS_B)
    assert (data.num_images, data.num_texts) == (5, len(expected))
    assert data.text_to_image.tolist() == [row for row, _ in expected]
    assert [t.tolist() for t in data.image_to_texts] == [[0, 1], [], [2, 3, 4], [5], [6, 7, 8, 9]]
    assert [data.text_side[j]["text"] for j in range(data.num_texts)] == [text for _, text in expected]
    assert [data.image_side[i]["image"][:, 0, 0].tolist() for i in range(5)] == [list(colour(i)) for i in range(5)]
    capped = RetrievalDataset(caption_files, to_tensor, captions_per_image=2)
    assert [(s["image_index"], s["text"]) for s in samples(capped)] == [
        (r, t) for r, texts in enumerate(CAPTIONS_A + CAPTIONS_B) for t in texts[:2]
    ]


def vqa_rows() -> dict[str, list]:
    return {
        "image": [png(0), png(1), png(2)],
        "questions": [["what colour?", "how many?"], ["is it red?"], ["test question?"]],
        "answers": [[["red", "blue"], ["2"]], [["yes"]], []],
        "answer_labels": [[[0, 1], [2]], [[3]], []],
        "answer_scores": [[[1.0, 0.3], [0.9]], [[0.6]], []],
        "image_id": [10, 11, 12],
        "question_id": [[100, 101], [110], [120]],
        "split": ["train", "train", "test"],
    }


def test_vqa_one_sample_per_question_with_soft_targets(tmp_path: Path) -> None:
    data = VQADataset([write(tmp_path / "vqav2_train.arrow", VQA, vqa_rows())], to_tensor, num_answers=5)
    assert len(data) == 4
    assert [data[i]["question_id"] for i in range(4)] == [100, 101, 110, 120]
    first = data[0]
    assert first["text"] == "what colour?" and first["answers"] == ["red", "blue"] and first["image_index"] == 0
    assert first["target"].tolist() == pytest.approx([1.0, 0.3, 0, 0, 0])
    assert data[2]["target"].tolist() == pytest.approx([0, 0, 0, 0.6, 0])
    assert data[2]["image"][:, 0, 0].tolist() == list(colour(1))
    test = data[3]
    assert test["answers"] == [] and test["answer_labels"] == [] and test["target"].sum() == 0


@pytest.mark.parametrize(
    "field, value, needle",
    [
        ("answer_labels", [[[0, 1]], [[3]], []], "row 0"),  # one label list for two questions
        ("question_id", [[100], [110], [120]], "row 0"),
        ("answer_scores", [[[1.0], [0.9]], [[0.6]], []], "unequal label and score"),
        ("answer_labels", [[[0, 1], [2]], [[7]], []], "outside"),  # label beyond num_answers
    ],
)
def test_vqa_inconsistent_rows_are_errors(tmp_path: Path, field: str, value: list, needle: str) -> None:
    rows = vqa_rows()
    rows[field] = value
    with pytest.raises(ReaderError, match=needle):
        VQADataset([write(tmp_path / "vqa.arrow", VQA, rows)], to_tensor, num_answers=5)


def nlvr2_rows(answers: list[list[str]]) -> dict[str, list]:
    return {
        "image_0": [png(0), png(2)],
        "image_1": [png(1), png(3)],
        "questions": [["left has more", "both have dogs"], ["right is empty"]],
        "answers": answers,
        "identifier": ["dev-1-0", "dev-1-1"],
    }


def test_nlvr2_statements_labels_and_image_pairs(tmp_path: Path) -> None:
    data = NLVR2Dataset(
        [write(tmp_path / "nlvr2_dev.arrow", NLVR2, nlvr2_rows([["True", "False"], ["False"]]))], to_tensor
    )
    got = [(s["text"], s["label"], s["identifier"], s["statement_index"]) for s in samples(data)]
    assert got == [
        ("left has more", 1, "dev-1-0", 0),
        ("both have dogs", 0, "dev-1-0", 1),
        ("right is empty", 0, "dev-1-1", 0),
    ]
    last = data[2]
    assert last["image_0"][:, 0, 0].tolist() == list(colour(2)) and last["image_1"][:, 0, 0].tolist() == list(colour(3))


@pytest.mark.parametrize(
    "answers, needle",
    [([["True", "maybe"], ["False"]], "maybe"), ([["True"], ["False"]], "2 statements but 1 answers")],
)
def test_nlvr2_bad_answers_are_errors(tmp_path: Path, answers: list[list[str]], needle: str) -> None:
    with pytest.raises(ReaderError, match=needle):
        NLVR2Dataset([write(tmp_path / "nlvr2.arrow", NLVR2, nlvr2_rows(answers))], to_tensor)


def test_arrow_tables_locate_rows_across_files(caption_files: list[Path]) -> None:
    tables = ArrowTables(caption_files, CAPTION, ("caption",))
    assert len(tables) == 5
    assert tables.where(2).endswith("sbu_0.arrow row 2") and tables.where(4).endswith("sbu_1.arrow row 1")
    assert tables.list_lengths("caption").tolist() == [2, 0, 3, 1, 4]


# --- ViLT-written VQA tables ------------------------------------------------------------------------


def write_vilt(path: Path, rows: dict[str, list]) -> Path:
    """A VQA table as ViLT's write_vqa.py writes one: a pandas frame, test answer columns ``[]``."""
    columns = ["image", "questions", "answers", "answer_labels", "answer_scores", "image_id", "question_id", "split"]
    table = pa.Table.from_pandas(pd.DataFrame([list(r) for r in zip(*(rows[c] for c in columns))], columns=columns))
    with pa.OSFile(str(path), "wb") as sink, pa.RecordBatchFileWriter(sink, table.schema) as writer:
        writer.write_table(table)
    return path


def test_vilt_test_tables_with_null_typed_answer_columns_read_the_same(tmp_path: Path) -> None:
    rows = {k: v[2:] for k, v in vqa_rows().items()}  # the test row only
    theirs = write_vilt(tmp_path / "vilt_test.arrow", rows)
    with pa.OSFile(str(theirs)) as source:
        schema = pa.ipc.open_file(source).schema
    assert all(schema.field(c).type == pa.list_(pa.null()) for c in ("answers", "answer_labels", "answer_scores"))
    ours = VQADataset([write(tmp_path / "ours.arrow", VQA, rows)], to_tensor, num_answers=5)
    vilt = VQADataset([theirs], to_tensor, num_answers=5)
    assert len(vilt) == len(ours) == 1
    a, b = ours[0], vilt[0]
    assert {k: v for k, v in a.items() if k not in ("image", "target")} == {
        k: v for k, v in b.items() if k not in ("image", "target")
    }
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["target"], b["target"])
    assert b["answers"] == [] and b["target"].sum() == 0


def vqa_pairs(labels: list, answers: list) -> dict[str, list]:
    rows = vqa_rows()
    rows["answer_labels"], rows["answers"] = labels, answers
    rows["answer_scores"] = [[[0.3] * len(q) for q in row] for row in labels]
    return rows


def test_answer_list_rebuilt_from_the_tables(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    train = write_vilt(tmp_path / "train.arrow", vqa_rows())
    val = write_vilt(
        tmp_path / "val.arrow", vqa_pairs([[[5, 0], [2]], [[2]], []], [[["green", "red"], ["2"]], [["2"]], []])
    )
    # Labels 0-3 from train, 5 from val, 4 nowhere: max label + 1 = 6 entries, 4 named as unseen.
    with caplog.at_level("WARNING"):
        answers = answers_from_tables([train, val])
    assert answers == ["red", "blue", "2", "yes", UNSEEN_ANSWER.format(label=4), "green"]
    assert "1 of 6 labels never appear" in caplog.text
    assert answers_from_tables([train]) == ["red", "blue", "2", "yes"]


@pytest.mark.parametrize(
    "labels, answers, needle",
    [
        ([[[0, 1], [2]], [[1]], []], [[["red", "blue"], ["2"]], [["yes"]], []], "label 1 is both 'blue' and 'yes'"),
        ([[[0, 1], [2]], [[4]], []], [[["red", "blue"], ["2"]], [["2"]], []], "answer '2' has labels 2 and 4"),
        ([[[0, 1], [2]], [[3]], []], [[["red"], ["2"]], [["yes"]], []], "unequal answer and label lists"),
    ],
)
def test_answer_list_conflicts_within_a_table_name_it(tmp_path: Path, labels: list, answers: list, needle: str) -> None:
    path = write_vilt(tmp_path / "vqav2_train.arrow", vqa_pairs(labels, answers))
    with pytest.raises(ReaderError, match=needle) as err:
        answers_from_tables([path])
    assert str(path) in str(err.value)


def test_answer_list_conflicts_across_tables_name_both(tmp_path: Path) -> None:
    train = write_vilt(tmp_path / "vqav2_train.arrow", vqa_rows())
    val = write_vilt(
        tmp_path / "vqav2_val.arrow", vqa_pairs([[[0], [2]], [[3]], []], [[["purple"], ["2"]], [["yes"]], []])
    )
    with pytest.raises(ReaderError, match="label 0 is 'purple', but 'red' in") as err:
        answers_from_tables([train, val])
    assert str(train) in str(err.value) and str(val) in str(err.value)
    test_only = write_vilt(tmp_path / "vqav2_test.arrow", {k: v[2:] for k, v in vqa_rows().items()})
    with pytest.raises(ReaderError, match="no answers"):
        answers_from_tables([test_only])
