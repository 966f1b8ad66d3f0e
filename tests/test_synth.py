"""Synthetic raw datasets: published layouts, determinism, and text that agrees with the pixels."""

from __future__ import annotations

import hashlib
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from vlmerge.data.schema import DATASETS
from vlmerge.data.synth import MARKER, SPLITS, SUMMARY, SynthError, generate
from vlmerge.data.synth.captions import captions
from vlmerge.data.synth.questions import Query, answer, ask
from vlmerge.data.synth.render import object_box, render
from vlmerge.data.synth.scenes import Obj, Scene, sample_scene
from vlmerge.data.synth.statements import Claim, state, truth
from vlmerge.data.synth.vocab import BACKGROUND, CELL_NAMES, COLORS, SIZES
from vlmerge.synth import cli
from vlmerge.synth.config import SynthSettings

ROOT = Path(__file__).resolve().parents[1]


def tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def load(path: Path):
    return json.loads(path.read_text())


def nearest_color(rgb: tuple[int, int, int]) -> str:
    return min(COLORS, key=lambda c: sum((a - b) ** 2 for a, b in zip(COLORS[c], rgb)))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth")
    return out, generate(out, seed=0, size="tiny")


# ---- determinism --------------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes_and_summary_matches_file(tiny, tmp_path):
    out, summary = tiny
    again = generate(tmp_path, seed=0, size="tiny")
    assert tree_digest(out) == tree_digest(tmp_path)
    assert again == summary == load(out / SUMMARY)
    assert summary["datasets"] == list(DATASETS) == list(SPLITS)


def test_different_seed_gives_different_data(tiny, tmp_path):
    out, _ = tiny
    generate(tmp_path, seed=1, size="tiny")
    a, b = tree_digest(out), tree_digest(tmp_path)
    for name in ("coco/karpathy/dataset_coco.json", "nlvr2/nlvr2/data/train.json", "sbu/annot.json"):
        assert a[name] != b[name]
    assert {k for k in a if k.startswith("sbu/images")} != {k for k in b if k.startswith("sbu/images")}


def test_a_split_does_not_depend_on_other_splits_counts(tiny, tmp_path):
    out, _ = tiny
    generate(tmp_path, seed=0, datasets=["coco"], counts={"coco": {"train": 3}})
    val = sorted((out / "coco" / "val2014").iterdir())
    assert [p.read_bytes() for p in val] == [(tmp_path / "coco/val2014" / p.name).read_bytes() for p in val]
    assert len(list((tmp_path / "coco/train2014").iterdir())) == 3


