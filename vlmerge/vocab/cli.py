"""Stage ``vocab``: the text tokenizer every later stage loads.

    python -m vlmerge.vocab --arrow data/arrow --out data/arrow/tokenizer [--bert-vocab PATH] [--vocab-size N]

With ``--bert-vocab`` (a bert-base-uncased ``vocab.txt`` or a folder holding one), that vocabulary
is validated and written to OUT; otherwise a WordPiece vocabulary is trained on the ``caption`` and
``questions`` text of every ``*.arrow`` file in ARROW (sorted by name). OUT appears all at once
(built in a temporary folder, then renamed) and holds a record, ``vocab_record.json`` (source,
vocab size, sha256 of vocab.txt, provenance). Bad input or a bad setting ends with a one-line error
and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmerge.errors import ConfigError
from vlmerge.runtime import Progress, atomic_write_json, provenance, sha256_file
from vlmerge.runtime.settings import add_settings_arguments, settings_from_args
from vlmerge.runtime.stage import run_stage
from vlmerge.vocab.config import TokenizerSettings

log = logging.getLogger(__name__)

TEXT_COLUMNS = ("caption", "questions")
RECORD_FILE = "vocab_record.json"


@dataclass(frozen=True)
class VocabConfig:
    out: Path
    arrow: Path | None
    bert_vocab: Path | None
    settings: TokenizerSettings

    def resolved(self) -> dict[str, Any]:
        """What the record's provenance holds: the paths (absolute) and every setting."""
        return {
            "out": str(self.out),
            "arrow": _text(self.arrow),
            "bert_vocab": _text(self.bert_vocab),
            "vocab_size": self.settings.vocab_size,
            "min_frequency": self.settings.min_frequency,
        }


def _text(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vlmerge.vocab", description=__doc__.split("\n")[0])
    parser.add_argument("--arrow", type=Path, help="folder of arrow tables whose text trains the vocabulary")
    parser.add_argument("--out", required=True, type=Path, help="tokenizer folder to write")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    add_settings_arguments(parser, TokenizerSettings)
    return parser


def config_from(args: argparse.Namespace) -> VocabConfig:
    """The validated run: settings from ``--config`` and flags, every path absolute, a text source present."""
    settings = settings_from_args(args, TokenizerSettings)
    bert_vocab = Path(settings.bert_vocab).resolve() if settings.bert_vocab else None
    if bert_vocab is None and args.arrow is None:
        raise ConfigError("give --arrow (to train a vocabulary) or --bert-vocab")
    arrow = None if args.arrow is None else args.arrow.resolve()
    return VocabConfig(args.out.resolve(), arrow, bert_vocab, settings)


def arrow_texts(arrow_dir: Path) -> Iterator[str]:
    """Every caption and question of the ``*.arrow`` files in ``arrow_dir``, file by file in name order.

    Tables that repeat rows of another (NLVR2's balanced/unbalanced subsets of dev and test1) are left
    out, so that no text is counted twice.
    """
    # The run's imports stay in the functions that run: ``--help`` never loads pyarrow, torch or tokenizers.
    import pyarrow.compute as pc

    from vlmerge.data.ipc import ReaderError, open_ipc
    from vlmerge.data.readers.table import verify_table
    from vlmerge.data.schema import FILES, OPTIONAL_SPLITS

    subsets = {FILES[dataset][split] for dataset, splits in OPTIONAL_SPLITS.items() for split in splits}
    files = sorted(p for p in arrow_dir.glob("*.arrow") if p.name not in subsets)
    if not files:
        raise ReaderError(f"no *.arrow files in {arrow_dir}")
    with Progress(len(files), "vocab text", unit="file", logger=log) as progress:
        for path in files:
            verify_table(path)  # its manifest's sha256 and experiment
            reader = open_ipc(path)
            columns = [c for c in TEXT_COLUMNS if c in reader.schema.names]
            if not columns:
                raise ReaderError(f"{path}: none of the text columns {TEXT_COLUMNS}")
            for i in range(reader.num_record_batches):
                batch = reader.get_batch(i)
                for name in columns:
                    yield from (t for t in pc.list_flatten(batch.column(name)).to_pylist() if t is not None)
            progress.update()


def _check_uncased(tokens: list[str], path: Path) -> None:
    from vlmerge.data.tokenizer import TokenizerError

    # A lower-casing tokenizer never produces upper-case tokens: their presence means a cased vocabulary.
    cased = [t for t in tokens if t != t.lower() and not (t.startswith("[") and t.endswith("]"))]
    if cased:
        raise TokenizerError(
            f"{path}: {len(cased)} upper-case tokens (e.g. {cased[:3]}); expected an uncased vocabulary"
        )


def build(config: VocabConfig, tmp: Path) -> str:
    """Write the tokenizer files into ``tmp``; returns a description of the source."""
    from vlmerge.data.tokenizer import TokenizerError, load_tokenizer, train_wordpiece, write_tokenizer

    if config.bert_vocab is not None:
        vocab = load_tokenizer(config.bert_vocab).backend_tokenizer.get_vocab(with_added_tokens=False)
        tokens = sorted(vocab, key=vocab.__getitem__)
        if [vocab[t] for t in tokens] != list(range(len(tokens))):
            raise TokenizerError(f"{config.bert_vocab}: token ids are not 0..{len(tokens) - 1}")
        _check_uncased(tokens, config.bert_vocab)
        write_tokenizer(tokens, tmp)
        return f"bert-vocab {config.bert_vocab}"
    if config.arrow is None:
        raise ConfigError("give --arrow (to train a vocabulary) or --bert-vocab")
    train_wordpiece(arrow_texts(config.arrow), tmp, config.settings.vocab_size, config.settings.min_frequency)
    return f"wordpiece trained on {config.arrow}"


def _publish(tmp: Path, out: Path) -> None:
    """Rename the finished folder onto ``out`` (a previous ``out`` is moved aside, then removed)."""
    old = out.with_name(f".old-{out.name}.{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def run(config: VocabConfig) -> Path:
    from vlmerge.data.tokenizer import load_tokenizer

    config.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{config.out.name}.", dir=config.out.parent))
    try:
        source = build(config, tmp)
        tokenizer = load_tokenizer(tmp)  # what later stages will see
        record = {
            "source": source,
            "vocab_size": tokenizer.vocab_size,
            "vocab_sha256": sha256_file(tmp / "vocab.txt"),
            "provenance": provenance("vocab", config.resolved()),
        }
        atomic_write_json(tmp / RECORD_FILE, record)
        os.chmod(tmp, 0o755)
        _publish(tmp, config.out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("tokenizer %s: %d tokens from %s", config.out, record["vocab_size"], source)
    return config.out


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_stage("vocab", lambda: run(config_from(args)), verbose=args.verbose)


if __name__ == "__main__":
    raise SystemExit(main())
