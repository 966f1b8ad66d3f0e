"""BERT uncased WordPiece tokenizer (docs/model.md): train one, write it, load one safely.

A tokenizer directory holds ``vocab.txt`` (one token per line, line number = id),
``tokenizer.json`` and ``tokenizer_config.json``, so that
``transformers.BertTokenizerFast.from_pretrained(dir)`` loads it. Loading goes through
:func:`load_tokenizer`, which checks what transformers 5.x does not: a missing or unreadable
vocabulary silently becomes a 5-token one there (every word → [UNK]).

The stages that do not train load :func:`load_text_tokenizer` instead: a :class:`TextTokenizer` built on
the ``tokenizers`` library alone, with the same checks and the same pipeline transformers builds for a BERT
uncased folder (vocabulary from ``tokenizer.json``'s WordPiece model when the folder has one, else from
``vocab.txt``; BERT normaliser with lower-casing, BERT pre-tokeniser, ``[CLS] … [SEP]``, the five special
tokens matched before normalisation), so it gives the same ids, masks and word ids without importing
transformers (about half a second per process).
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from tokenizers import (
    AddedToken,
    Encoding,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from vlmerge.errors import InputError

if TYPE_CHECKING:  # transformers costs ~1.7 s to import; only loading needs it
    # Exported lazily: real at runtime, invisible to mypy (its module path differs across versions).
    from transformers import BertTokenizerFast  # type: ignore[attr-defined]

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0-4 in a trained vocabulary
MAX_TEXT_LEN = 40
_CHUNK = 4096  # texts normalised per call: amortises the Python↔Rust crossing


class TokenizerError(InputError):
    """A tokenizer file is missing, unreadable or not a usable BERT WordPiece vocabulary."""


def _backend(vocab: dict[str, int] | None = None) -> Tokenizer:
    """The BERT uncased pipeline: clean + lowercase + strip accents, split on spaces/punctuation."""
    model = models.WordPiece(vocab, unk_token="[UNK]") if vocab else models.WordPiece(unk_token="[UNK]")
    backend = Tokenizer(model)
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    if vocab:
        backend.post_processor = processors.BertProcessing(("[SEP]", vocab["[SEP]"]), ("[CLS]", vocab["[CLS]"]))
        backend.add_special_tokens(list(SPECIAL_TOKENS))
    return backend


def _word_counts(texts: Iterable[str], backend: Tokenizer) -> collections.Counter[str]:
    """Normalised, pre-tokenised word counts, streaming ``texts`` in chunks."""
    counts: collections.Counter[str] = collections.Counter()
    stream = iter(texts)
    while chunk := list(itertools.islice(stream, _CHUNK)):
        # The pre-tokenizer splits on whitespace, so joining texts with a space changes no word.
        normalised = backend.normalizer.normalize_str(" ".join(chunk))
        counts.update(word for word, _ in backend.pre_tokenizer.pre_tokenize_str(normalised))
    return counts


def _repeat_words(counts: collections.Counter[str]) -> Iterator[str]:
    """The counted words in sorted order, up to 1000 copies per string (re-normalising them is a no-op)."""
    for word in sorted(counts):
        for start in range(0, counts[word], 1000):
            yield " ".join([word] * min(counts[word] - start, 1000))


def train_wordpiece(texts: Iterable[str], out_dir: Path, vocab_size: int = 4096, min_frequency: int = 2) -> Path:
    """Train an uncased WordPiece vocabulary on ``texts`` and write a tokenizer directory into ``out_dir``.

    Deterministic: the same texts give an identical ``vocab.txt``. ``tokenizers``' trainer numbers the
    continuing-subword tokens (``##x``) in hash-map order and breaks count ties by those numbers
    (huggingface/tokenizers#1794), so we register every ``##x`` up front, in sorted order.
    """
    backend = _backend()
    counts = _word_counts(texts, backend)
    if not counts:
        raise TokenizerError("no text to train a WordPiece vocabulary on")
    subwords = sorted({"##" + char for word in counts for char in word[1:]})
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[*SPECIAL_TOKENS, *subwords],
        show_progress=False,
    )
    backend.train_from_iterator(_repeat_words(counts), trainer)
    vocab = backend.get_vocab(with_added_tokens=False)
    log.info("trained WordPiece: %d words (%d distinct) -> %d tokens", sum(counts.values()), len(counts), len(vocab))
    return write_tokenizer(sorted(vocab, key=vocab.__getitem__), out_dir)


def write_tokenizer(tokens: list[str], out_dir: Path, max_length: int = MAX_TEXT_LEN) -> Path:
    """Write ``tokens`` (index = id) as a BERT uncased tokenizer directory; returns ``out_dir``."""
    vocab = {token: i for i, token in enumerate(tokens)}
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if len(vocab) != len(tokens) or missing:
        raise TokenizerError(f"vocabulary for {out_dir} has duplicate tokens or lacks {missing}")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.txt").write_text("".join(f"{t}\n" for t in tokens), encoding="utf-8")
    (out_dir / "tokenizer.json").write_text(_backend(vocab).to_str(pretty=True) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": True,
        "strip_accents": None,
        "tokenize_chinese_chars": True,
        "model_max_length": max_length,
        "unk_token": "[UNK]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out_dir


def read_vocab(path: Path) -> dict[str, int]:
    """``vocab.txt`` → {token: line number}; duplicate or empty lines are errors."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise TokenizerError(f"cannot read vocabulary {path}: {err}") from err
    vocab = {token: i for i, token in enumerate(lines)}
    if len(vocab) != len(lines) or "" in vocab:
        raise TokenizerError(f"{path}: duplicate or empty lines, not a WordPiece vocab.txt")
    return vocab


def load_tokenizer(path: Path, max_length: int = MAX_TEXT_LEN) -> BertTokenizerFast:
    """Load a lower-casing BERT WordPiece tokenizer from a directory or a ``vocab.txt`` path, offline.

    Raises :class:`TokenizerError` naming ``path`` when the files are missing, the vocabulary has
    5 tokens or fewer (transformers' silent fallback) or lacks a special token.
    """
    from transformers import BertTokenizerFast  # type: ignore[attr-defined]  # lazy export, see top

    path = Path(path)
    if path.is_file():
        tok = BertTokenizerFast(vocab=read_vocab(path), do_lower_case=True, model_max_length=max_length)
    elif (path / "vocab.txt").is_file() or (path / "tokenizer.json").is_file():
        try:
            tok = BertTokenizerFast.from_pretrained(
                path, local_files_only=True, do_lower_case=True, model_max_length=max_length
            )
        except Exception as err:
            raise TokenizerError(f"cannot load tokenizer from {path}: {err}") from err
    else:
        raise TokenizerError(f"{path}: no vocab.txt or tokenizer.json (expected a tokenizer directory or a vocab.txt)")
    _check(tok, path)
    return tok


def _check(tok: BertTokenizerFast, path: Path) -> None:
    vocab = tok.backend_tokenizer.get_vocab(with_added_tokens=False)
    if len(vocab) <= len(SPECIAL_TOKENS):
        raise TokenizerError(f"{path}: vocabulary has only {len(vocab)} tokens (unreadable or empty vocab.txt?)")
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise TokenizerError(f"{path}: special tokens {missing} are not in the vocabulary")
    if tok.tokenize("A") != tok.tokenize("a"):
        raise TokenizerError(f"{path}: tokenizer does not lower-case its input")


class TextTokenizer:
    """A BERT uncased WordPiece tokenizer on ``tokenizers`` alone: what evaluation needs of
    ``BertTokenizerFast`` (special ids, vocabulary size, batch encoding with truncation and padding).

    Built by :func:`load_text_tokenizer`; pickles (``tokenizers.Tokenizer`` does), so DataLoader workers
    receive it.
    """

    def __init__(self, vocab: dict[str, int], max_length: int = MAX_TEXT_LEN) -> None:
        self.model_max_length = max_length
        self.backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
        self.backend.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
        )
        self.backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        self.backend.decoder = decoders.WordPiece(prefix="##")
        self.backend.post_processor = processors.TemplateProcessing(
            single="[CLS]:0 $A:0 [SEP]:0",
            pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
        )
        self.backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
        self.pad_token_id, self.unk_token_id, self.cls_token_id, self.sep_token_id, self.mask_token_id = (
            vocab[t] for t in SPECIAL_TOKENS
        )
        self.all_special_ids = [vocab[t] for t in SPECIAL_TOKENS]
        self.vocab_size = self.backend.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def tokenize(self, text: str) -> list[str]:
        """The WordPiece tokens of ``text``, without [CLS]/[SEP]."""
        return self.backend.encode(text, add_special_tokens=False).tokens

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        return [self.backend.id_to_token(i) or "[UNK]" for i in ids]

    def encode_batch(
        self, texts: list[str], max_length: int = MAX_TEXT_LEN, pad_to_max: bool = False
    ) -> list[Encoding]:
        """``[CLS] … [SEP]`` encodings of ``texts``, truncated to ``max_length`` tokens and padded on the right
        with [PAD] to the longest text (or to ``max_length``): the settings transformers applies per call."""
        self.backend.enable_truncation(max_length, stride=0, strategy="longest_first", direction="right")
        self.backend.enable_padding(
            direction="right",
            pad_id=self.pad_token_id,
            pad_type_id=0,
            pad_token="[PAD]",
            length=max_length if pad_to_max else None,
        )
        return self.backend.encode_batch(texts, add_special_tokens=True)


def _json_vocab(path: Path) -> dict[str, int]:
    """The WordPiece vocabulary of ``tokenizer.json`` (added tokens must lie inside it)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        model, added = data["model"], data.get("added_tokens") or []
        kind, vocab = model.get("type"), model["vocab"]
        outside = [t["content"] for t in added if vocab.get(t["content"]) != t["id"]]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise TokenizerError(f"cannot load tokenizer from {path}: {err!r}") from err
    if kind != "WordPiece" or not isinstance(vocab, dict):
        raise TokenizerError(f"{path}: model is {kind}, expected a WordPiece vocabulary")
    if outside:
        raise TokenizerError(f"{path}: added tokens {outside[:5]} are not vocabulary entries with the same id")
    return vocab


def load_text_tokenizer(path: Path, max_length: int = MAX_TEXT_LEN) -> TextTokenizer:
    """:func:`load_tokenizer`'s tokenizer without transformers (module docstring): same files, same checks,
    same encodings. Raises :class:`TokenizerError` naming ``path``."""
    path = Path(path)
    if path.is_file():
        vocab = read_vocab(path)
    elif (path / "tokenizer.json").is_file():
        vocab = _json_vocab(path / "tokenizer.json")
    elif (path / "vocab.txt").is_file():
        vocab = read_vocab(path / "vocab.txt")
    else:
        raise TokenizerError(f"{path}: no vocab.txt or tokenizer.json (expected a tokenizer directory or a vocab.txt)")
    if len(vocab) <= len(SPECIAL_TOKENS):
        raise TokenizerError(f"{path}: vocabulary has only {len(vocab)} tokens (unreadable or empty vocab.txt?)")
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise TokenizerError(f"{path}: special tokens {missing} are not in the vocabulary")
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise TokenizerError(f"{path}: vocabulary ids are not 0..{len(vocab) - 1}")
    return TextTokenizer(vocab, max_length)


def vocabulary_file(path: Path) -> Path:
    """The file that defines a tokenizer's vocabulary (for input checksums): vocab.txt, else tokenizer.json."""
    if path.is_file():
        return path
    return path / "vocab.txt" if (path / "vocab.txt").is_file() else path / "tokenizer.json"
