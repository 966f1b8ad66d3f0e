"""raw → ViLT Arrow converters (`python -m vlmerge.prepare`), checked against naive readings of the raw files."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
import pytest
import yaml
from PIL import Image

from vlmerge.data.arrow import ConvertOptions
from vlmerge.data.arrow.writer import TableWriter
from vlmerge.data.schema import CAPTION, DATASETS, FILES, NLVR2_SUBSETS, SCHEMAS, VQA_ANSWERS_FILE, manifest_name
from vlmerge.data.synth import generate
from vlmerge.metrics import normalize_answer
from vlmerge.prepare.cli import main
from vlmerge.prepare.config import PrepareSettings

ROOT = Path(__file__).resolve().parents[1]
MIN_ANSWERS, REST_VAL = 3, 5


def prepare(dataset: str, raw: Path, out: Path, *extra: str) -> dict:
    assert main(["--dataset", dataset, "--raw", str(raw), "--out", str(out), *extra]) == 0
    return json.loads((out / manifest_name(dataset)).read_text())


def read_rows(path: Path) -> list[dict]:
    with pa.OSFile(str(path)) as source:
        return pa.ipc.open_file(source).read_all().to_pylist()


def read_schema(path: Path) -> pa.Schema:
    with pa.OSFile(str(path)) as source:
        return pa.ipc.open_file(source).schema


@pytest.fixture(scope="session")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    generate(root, seed=0, size="tiny")
    return root


@pytest.fixture(scope="session")
def arrow(raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("arrow")
    for dataset in DATASETS:
        prepare(dataset, raw / dataset, out, "--min-answer-count", str(MIN_ANSWERS), "--rest-val-images", str(REST_VAL))
    return out


# --- every table: names, schemas, manifest --------------------------------------------------------


def test_tables_have_the_declared_names_schemas_and_checksums(arrow: Path) -> None:
    for dataset in DATASETS:
        manifest = json.loads((arrow / manifest_name(dataset)).read_text())
        expected = {pattern.replace("{shard}", "0") for pattern in FILES[dataset].values()}
        if dataset == "vqa":
            expected.add(VQA_ANSWERS_FILE)
        assert set(manifest["files"]) == expected
        for name, digest in manifest["files"].items():
            assert hashlib.sha256((arrow / name).read_bytes()).hexdigest() == digest
        for split, pattern in FILES[dataset].items():
            path = arrow / pattern.replace("{shard}", "0")
            assert read_schema(path).equals(SCHEMAS[dataset], check_metadata=True)
            assert len(read_rows(path)) == manifest["splits"][split]["rows"] > 0
        assert manifest["provenance"]["stage"] == "prepare"
        assert manifest["options"]["min_answer_count"] == MIN_ANSWERS


def test_reconversion_is_byte_identical(raw: Path, arrow: Path, tmp_path: Path) -> None:
    for dataset in DATASETS:
        first = json.loads((arrow / manifest_name(dataset)).read_text())["files"]
        again = prepare(
            dataset, raw / dataset, tmp_path, "--min-answer-count", str(MIN_ANSWERS), "--rest-val-images", str(REST_VAL)
        )["files"]
        assert again == first
        for name in first:
            assert (tmp_path / name).read_bytes() == (arrow / name).read_bytes(), name


def test_batch_size_changes_bytes_but_not_rows(raw: Path, arrow: Path, tmp_path: Path) -> None:
    prepare("coco", raw / "coco", tmp_path, "--batch-rows", "5")
    for pattern in FILES["coco"].values():
        assert read_rows(tmp_path / pattern) == read_rows(arrow / pattern)


# --- round trips against naive readings of the raw files -------------------------------------------


@pytest.mark.parametrize("dataset", ["coco", "f30k"])
def test_karpathy_round_trip(raw: Path, arrow: Path, dataset: str) -> None:
    name = {"coco": "dataset_coco.json", "f30k": "dataset_flickr30k.json"}[dataset]
    images = json.loads((raw / dataset / "karpathy" / name).read_text())["images"]
    expected: dict[str, dict[str, tuple]] = {split: {} for split in FILES[dataset]}
    for image in images:
        path = raw / dataset / image.get("filepath", "flickr30k-images") / image["filename"]
        expected[image["split"]][image["filename"]] = ([s["raw"] for s in image["sentences"]], path.read_bytes())
    for split, pattern in FILES[dataset].items():
        rows = read_rows(arrow / pattern)
        assert [r["image_id"] for r in rows] == sorted(expected[split])
        for row in rows:
            assert (row["caption"], row["image"]) == expected[split][row["image_id"]]
            assert row["split"] == split


def naive_vilt_vocabulary(annotation_lists: list[list[dict]], min_count: int) -> list[str]:
    """ViLT's ``write_vqa.py`` vocabulary as a plain loop: the normalised ``multiple_choice_answer`` of
    train then val, each answer placed where it is first seen, kept if seen at least ``min_count`` times."""
    majority = [normalize_answer(a["multiple_choice_answer"]) for records in annotation_lists for a in records]
    vocabulary: list[str] = []
    for answer in majority:
        if answer not in vocabulary and majority.count(answer) >= min_count:
            vocabulary.append(answer)
    return vocabulary


def naive_vqa_rows(root: Path, min_count: int, counting: str = "normalized") -> tuple[list[str], dict[str, list[dict]]]:
    """The VQA tables computed the slow, obvious way (scores as min(1, 0.3·n) rounded to 0.1); with
    ``counting="raw"`` the human answers are compared as typed, as ViLT's ``write_vqa.py`` does."""
    subsets = {"train": "train2014", "val": "val2014", "test": "test2015", "test-dev": "test-dev2015"}
    annotations = {
        s: json.loads((root / f"v2_mscoco_{subsets[s]}_annotations.json").read_text())["annotations"]
        for s in ("train", "val")
    }
    vocabulary = naive_vilt_vocabulary([annotations["train"], annotations["val"]], min_count)
    by_qid = {a["question_id"]: a for s in annotations.values() for a in s}
    tables = {}
    for split, subset in subsets.items():
        folder = "test2015" if split.startswith("test") else subset
        rows: dict[int, dict] = {}
        questions = json.loads((root / f"v2_OpenEnded_mscoco_{subset}_questions.json").read_text())["questions"]
        for q in sorted(questions, key=lambda q: q["question_id"]):
            row = rows.setdefault(
                q["image_id"],
                {"questions": [], "question_id": [], "answers": [], "answer_labels": [], "answer_scores": []},
            )
            if split in annotations:
                given = [a["answer"] for a in by_qid[q["question_id"]]["answers"]]
                if counting == "normalized":
                    given = [normalize_answer(a) for a in given]
                kept = [a for a in dict.fromkeys(given) if a in vocabulary]
                if not kept:
                    continue
                row["answers"].append(kept)
                row["answer_labels"].append([vocabulary.index(a) for a in kept])
                row["answer_scores"].append([min(1.0, round(0.3 * given.count(a), 1)) for a in kept])
            row["questions"].append(q["question"])
            row["question_id"].append(q["question_id"])
        tables[split] = [
            {
                **row,
                "image_id": image_id,
                "split": split,
                "image": (root / folder / f"COCO_{folder}_{image_id:012d}.jpg").read_bytes(),
            }
            for image_id, row in sorted(rows.items())
            if row["questions"]
        ]
    return vocabulary, tables


