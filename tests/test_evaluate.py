"""``python -m vlmerge.evaluate``: result JSON per task checked against direct computations and naive
baselines, the VQA submission, lineage from sidecars, one-line errors."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from tests.builders import build_task_data, naive_question_accuracy, tiny_model
from vlmerge.data.collate import BatchCollator
from vlmerge.data.tokenizer import load_tokenizer
from vlmerge.data.transforms import eval_transform
from vlmerge.evaluate.cli import main
from vlmerge.metrics import retrieval_recall
from vlmerge.model import Heads
from vlmerge.model.checkpoint import read_meta, save_model
from vlmerge.tasks import get_task
from vlmerge.tasks.lineage import weights_sha256
from vlmerge.tasks.nlvr2 import nlvr2_logits
from vlmerge.tasks.retrieval import image_features, text_features
from vlmerge.tasks.shards import Indexed
from vlmerge.tasks.vqa import answer_vocabulary, vqa_logits


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return build_task_data(tmp_path_factory.mktemp("evaluate-data"))


@pytest.fixture(scope="module")
def vocab(data) -> int:
    return len(load_tokenizer(data[1]))


def evaluate_args(data, task: str, ckpt: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--task",
        task,
        "--ckpt",
        str(ckpt),
        "--arrow",
        str(data[0]),
        "--tokenizer",
        str(data[1]),
        "--out",
        str(out),
        "--num-workers",
        "0",
        "--batch-size",
        "3",
        "--device",
        "cpu",
        *extra,
    ]


def whole_split(task: str, arrow: Path, split: str, tokenizer_dir: Path, side: int = 0) -> dict:
    """One batch holding every sample of a split's side, as the evaluation sees them."""
    dataset = get_task(task).eval_sides(arrow, split, eval_transform(32))[side]
    return BatchCollator(load_tokenizer(tokenizer_dir))([Indexed(dataset)[i] for i in range(len(dataset))])


def table(arrow: Path, name: str) -> pa.Table:
    return pa.ipc.open_file(pa.memory_map(str(arrow / name))).read_all()


def check_common(result: dict, ckpt: Path, task: str) -> None:
    assert result["task"] == task
    assert result["checkpoint"]["sha256"] == weights_sha256(ckpt)
    assert result["checkpoint"]["model_config_hash"] == json.loads(ckpt.with_suffix(".json").read_text())["config_hash"]
    assert result["lineage"]["checkpoint_sha256"] == weights_sha256(ckpt)
    for split in result["splits"].values():
        assert set(split["metrics"]) == set(split["baseline"]) == set(split["margin"])
        for key, value in split["metrics"].items():
            assert 0 <= value <= 1 and 0 <= split["baseline"][key] <= 1
            assert split["margin"][key] == pytest.approx(value - split["baseline"][key])
    assert result["timings"]["total_s"] > 0


# --- VQA ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vqa_ckpt(data, vocab, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("vqa-ckpt") / "merged_vqa.safetensors"
    heads = get_task("vqa").heads(data[0])
    save_model(
        path,
        tiny_model(vocab, "shared", heads, seed=3),
        extra={"merge": {"method": "interpolation", "params": {"ratio": 0.5}, "paper": "x"}},
    )
    return path


def naive_constant_answer(arrow: Path) -> int:
    totals: Counter[int] = Counter()
    rows = table(arrow, "vqav2_train.arrow")
    for labels, scores in zip(rows.column("answer_labels").to_pylist(), rows.column("answer_scores").to_pylist()):
        for question_labels, question_scores in zip(labels, scores):
            totals.update(dict(zip(question_labels, question_scores)))
    best = max(totals.values())
    return min(label for label, total in totals.items() if total == best)