def test_rerun_into_same_folder_leaves_no_stale_files(tmp_path):
    generate(tmp_path, datasets=["gcc"], counts={"gcc": {"train": 40}})
    summary = generate(tmp_path, datasets=["gcc"], counts={"gcc": {"train": 6}})
    files = [p for p in (tmp_path / "gcc/images_train").rglob("*") if p.is_file()]
    assert len(files) == summary["written"]["gcc"]["train"]["images"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gcc", SUMMARY]


# ---- layouts ------------------------------------------------------------------------------------


def check_karpathy(root: Path, name: str, requested: dict[str, int], coco: bool) -> None:
    doc = load(root / "karpathy" / f"dataset_{name}.json")
    assert doc["dataset"] == name
    images, sentids = doc["images"], []
    assert {s: sum(i["split"] == s for i in images) for s in requested} == requested
    for imgid, entry in enumerate(images):
        assert entry["imgid"] == imgid and len(entry["sentences"]) == 5
        assert entry["sentids"] == [s["sentid"] for s in entry["sentences"]]
        for sent in entry["sentences"]:
            assert sent["imgid"] == imgid and sent["tokens"] == re.findall(r"[a-z0-9]+", sent["raw"].lower())
        sentids += entry["sentids"]
        if coco:
            subset = "train2014" if entry["split"] == "train" else "val2014"
            assert entry["filepath"] == subset
            assert re.fullmatch(rf"COCO_{subset}_(\d{{12}})\.jpg", entry["filename"])
            assert int(entry["filename"][-16:-4]) == entry["cocoid"]
            path = root / subset / entry["filename"]
        else:
            assert "filepath" not in entry and "cocoid" not in entry
            assert re.fullmatch(r"\d+\.jpg", entry["filename"])
            path = root / "flickr30k-images" / entry["filename"]
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.size == (48, 48)
    assert len(set(sentids)) == len(sentids)


def test_karpathy_layouts(tiny):
    out, summary = tiny
    check_karpathy(out / "coco", "coco", summary["requested"]["coco"], coco=True)
    check_karpathy(out / "f30k", "flickr30k", summary["requested"]["f30k"], coco=False)


def test_vqa_layout(tiny):
    out, summary = tiny
    root, subsets = out / "vqa", {"train": "train2014", "val": "val2014", "test": "test2015"}
    questions = {}
    for split, subset in {**subsets, "test-dev": "test-dev2015"}.items():
        doc = load(root / f"v2_OpenEnded_mscoco_{subset}_questions.json")
        assert (doc["task_type"], doc["data_type"], doc["data_subtype"]) == ("Open-Ended", "mscoco", subset)
        assert "info" in doc and "license" in doc
        questions[split] = doc["questions"]
    assert questions["test-dev"] and all(q in questions["test"] for q in questions["test-dev"])
    assert len({q["image_id"] for q in questions["test-dev"]}) == summary["requested"]["vqa"]["test-dev"]
    for split, subset in subsets.items():
        ids = {q["image_id"] for q in questions[split]}
        assert len(ids) == summary["requested"]["vqa"][split]
        assert all((root / subset / f"COCO_{subset}_{i:012d}.jpg").is_file() for i in ids)
        assert all(q["question_id"] // 1000 == q["image_id"] for q in questions[split])
    yes_no, disagreements = [], 0
    for split in ("train", "val"):
        doc = load(root / f"v2_mscoco_{subsets[split]}_annotations.json")
        assert doc["data_subtype"] == subsets[split]
        anns = doc["annotations"]
        assert [a["question_id"] for a in anns] == [q["question_id"] for q in questions[split]]
        for a in anns:
            answers = [x["answer"] for x in a["answers"]]
            assert [x["answer_id"] for x in a["answers"]] == list(range(1, 11))
            assert a["answer_type"] in ("yes/no", "number", "other") and a["question_type"]
            assert answers.count(a["multiple_choice_answer"]) >= 7  # at most three annotators deviate
            disagreements += len(set(answers)) > 1
            if a["answer_type"] == "yes/no":
                yes_no.append(a["multiple_choice_answer"])
    assert disagreements > 0
    assert abs(yes_no.count("yes") - yes_no.count("no")) <= 16  # one balanced block of 16 per split


def test_nlvr2_layout(tiny):
    out, summary = tiny
    root = out / "nlvr2"
    for split in ("train", "dev", "test1"):
        lines = [json.loads(line) for line in (root / "nlvr2/data" / f"{split}.json").read_text().splitlines()]
        labels = [line["label"] for line in lines]
        assert set(labels) <= {"True", "False"} and abs(labels.count("True") - labels.count("False")) <= 1
        pairs = {}
        for line in lines:
            assert re.fullmatch(rf"{split}-\d+-\d+-\d+", line["identifier"])
            assert {"sentence", "left_url", "right_url", "writer", "synset", "query", "validation"} <= set(line)
            assert ("directory" in line) == (split == "train")
            prefix = line["identifier"].rsplit("-", 1)[0]
            pairs.setdefault(prefix, []).append(line)
            folder = root / "images" / "train" / str(line["directory"]) if split == "train" else root / split
            for k in (0, 1):
                with Image.open(folder / f"{prefix}-img{k}.png") as im:
                    assert im.format == "PNG"
        assert len(pairs) == summary["requested"]["nlvr2"][split]
        assert any(len(p) > 1 for p in pairs.values())  # several sentences share an image pair


def test_vg_layout_boxes_surround_the_described_object(tiny):
    out, summary = tiny
    root = out / "vg"
    entries = load(root / "annotations/region_descriptions.json")
    assert len(entries) == summary["requested"]["vg"]["train"]
    folders = set()
    for entry in entries:
        paths = [root / "images" / f / f"{entry['id']}.jpg" for f in ("VG_100K", "VG_100K_2")]
        [path] = [p for p in paths if p.is_file()]
        folders.add(path.parent.name)
        with Image.open(path) as im:
            pixels = im.convert("RGB")
        for r in entry["regions"]:
            assert r["image_id"] == entry["id"] and r["width"] > 0 and r["height"] > 0
            assert 0 <= r["x"] and r["x"] + r["width"] <= 48 and 0 <= r["y"] and r["y"] + r["height"] <= 48
            centre = pixels.getpixel((r["x"] + r["width"] // 2, r["y"] + r["height"] // 2))
            [color] = [c for c in COLORS if c in r["phrase"].split()]
            assert nearest_color(centre) == color, (r, centre)
    assert folders == {"VG_100K", "VG_100K_2"}


def test_web_caption_layouts_and_deliberately_missing_gcc_images(tiny):
    out, summary = tiny
    for dataset, split, annot in (
        ("sbu", "train", "annot.json"),
        ("gcc", "train", "train_annot.json"),
        ("gcc", "val", "val_annot.json"),
    ):
        root = out / dataset
        entries = load(root / annot)
        assert len(entries) == summary["requested"][dataset][split]
        names = [path.rsplit("/", 1)[1] for path, caption in entries]
        assert all(isinstance(c, str) and c for _, c in entries) and "." not in "".join(names)
        assert len({n[:4] for n in names}) > 1
        missing = set(summary["missing"].get(dataset, {}).get(split, []))
        assert (len(missing) > 0) == (dataset == "gcc")
        for name in names:
            rel = f"{dataset}/images_{split}/{name[:4]}/{name}"
            assert (out / rel).is_file() != (rel in missing)
        assert len(missing) + summary["written"][dataset][split]["images"] == len(entries)
    assert load(out / "gcc" / MARKER)["missing"] == summary["missing"]["gcc"]


# ---- content agrees with the scene ---------------------------------------------------------------


def test_rendered_pixels_match_the_scene():
    objs = tuple(
        Obj(shape, color, size, cell)
        for cell, (shape, color, size) in enumerate(
            [
                ("circle", "red", "large"),
                ("square", "orange", "small"),
                ("triangle", "yellow", "large"),
                ("triangle", "green", "small"),
                ("square", "blue", "large"),
                ("circle", "purple", "small"),
            ]
        )
    )
    scene = Scene(objs)
    for size in (48, 60):
        image = render(scene, size)
        for obj in objs:
            x0, y0, x1, y1 = object_box(obj, size)
            assert image.getpixel(((x0 + x1) // 2, (y0 + y1) // 2)) == COLORS[obj.color]
            assert x1 - x0 + 1 == pytest.approx(SIZES[obj.size] * size / 3, abs=1)
            if obj.shape != "square":  # the box's top-left corner is outside a circle or triangle
                assert image.getpixel((x0, y0)) == BACKGROUND
        for cell in (6, 7, 8):  # empty cells show the background
            assert image.getpixel((int((cell % 3 + 0.5) * size / 3), int((cell // 3 + 0.5) * size / 3))) == BACKGROUND


def test_captions_name_every_object():
    rng = random.Random(3)
    for _ in range(50):
        scene = sample_scene(rng)
        for text in captions(scene, rng, 5):
            words = text.lower().rstrip(".")
            assert all(o.color in words and o.shape in words for o in scene.objects)


def naive_answer(query, scene: Scene) -> str:
    hits = [
        o
        for o in scene.objects
        if query.shape in (None, o.shape) and query.color in (None, o.color) and query.cell in (None, o.cell)
    ]
    if query.kind == "count":
        return str(len(hits))
    if query.kind == "exist":
        return "yes" if hits else "no"
    assert len(hits) == 1, query  # the question identifies exactly one object
    return {"color": hits[0].color, "shape": hits[0].shape, "position": CELL_NAMES[hits[0].cell]}[query.kind]


def test_question_answers_agree_with_the_scene():
    rng, flips = random.Random(5), random.Random(6)
    kinds, yes_no = set(), []
    for _ in range(300):
        scene = sample_scene(rng)
        for q in ask(scene, rng, 5, lambda: flips.random() < 0.5):
            assert q.answer == naive_answer(q.query, scene), q
            for word in (q.query.color, q.query.shape):
                assert word is None or word in q.text
            kinds.add(q.query.kind)
            if q.answer_type == "yes/no":
                yes_no.append(q.answer)
    assert kinds == {"color", "shape", "count", "exist", "position"}
    assert 0.4 < yes_no.count("yes") / len(yes_no) < 0.6


def test_nlvr2_statements_have_the_requested_truth():
    rng = random.Random(7)
    for i in range(300):
        left, right = sample_scene(rng), sample_scene(rng)
        s = state(left, right, i % 2 == 0, rng)
        c = s.claim
        count = lambda scene: sum(c.shape in (None, o.shape) and c.color in (None, o.color) for o in scene.objects)
        a, b = (count(left), count(right)) if c.side == "left" else (count(right), count(left))
        truth = {
            "exists": a > 0,
            "count": a == c.n,
            "both": a > 0 and b > 0,
            "one": (a > 0) + (b > 0) == 1,
            "total": a + b == c.n,
            "compare": (a > b, a < b, a == b)[("more", "fewer", "same").index(c.relation)],
        }
        assert truth[c.kind] == s.label == (i % 2 == 0), s
        assert all(w is None or w in s.text for w in (c.color, c.shape))


LEFT = Scene((Obj("circle", "red", "large", 0), Obj("circle", "blue", "small", 4), Obj("square", "red", "small", 8)))
RIGHT = Scene((Obj("triangle", "red", "large", 2),))


@pytest.mark.parametrize(
    "claim, expected",
    [
        (Claim("exists", "circle", "blue", "left"), True),
        (Claim("exists", "circle", "blue", "right"), False),
        (Claim("count", "circle", None, "left", n=2), True),
        (Claim("count", None, "red", "left", n=3), False),
        (Claim("compare", None, "red", "left", relation="more"), True),
        (Claim("compare", None, "red", "right", relation="fewer"), True),
        (Claim("compare", "square", None, "left", relation="same"), False),
        (Claim("compare", "triangle", "blue", "right", relation="same"), True),
        (Claim("both", None, "red"), True),
        (Claim("both", "circle", None), False),
        (Claim("one", "circle", None), True),
        (Claim("one", None, "red"), False),
        (Claim("total", None, "red", n=3), True),
        (Claim("total", None, "red", n=2), False),
        (Claim("total", None, "red", n=4), False),
    ],
)
def test_statement_truth_hand_worked(claim, expected):
    assert truth(claim, LEFT, RIGHT) is expected


@pytest.mark.parametrize(
    "query, expected",
    [
        (Query("count"), "3"),
        (Query("count", color="red"), "2"),
        (Query("count", "triangle"), "0"),
        (Query("exist", "square", "red"), "yes"),
        (Query("exist", "square", cell=0), "no"),
        (Query("color", cell=4), "blue"),
        (Query("color", shape="square"), "red"),
        (Query("shape", color="blue"), "circle"),
        (Query("position", "square", "red"), "bottom right"),
    ],
)
def test_question_answers_hand_worked(query, expected):
    assert answer(query, LEFT) == expected


def test_ambiguous_question_is_refused():
    with pytest.raises(ValueError, match="ambiguous"):
        answer(Query("color", shape="circle"), LEFT)


# ---- requests and errors -------------------------------------------------------------------------


def test_count_overrides_and_image_size(tmp_path):
    summary = generate(tmp_path, seed=2, datasets=["sbu"], counts={"sbu": {"train": 5}}, image_size=96)
    assert summary["written"] == {"sbu": {"train": {"entries": 5, "images": 5}}}
    images = [p for p in (tmp_path / "sbu/images_train").rglob("*") if p.is_file()]
    assert len(images) == 5
    with Image.open(images[0]) as im:
        assert im.size == (96, 96)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sbu", SUMMARY]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"datasets": ["coco", "imagenet"]}, "unknown dataset 'imagenet'"),
        ({"datasets": ["sbu", "sbu"]}, "each once"),
        ({"size": "huge"}, "unknown size 'huge'"),
        ({"image_size": 4}, "image size 4"),
        ({"seed": -1}, "seed -1"),
        ({"datasets": ["sbu"], "counts": {"sbu": {"val": 3}}}, "count sbu.val: unknown split"),
        ({"datasets": ["sbu"], "counts": {"sbu": {"train": 0}}}, "count sbu.train=0"),
        ({"datasets": ["sbu"], "counts": {"sbu": {"train": True}}}, "count sbu.train=True"),
        ({"datasets": ["sbu"], "counts": {"gcc": {"train": 3}}}, "dataset not being generated"),
        ({"datasets": ["vqa"], "counts": {"vqa": {"test": 2, "test-dev": 3}}}, "exceeds vqa.test=2"),
    ],
)
def test_bad_requests_are_clear_errors(tmp_path, kwargs, message):
    with pytest.raises(SynthError, match=re.escape(message)):
        generate(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())


def test_refuses_to_replace_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "coco").mkdir()
    (tmp_path / "coco" / "dataset_coco.json").write_text("{}")
    with pytest.raises(SynthError, match="not written by vlmerge.synth"):
        generate(tmp_path, datasets=["coco"])
    assert (tmp_path / "coco" / "dataset_coco.json").read_text() == "{}"


def test_cli(tmp_path, capsys):
    assert (
        cli.main(
            [
                "--out",
                str(tmp_path),
                "--seed",
                "4",
                "--datasets",
                "sbu,gcc",
                "--count",
                "sbu.train=3,gcc.val=2",
                "--image-size",
                "24",
            ]
        )
        == 0
    )
    summary = load(tmp_path / SUMMARY)
    assert summary["written"]["sbu"]["train"]["images"] == 3 and summary["image_size"] == 24
    assert summary["written"]["gcc"]["val"] == {"entries": 2, "images": 1}


def test_cli_takes_the_workflow_json_and_a_flag_overrides_it(tmp_path):
    settings = SynthSettings(seed=1, image_size=24, datasets=("sbu",), count={"sbu.train": 2})
    assert cli.main(["--out", str(tmp_path), "--config", settings.as_json(), "--seed", "4"]) == 0
    summary = load(tmp_path / SUMMARY)
    assert (summary["seed"], summary["image_size"], summary["datasets"]) == (4, 24, ["sbu"])
    assert summary["written"] == {"sbu": {"train": {"entries": 2, "images": 2}}}


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--datasets", "coco,nope"], "datasets: "),
        (["--datasets", "sbu,sbu"], "each once"),
        (["--count", "sbu.train=x"], "count.sbu.train: "),
        (["--count", "sbu=3"], "count: "),
        (["--image-size", "8"], "image_size: "),
        (["--seed", "-1"], "seed: "),
        (["--config", '{"seeds": 1}'], "seeds: "),
        (["--config", '{"size": "huge"}'], "size: "),
        (["--config", "[1]"], "--config: "),
    ],
)
def test_cli_errors_are_one_line_naming_the_key(tmp_path, capsys, argv, needle):
    assert cli.main(["--out", str(tmp_path / "x"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vlmerge.synth: error: ") and needle in err[0], err
    assert not (tmp_path / "x").exists()


def test_cli_generator_errors_end_with_one_line(tmp_path, capsys):
    """Names the generator checks (splits, ranges) fail after the provenance log lines, as one last line."""
    assert cli.main(["--out", str(tmp_path / "x"), "--count", "sbu.val=3", "--datasets", "sbu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "vlmerge.synth: error: count sbu.val: unknown split; sbu has ['train']"
    assert "Traceback" not in "".join(err)


@pytest.mark.parametrize("argv", [["--count", "sbu.train"], ["--config", "{not json"], ["--size", "huge"]])
def test_cli_malformed_flags_are_usage_errors(tmp_path, capsys, argv):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--out", str(tmp_path / "x"), *argv])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("python -m vlmerge.synth: error: ")


def test_config_yaml_block_is_valid_settings():
    block = yaml.safe_load((ROOT / "config.yaml").read_text())["data"]["synthetic"]
    assert SynthSettings(**block).model_dump(include=set(block)) == block


def test_settings_module_never_imports_torch():
    code = "import sys, vlmerge.synth.config; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