def test_vqa_round_trip(raw: Path, arrow: Path) -> None:
    vocabulary, expected = naive_vqa_rows(raw / "vqa", MIN_ANSWERS)
    assert json.loads((arrow / VQA_ANSWERS_FILE).read_text()) == vocabulary
    # First-seen order is not the count order on this data: the test can tell them apart.
    counts = Counter(
        normalize_answer(a["multiple_choice_answer"])
        for subset in ("train2014", "val2014")
        for a in json.loads((raw / "vqa" / f"v2_mscoco_{subset}_annotations.json").read_text())["annotations"]
    )
    assert vocabulary != sorted(vocabulary, key=lambda a: (-counts[a], a))
    for split, rows in expected.items():
        assert read_rows(arrow / FILES["vqa"][split]) == rows, split
    val = expected["val"]
    assert read_rows(arrow / FILES["vqa"]["trainable_val"]) == val[:-REST_VAL]
    assert read_rows(arrow / FILES["vqa"]["rest_val"]) == val[-REST_VAL:]


def test_vqa_round_trip_with_raw_counting(raw: Path, arrow: Path, tmp_path: Path) -> None:
    manifest = prepare(
        "vqa",
        raw / "vqa",
        tmp_path,
        "--min-answer-count",
        str(MIN_ANSWERS),
        "--rest-val-images",
        str(REST_VAL),
        "--vqa-answer-counting",
        "raw",
    )
    assert manifest["options"]["vqa_answer_counting"] == "raw"
    vocabulary, expected = naive_vqa_rows(raw / "vqa", MIN_ANSWERS, counting="raw")
    # The label ids do not depend on the counting: both follow write_vqa's first-seen order.
    assert json.loads((tmp_path / VQA_ANSWERS_FILE).read_text()) == vocabulary
    assert vocabulary == json.loads((arrow / VQA_ANSWERS_FILE).read_text())
    for split, rows in expected.items():
        assert read_rows(tmp_path / FILES["vqa"][split]) == rows, split
    # The synthetic annotators type "Two", "Red." or "YES": raw counting gives other scores than normalised.
    train = FILES["vqa"]["train"]
    assert read_rows(tmp_path / train) != read_rows(arrow / train)