def test_vqa_scores_submission_and_baseline(data, vqa_ckpt, tmp_path: Path) -> None:
    arrow, tokenizer_dir, raw = data
    vocabulary, batch = answer_vocabulary(arrow), whole_split("vqa", arrow, "rest_val", tokenizer_dir)
    model = tiny_model(len(load_tokenizer(tokenizer_dir)), "shared", get_task("vqa").heads(arrow), seed=3).eval()
    with torch.no_grad():
        predicted = vqa_logits(model, batch).argmax(dim=1).tolist()
    ids = batch["question_id"].tolist()
    # Human answers unlike the tables' soft scores: two humans agree with the model ("Two" spelt out
    # where the answer is a number), eight give an answer outside the vocabulary → accuracy 0.6 each.
    humans = {q: [vocabulary[p].replace("2", "Two")] * 2 + ["zebra crossing"] * 8 for q, p in zip(ids, predicted)}
    annotations = tmp_path / "annotations.json"
    annotations.write_text(
        json.dumps(
            {
                "annotations": [
                    {"question_id": q, "answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(h)]}
                    for q, h in humans.items()
                ]
            }
        )
    )
    out = tmp_path / "results" / "vqa" / "regmean.json"
    assert main(evaluate_args(data, "vqa", vqa_ckpt, out, "--vqa-annotations", str(annotations))) == 0
    result = json.loads(out.read_text())
    check_common(result, vqa_ckpt, "vqa")
    assert result["method"] == "regmean" and result["lineage"]["merge"] == {
        "method": "interpolation",
        "params": {"ratio": 0.5},
    }
    split = result["splits"]["rest_val"]
    assert split["samples"] == [len(ids)]
    soft = float(batch["target"][torch.arange(len(ids)), predicted].mean())
    assert split["metrics"]["vqa_score"] == pytest.approx(soft)
    assert split["metrics"]["vqa_accuracy"] == pytest.approx(0.6)
    constant = naive_constant_answer(arrow)
    assert vocabulary[constant] in split["baseline_kind"]
    assert split["baseline"]["vqa_score"] == pytest.approx(float(batch["target"][:, constant].mean()))
    assert split["baseline"]["vqa_accuracy"] == pytest.approx(
        sum(naive_question_accuracy(vocabulary[constant], humans[q]) for q in ids) / len(ids)
    )
    # the submission: every test-dev question of the raw file exactly once, answers from the vocabulary
    submission = json.loads((out.parent / "regmean.submission-test-dev.json").read_text())
    questions = json.loads((raw / "vqa" / "v2_OpenEnded_mscoco_test-dev2015_questions.json").read_text())
    assert sorted(e["question_id"] for e in submission) == sorted(q["question_id"] for q in questions["questions"])
    assert all(e["answer"] in vocabulary for e in submission)
    assert result["vqa"] == {
        "accuracy_source": "annotations",
        "submission": {"split": "test-dev", "file": "regmean.submission-test-dev.json", "questions": len(submission)},
    }


def test_vqa_accuracy_without_annotations_is_the_soft_score(data, vqa_ckpt, tmp_path: Path) -> None:
    out = tmp_path / "ma.json"
    assert main(evaluate_args(data, "vqa", vqa_ckpt, out, "--method", "ma-200k")) == 0
    result = json.loads(out.read_text())
    metrics, baseline = result["splits"]["rest_val"]["metrics"], result["splits"]["rest_val"]["baseline"]
    assert metrics["vqa_accuracy"] == pytest.approx(metrics["vqa_score"])
    assert baseline["vqa_accuracy"] == pytest.approx(baseline["vqa_score"])
    assert result["method"] == "ma-200k" and result["vqa"]["accuracy_source"] == "soft scores"


# --- NLVR2 and retrieval ------------------------------------------------------------------------------


def test_nlvr2_accuracy_on_dev_and_test1(data, vocab, tmp_path: Path) -> None:
    arrow, tokenizer_dir, _ = data
    ckpt = tmp_path / "ms_nlvr2.safetensors"
    model = tiny_model(vocab, "modality_specific", get_task("nlvr2").heads(arrow), seed=5).eval()
    save_model(ckpt, model)
    assert main(evaluate_args(data, "nlvr2", ckpt, tmp_path / "ms.json")) == 0
    result = json.loads((tmp_path / "ms.json").read_text())
    check_common(result, ckpt, "nlvr2")
    assert result["checkpoint"]["sharing"] == "modality_specific" and sorted(result["splits"]) == ["dev", "test1"]
    train_labels = [a == "True" for row in table(arrow, "nlvr2_train.arrow").column("answers").to_pylist() for a in row]
    majority = int(sum(train_labels) > len(train_labels) / 2)
    for split in ("dev", "test1"):
        batch = whole_split("nlvr2", arrow, split, tokenizer_dir)
        with torch.no_grad():
            predicted = nlvr2_logits(model, batch).argmax(dim=1)
        scores = result["splits"][split]
        assert scores["metrics"]["accuracy"] == pytest.approx(float((predicted == batch["label"]).double().mean()))
        assert scores["baseline"]["accuracy"] == pytest.approx(float((batch["label"] == majority).double().mean()))


def test_zero_shot_retrieval_of_a_pretrained_checkpoint(data, vocab, tmp_path: Path) -> None:
    arrow, tokenizer_dir, _ = data
    ckpt = tmp_path / "seed.safetensors"
    model = tiny_model(vocab, "shared", Heads.pretraining(), seed=7).eval()
    save_model(ckpt, model, extra={"stage": "pretrain", "init": "scratch"})
    assert main(evaluate_args(data, "coco", ckpt, tmp_path / "zero_shot.json")) == 0
    result = json.loads((tmp_path / "zero_shot.json").read_text())
    check_common(result, ckpt, "coco")
    images, texts = (whole_split("coco", arrow, "test", tokenizer_dir, side) for side in (0, 1))
    with torch.no_grad():
        sims = (
            torch.nn.functional.normalize(image_features(model, images["image"]), dim=-1)
            @ torch.nn.functional.normalize(text_features(model, texts["text_ids"], texts["text_mask"]), dim=-1).T
        )
    expected = retrieval_recall(sims, texts["image_index"])
    metrics = result["splits"]["test"]["metrics"]
    assert {k: metrics[k] for k in expected} == pytest.approx(expected)
    n_images = len(images["image"])
    assert result["splits"]["test"]["baseline"]["ir_r1"] == pytest.approx(1 / n_images)
    assert result["splits"]["test"]["samples"] == [n_images, len(texts["text_ids"])]
    assert result["lineage"]["stage"] == "pretrain" and result["checkpoint"]["trained_for"] is None


# --- errors -------------------------------------------------------------------------------------------


def error_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("vlmerge.evaluate")]
    assert len(lines) == 1 and lines[0].startswith("vlmerge.evaluate: error: ") and "Traceback" not in err, err
    return lines[0]


