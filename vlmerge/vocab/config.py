"""Settings of ``python -m vlmerge.vocab`` (the ``data.tokenizer`` block of config.yaml). No torch."""

from __future__ import annotations

from pydantic import Field

from vlmerge.runtime.settings import Settings


class TokenizerSettings(Settings):
    """Which vocabulary the text tokenizer gets: a given BERT one, or a WordPiece one trained on the Arrow text.

    ``bert_vocab`` is a path, yet a setting: config.yaml keeps it in this block, and it lies outside the DAG.
    """

    bert_vocab: str | None = Field(
        None, description="local bert-base-uncased vocab.txt (or its folder) used as is; None or empty: train WordPiece"
    )
    vocab_size: int = Field(4096, ge=64, description="size of a trained WordPiece vocabulary")
    min_frequency: int = Field(2, ge=1, description="least count of a merged sub-word pair when training")