def nlvr2_annotation(root: Path, split: str) -> Path:
    """``nlvr2/data/<split>.json``, or ``nlvr2/data/<subset>/<subset>_<split>.json`` for the subsets."""
    subset = split.partition("_")[0] if split in NLVR2_SUBSETS else ""
    return root / "nlvr2" / "data" / subset / f"{split}.json"


def test_nlvr2_round_trip(raw: Path, arrow: Path) -> None:
    root = raw / "nlvr2"
    # ViLT's DATA.md layout: dev/ and test1/ at the root, train under images/train/<directory>/.
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["dev", "images", "nlvr2", "test1"]
    for split, pattern in FILES["nlvr2"].items():
        pairs: dict[str, dict] = {}
        for line in nlvr2_annotation(root, split).read_text().splitlines():
            record = json.loads(line)
            pair_id = "-".join(record["identifier"].split("-")[:-1])
            pair = pairs.setdefault(pair_id, {"questions": [], "answers": [], "identifier": pair_id})
            pair["questions"].append(record["sentence"])
            pair["answers"].append(record["label"])
        for pair_id, pair in pairs.items():
            for k in (0, 1):
                (found,) = root.rglob(f"{pair_id}-img{k}.png")
                pair[f"image_{k}"] = found.read_bytes()
        assert read_rows(arrow / pattern) == list(pairs.values())
    # The balanced and unbalanced subsets split dev and test1 between them, statement by statement.
    for split in ("dev", "test1"):
        statements = {
            (r["identifier"], q, a)
            for subset in ("balanced", "unbalanced")
            for r in read_rows(arrow / FILES["nlvr2"][f"{subset}_{split}"])
            for q, a in zip(r["questions"], r["answers"])
        }
        whole = [
            (r["identifier"], q, a)
            for r in read_rows(arrow / FILES["nlvr2"][split])
            for q, a in zip(r["questions"], r["answers"])
        ]
        assert statements == set(whole) and len(whole) == len(set(whole))
        assert all(read_rows(arrow / FILES["nlvr2"][f"{subset}_{split}"]) for subset in ("balanced", "unbalanced"))


def test_nlvr2_without_subsets_and_with_images_under_images(raw: Path, arrow: Path, tmp_path: Path) -> None:
    """Copies without balanced/unbalanced files give the three main tables; dev/ and test1/ may sit under images/."""
    root = Path(shutil.copytree(raw / "nlvr2", tmp_path / "nlvr2"))
    for subset in ("balanced", "unbalanced"):
        shutil.rmtree(root / "nlvr2" / "data" / subset)
    for split in ("dev", "test1"):
        (root / split).rename(root / "images" / split)
    manifest = prepare("nlvr2", root, tmp_path / "out")
    assert sorted(manifest["files"]) == sorted(FILES["nlvr2"][s] for s in ("train", "dev", "test1"))
    for split in ("train", "dev", "test1"):
        assert read_rows(tmp_path / "out" / FILES["nlvr2"][split]) == read_rows(arrow / FILES["nlvr2"][split])