def test_bad_input_is_a_one_line_error(data, vocab, vqa_ckpt, tmp_path: Path, capsys) -> None:
    out = tmp_path / "x.json"
    assert "lacks the nlvr2 head" in error_of(evaluate_args(data, "nlvr2", vqa_ckpt, out), capsys)
    assert "does not exist" in error_of(evaluate_args(data, "vqa", tmp_path / "none.safetensors", out), capsys)
    assert "expected a .json" in error_of(evaluate_args(data, "vqa", vqa_ckpt, tmp_path / "x.csv"), capsys)
    other = tmp_path / "other_vocab.safetensors"
    save_model(other, tiny_model(vocab + 1, "shared", get_task("vqa").heads(data[0])))
    assert "tokens but" in error_of(evaluate_args(data, "vqa", other, out), capsys)
    assert "cannot read VQA annotations" in error_of(
        evaluate_args(data, "vqa", vqa_ckpt, out, "--vqa-annotations", str(other.with_suffix(".safetensors"))), capsys
    )
    assert not out.exists() and read_meta(vqa_ckpt).heads.vqa_answers > 0


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        (("--config", '{"batch_sise": 3}'), "batch_sise: Extra inputs are not permitted"),
        (("--num-workers", "-1"), "num_workers: Input should be greater than or equal to 0"),
        (("--config", '{"vqa_submission_split": "val"}'), "vqa_submission_split: Input should be 'test-dev' or 'test'"),
        (("--device", "gpu0"), "device 'gpu0'"),
    ],
)
def test_a_bad_setting_is_one_line_naming_its_key(extra, key, data, vqa_ckpt, tmp_path: Path, capsys) -> None:
    assert key in error_of(evaluate_args(data, "vqa", vqa_ckpt, tmp_path / "x.json", *extra), capsys)
    assert not (tmp_path / "x.json").exists()


def test_a_flag_overrides_its_key_of_config(data, tmp_path: Path, capsys) -> None:
    # --config's batch size 0 would be refused; the flag's 3 wins, so the missing checkpoint is what fails.
    argv = evaluate_args(
        data, "vqa", tmp_path / "none.safetensors", tmp_path / "x.json", "--config", '{"batch_size": 0, "task": "coco"}'
    )
    assert error_of(argv, capsys).endswith("none.safetensors does not exist")