def test_vg_round_trip(raw: Path, arrow: Path) -> None:
    root = raw / "vg"
    expected = []
    for entry in sorted(
        json.loads((root / "annotations" / "region_descriptions.json").read_text()), key=lambda e: e["id"]
    ):
        regions = entry["regions"]
        (image,) = (root / "images").rglob(f"{entry['id']}.jpg")
        expected.append(
            {
                "image": image.read_bytes(),
                "caption": [r["phrase"] for r in regions],
                **{k: [r[k] for r in regions] for k in ("width", "height", "x", "y")},
                "image_id": str(entry["id"]),
            }
        )
    assert read_rows(arrow / FILES["vg"]["train"]) == expected


@pytest.mark.parametrize("dataset", ["sbu", "gcc"])
def test_web_captions_round_trip_and_missing_images_reported(raw: Path, arrow: Path, dataset: str) -> None:
    annotations = {"sbu": {"train": "annot.json"}, "gcc": {"train": "train_annot.json", "val": "val_annot.json"}}
    missing = json.loads((raw / "synth.json").read_text())["missing"].get(dataset, {})
    manifest = json.loads((arrow / manifest_name(dataset)).read_text())
    for split, annotation in annotations[dataset].items():
        pairs = {p.split("/")[-1]: c for p, c in json.loads((raw / dataset / annotation).read_text())}
        gone = {f"{dataset}/images_{split}/{name[:4]}/{name}" for name in pairs}.intersection(missing.get(split, []))
        assert len(gone) == len(missing.get(split, []))
        reported = {f"{dataset}/{s['item']}" for s in manifest["skipped"] if s["split"] == split}
        assert reported == gone
        expected = [
            {
                "image": (raw / dataset / f"images_{split}" / name[:4] / name).read_bytes(),
                "caption": [pairs[name]],
                "image_id": name,
                "split": split,
            }
            for name in sorted(pairs)
            if f"{dataset}/images_{split}/{name[:4]}/{name}" not in gone
        ]
        assert read_rows(arrow / FILES[dataset][split].replace("{shard}", "0")) == expected
    assert manifest["skipped_by_reason"] == ({"missing image file": len(manifest["skipped"])} if missing else {})


def test_sharding_and_stale_shards(raw: Path, arrow: Path, tmp_path: Path) -> None:
    whole = read_rows(arrow / "sbu_0.arrow")
    manifest = prepare("sbu", raw / "sbu", tmp_path, "--shard-size", "7")
    sizes = [len(read_rows(tmp_path / f"sbu_{k}.arrow")) for k in range(len(manifest["files"]))]
    assert sizes == [7] * (len(whole) // 7) + [len(whole) % 7]
    assert sum((read_rows(tmp_path / f"sbu_{k}.arrow") for k in range(len(sizes))), []) == whole
    # A rerun with a size that divides the rows exactly: no empty trailing shard, old extra shard removed.
    manifest = prepare("sbu", raw / "sbu", tmp_path, "--shard-size", str(len(whole) // 2))
    assert sorted(manifest["files"]) == ["sbu_0.arrow", "sbu_1.arrow"]
    assert sorted(p.name for p in tmp_path.glob("sbu_*")) == ["sbu_0.arrow", "sbu_1.arrow"]


# --- VQA arithmetic on a hand-made example ---------------------------------------------------------


def write_jpeg(path: Path, colour: str = "red") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), colour).save(path, "JPEG")


def write_hand_made_vqa(root: Path) -> None:
    """6 questions on 5 images; the expected tables are worked out by hand in the test below."""
    for folder, image_id in [("train2014", 1), ("train2014", 2), ("val2014", 3), ("val2014", 5), ("test2015", 4)]:
        write_jpeg(root / folder / f"COCO_{folder}_{image_id:012d}.jpg")

    def dump(name: str, key: str, records: list[dict]) -> None:
        # Extra top-level and per-record fields of the published files must be tolerated.
        (root / name).write_text(json.dumps({"info": {}, "license": {}, key: records}))

    def question(qid: int, text: str) -> dict:
        return {"image_id": qid // 1000, "question": text, "question_id": qid}

    def annotation(qid: int, majority: str, answers: list[str]) -> dict:
        return {
            "question_id": qid,
            "image_id": qid // 1000,
            "answer_type": "other",
            "multiple_choice_answer": majority,
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)],
        }

    dump(
        "v2_OpenEnded_mscoco_train2014_questions.json",
        "questions",
        [
            question(1002, "How many cats?"),
            question(1000, "How many dogs?"),
            question(1001, "What colour?"),
            question(2000, "Is it?"),
        ],
    )
    dump(
        "v2_mscoco_train2014_annotations.json",
        "annotations",
        [
            annotation(1000, "Two", ["2", "two", "Two", "2 ", "2.", "3", "three", "Three", "four", "many"]),
            annotation(
                1001, "Red", ["red", "Red.", "blue", "blue", "blue", "blue", "green", "green", "green", "green"]
            ),
            annotation(1002, "three", ["3"] + ["none"] * 9),
            annotation(2000, "yes", ["maybe"] * 10),
        ],
    )
    dump(
        "v2_OpenEnded_mscoco_val2014_questions.json",
        "questions",
        [question(3000, "How many?"), question(3001, "Which?"), question(5000, "Is it?")],
    )
    dump(
        "v2_mscoco_val2014_annotations.json",
        "annotations",
        [
            annotation(3000, "2", ["two"] * 3 + ["yes"] * 4 + ["no"] * 3),
            annotation(3001, "4", ["IV"] * 10),
            annotation(5000, "yes", ["yes"] * 10),
        ],
    )
    dump("v2_OpenEnded_mscoco_test2015_questions.json", "questions", [question(4000, "What?"), question(4001, "Why?")])
    dump("v2_OpenEnded_mscoco_test-dev2015_questions.json", "questions", [question(4000, "What?")])


def test_vqa_vocabulary_labels_and_scores_by_hand(tmp_path: Path) -> None:
    write_hand_made_vqa(tmp_path / "raw")
    manifest = prepare("vqa", tmp_path / "raw", tmp_path / "out", "--min-answer-count", "1", "--rest-val-images", "1")
    out = tmp_path / "out"
    # multiple_choice_answer after normalisation, train then val: "2" ("Two"), "red", "3", "yes", "2", "4",
    # "yes": labels in the order first seen (ViLT's ids), whatever the counts.
    assert json.loads((out / VQA_ANSWERS_FILE).read_text()) == ["2", "red", "3", "yes", "4"]
    (train,) = read_rows(out / "vqav2_train.arrow")  # image 2's only question has no label: no row
    assert train["image_id"] == 1
    assert train["question_id"] == [1000, 1001, 1002]
    assert train["questions"] == ["How many dogs?", "What colour?", "How many cats?"]
    # q1000: "2" given 5 times (2, two, Two, "2 ", "2."), "3" 3 times, "4" once, "many" not in the vocabulary.
    # q1001: "red" twice (red, Red.); blue and green are not majority answers. q1002: "3" once; "none" → "0".
    assert train["answers"] == [["2", "3", "4"], ["red"], ["3"]]
    assert train["answer_labels"] == [[0, 2, 4], [1], [2]]
    assert train["answer_scores"] == [[1.0, 0.9, 0.3], [0.6], [0.3]]
    val = read_rows(out / "vqav2_val.arrow")
    assert [(r["image_id"], r["question_id"], r["answer_labels"], r["answer_scores"]) for r in val] == [
        (3, [3000], [[0, 3]], [[0.9, 1.0]]),
        (5, [5000], [[3]], [[1.0]]),
    ]
    assert read_rows(out / "vqav2_trainable_val.arrow") == val[:1]
    assert read_rows(out / "vqav2_rest_val.arrow") == val[1:]
    (test,) = read_rows(out / "vqav2_test.arrow")
    assert (test["question_id"], test["answers"], test["answer_labels"], test["answer_scores"]) == (
        [4000, 4001],
        [],
        [],
        [],
    )
    (dev,) = read_rows(out / "vqav2_test-dev.arrow")
    assert (dev["questions"], dev["image"]) == (["What?"], test["image"])
    assert manifest["splits"]["train"] == {"rows": 1, "questions": 3, "questions_without_label": 1}
    assert manifest["splits"]["val"] == {"rows": 2, "questions": 2, "questions_without_label": 1}
    assert manifest["details"]["answer_label_order"] == "vilt"


def test_vqa_raw_counting_by_hand(tmp_path: Path) -> None:
    """ViLT counts the typed strings: "Two", "2 " and "2." are not "2", and an answer only typed in
    another form ("two" ×3 for "2") earns no label."""
    write_hand_made_vqa(tmp_path / "raw")
    extra = ("--min-answer-count", "1", "--rest-val-images", "1", "--vqa-answer-counting", "raw")
    manifest = prepare("vqa", tmp_path / "raw", tmp_path / "out", *extra)
    out = tmp_path / "out"
    assert json.loads((out / VQA_ANSWERS_FILE).read_text()) == ["2", "red", "3", "yes", "4"]
    (train,) = read_rows(out / "vqav2_train.arrow")
    # q1000: "2" and "3" typed once each as such; "four" is not "4". q1001: "red" once ("Red." differs).
    assert train["answers"] == [["2", "3"], ["red"], ["3"]]
    assert train["answer_labels"] == [[0, 2], [1], [2]]
    assert train["answer_scores"] == [[0.3, 0.3], [0.3], [0.3]]
    val = read_rows(out / "vqav2_val.arrow")
    assert [(r["image_id"], r["answers"], r["answer_labels"], r["answer_scores"]) for r in val] == [
        (3, [["yes"]], [[3]], [[1.0]]),
        (5, [["yes"]], [[3]], [[1.0]]),
    ]
    assert manifest["splits"]["train"]["questions_without_label"] == 1


# --- bad input ---------------------------------------------------------------------------------------


def fails_naming(capsys: pytest.CaptureFixture[str], argv: list[str], *fragments: str) -> str:
    """Run the CLI, expect exit code 2 and a final one-line error naming every fragment."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    message = err.strip().splitlines()[-1]
    assert message.startswith("vlmerge.prepare: error: ")
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


@pytest.fixture
def coco_copy(raw: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(raw / "coco", tmp_path / "coco"))


def argv(dataset: str, root: Path, *extra: str) -> list[str]:
    return ["--dataset", dataset, "--raw", str(root), "--out", str(root.parent / "out"), *extra]


def test_missing_annotation_file(coco_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    annotation = coco_copy / "karpathy" / "dataset_coco.json"
    annotation.unlink()
    fails_naming(capsys, argv("coco", coco_copy), "missing annotation file", str(annotation))
    assert not (coco_copy.parent / "out" / manifest_name("coco")).exists()


def test_missing_image_folder(coco_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.rmtree(coco_copy / "val2014")
    fails_naming(capsys, argv("coco", coco_copy), "missing image folder", str(coco_copy / "val2014"))


def test_missing_raw_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fails_naming(capsys, argv("vg", tmp_path / "nowhere"), str(tmp_path / "nowhere"))


def test_malformed_karpathy_record(coco_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = coco_copy / "karpathy" / "dataset_coco.json"
    data = json.loads(path.read_text())
    del data["images"][3]["sentences"][1]["raw"]
    path.write_text(json.dumps(data))
    fails_naming(capsys, argv("coco", coco_copy), str(path), "images[3].sentences[1]", "'raw'")


def test_malformed_nlvr2_line(raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = Path(shutil.copytree(raw / "nlvr2", tmp_path / "nlvr2"))
    path = root / "nlvr2" / "data" / "train.json"
    lines = path.read_text().splitlines()
    record = json.loads(lines[2])
    del record["directory"]
    lines[2] = json.dumps(record)
    path.write_text("\n".join(lines) + "\n")
    fails_naming(capsys, argv("nlvr2", root), f"{path}:3", "'directory'")


def test_malformed_vqa_question(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "raw"
    write_hand_made_vqa(root)
    path = root / "v2_OpenEnded_mscoco_val2014_questions.json"
    data = json.loads(path.read_text())
    data["questions"][1]["question_id"] = 3999  # no annotation record for it
    path.write_text(json.dumps(data))
    fails_naming(capsys, argv("vqa", root), str(path), "questions[1]", "3999")


def test_corrupt_images_are_skipped_and_listed_or_fatal_when_strict(
    coco_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    val = sorted((coco_copy / "val2014").iterdir())
    truncated, garbage = val[0], val[1]
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    garbage.write_bytes(b"not an image at all")
    out = coco_copy.parent / "out"
    manifest = prepare("coco", coco_copy, out)
    assert {(s["item"], s["reason"].split(" (")[0]) for s in manifest["skipped"]} == {
        (f"val2014/{truncated.name}", "corrupt image"),
        (f"val2014/{garbage.name}", "corrupt image"),
    }
    kept = {
        r["image_id"] for split in ("train", "restval", "val", "test") for r in read_rows(out / FILES["coco"][split])
    }
    assert truncated.name not in kept and garbage.name not in kept
    assert sum(c["rows"] for c in manifest["splits"].values()) == len(kept) == 48 - 2
    fails_naming(capsys, argv("coco", coco_copy, "--strict"), "corrupt image", "val2014/")


def test_unknown_dataset_is_a_usage_error(raw: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--dataset", "mnist", "--raw", str(raw / "sbu"), "--out", str(tmp_path)])
    assert exc.value.code == 2


@pytest.mark.parametrize(
    "extra, key",
    [
        (["--shard-size", "0"], "shard_size: "),
        (["--batch-rows", "x"], "batch_rows: "),
        (["--config", '{"min_answer_count": 0}'], "min_answer_count: "),
        (["--config", '{"rest_val_images": -1, "strict": true}'], "rest_val_images: "),
        (["--config", '{"shard_sise": 7}'], "shard_sise: "),
        (["--config", "[7]"], "--config: "),
    ],
)
def test_bad_settings_are_one_line_naming_the_key(
    raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], key: str
) -> None:
    out = tmp_path / "out"
    assert main(["--dataset", "sbu", "--raw", str(raw / "sbu"), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vlmerge.prepare: error: ") and key in err[0], err
    assert not out.exists()


def test_the_workflow_json_with_a_flag_overriding_it(raw: Path, tmp_path: Path) -> None:
    settings = PrepareSettings(shard_size=1, batch_rows=4)
    manifest = prepare("sbu", raw / "sbu", tmp_path, "--config", settings.as_json(), "--shard-size", "7")
    assert manifest["options"] == {**settings.model_dump(), "shard_size": 7}
    assert manifest["provenance"]["config"]["shard_size"] == 7
    assert len(manifest["files"]) == -(-manifest["splits"]["train"]["rows"] // 7)


def test_settings_defaults_are_the_converters_and_config_blocks_are_valid() -> None:
    assert PrepareSettings().model_dump() == asdict(ConvertOptions())
    for path in ("config.yaml", "profiles/slurm/paper.yaml"):
        block = yaml.safe_load((ROOT / path).read_text())["data"]["prepare"]
        assert PrepareSettings(**block).model_dump(include=set(block)) == block, path


def test_settings_module_never_imports_torch() -> None:
    code = "import sys, vlmerge.prepare.config; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


# --- the streaming writer ------------------------------------------------------------------------


def test_empty_table_still_gets_a_file(tmp_path: Path) -> None:
    with TableWriter(tmp_path / "t_{shard}.arrow", CAPTION, batch_rows=2, shard_size=3) as writer:
        pass
    assert writer.files == [tmp_path / "t_0.arrow"]
    assert read_rows(tmp_path / "t_0.arrow") == []
    assert read_schema(tmp_path / "t_0.arrow").equals(CAPTION)


def test_failed_write_leaves_no_file(tmp_path: Path) -> None:
    row = {"image": b"x", "caption": ["a"], "image_id": "1", "split": "train"}
    with pytest.raises(RuntimeError), TableWriter(tmp_path / "t.arrow", CAPTION, batch_rows=2) as writer:
        for _ in range(3):
            writer.write(row)
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
