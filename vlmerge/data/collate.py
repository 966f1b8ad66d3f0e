"""Batching: tokenised text with word ids, whole-word masking for MLM (docs/objectives.md), sample stacking.

Whole-word masking picks *words* (the sub-tokens that share a fast-tokenizer word id), each with
probability ``mlm_prob``, then applies BERT's 80/10/10 rule per token. **Upstream quirk:** ViLT's
collator ran on text already padded to 40 and counted ``[PAD]`` tokens as words, so it masked and
predicted pads; here only real tokens are candidates — never ``[PAD]``, ``[CLS]`` or ``[SEP]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import get_worker_info

from vlmerge.data.tokenizer import MAX_TEXT_LEN

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100  # label of positions the MLM loss skips (torch cross-entropy's default)


@dataclass(frozen=True)
class TextBatch:
    """``input_ids``, ``attention_mask`` (1 = real token incl. [CLS]/[SEP]) and ``word_ids``
    (word index within its text, -1 for [CLS]/[SEP]/[PAD]): all int64 [B, L]."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    word_ids: torch.Tensor


def encode_texts(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_length: int = MAX_TEXT_LEN,
    pad_to_max_length: bool = False,
) -> TextBatch:
    """Tokenise ``texts`` to at most ``max_length`` tokens ([CLS] … [SEP]), padded to the longest (or to max)."""
    enc = tokenizer(
        list(texts),
        padding="max_length" if pad_to_max_length else "longest",
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
        return_token_type_ids=False,
    )
    word_ids = torch.tensor(
        [[-1 if w is None else w for w in enc.word_ids(i)] for i in range(len(texts))], dtype=torch.long
    ).reshape(enc["input_ids"].shape)
    return TextBatch(enc["input_ids"].long(), enc["attention_mask"].long(), word_ids)


class WholeWordMaskCollator:
    """Whole-word MLM masking of a :class:`TextBatch`: ``(masked input_ids, labels)``, both int64 [B, L].

    Every text with at least one real token gets at least one masked word (as BERT/HF guarantee
    one prediction per sequence): when no word is drawn, one is picked uniformly, so the expected
    masked fraction of a text of n words is ``mlm_prob + (1 - mlm_prob)^n / n``.
    Deterministic given ``seed``; inside a DataLoader worker the stream is re-keyed by the worker's
    seed (which DataLoader derives per worker and epoch from the main process' seeded RNG), so
    workers and epochs do not repeat each other's masks.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, mlm_prob: float = 0.25, seed: int = 0) -> None:
        if not 0.0 < mlm_prob <= 1.0:
            raise ValueError(f"mlm_prob must be in (0, 1], got {mlm_prob}")
        self.mlm_prob, self.seed = mlm_prob, seed
        self.mask_id = tokenizer.mask_token_id
        self.special_ids = torch.tensor(sorted(tokenizer.all_special_ids), dtype=torch.long)
        vocab = torch.arange(len(tokenizer))
        self.random_pool = vocab[~torch.isin(vocab, self.special_ids)]  # "random token": never a special one
        self._generator = torch.Generator().manual_seed(seed)
        self._key: int | None = None

    def _rng(self) -> torch.Generator:
        info = get_worker_info()
        key = None if info is None else info.seed
        if key != self._key:
            self._key = key
            self._generator.manual_seed(self.seed if key is None else (self.seed * 1_000_003 + key) % 2**63)
        return self._generator

    def choose_tokens(self, text: TextBatch, rng: torch.Generator) -> torch.Tensor:
        """bool [B, L]: the real tokens of the chosen words."""
        real = (text.word_ids >= 0) & ~torch.isin(text.input_ids, self.special_ids)
        word = text.word_ids.clamp(min=0)
        batch, length = word.shape
        n_words = torch.where(real, word + 1, 0).amax(dim=1, keepdim=True)  # word ids are 0..n-1 per text
        slots = torch.arange(length).unsqueeze(0) < n_words
        chosen_word = (torch.rand(batch, length, generator=rng) < self.mlm_prob) & slots
        none = ~chosen_word.any(dim=1) & (n_words.squeeze(1) > 0)
        fallback = (torch.rand(batch, generator=rng) * n_words.squeeze(1)).long().clamp(max=length - 1)
        chosen_word[none, fallback[none]] = True
        return real & chosen_word.gather(1, word)

    def __call__(self, text: TextBatch) -> tuple[torch.Tensor, torch.Tensor]:
        rng = self._rng()
        masked = self.choose_tokens(text, rng)
        labels = torch.where(masked, text.input_ids, IGNORE_INDEX)
        action = torch.rand(masked.shape, generator=rng)
        random_ids = self.random_pool[torch.randint(len(self.random_pool), masked.shape, generator=rng)]
        ids = torch.where(masked & (action < 0.8), self.mask_id, text.input_ids)
        ids = torch.where(masked & (action >= 0.8) & (action < 0.9), random_ids, ids)
        return ids, labels


class BatchCollator:
    """DataLoader ``collate_fn`` for the reader samples.

    Tensors are stacked, ints become int64 tensors, floats float32, ``"text"`` becomes
    ``text_ids``/``text_mask``/``text_word_ids`` (+ ``mlm_ids``/``mlm_labels`` with ``mlm``), and
    anything else (strings, answer lists) stays a list.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int = MAX_TEXT_LEN,
        mlm: WholeWordMaskCollator | None = None,
    ) -> None:
        self.tokenizer, self.max_length, self.mlm = tokenizer, max_length, mlm

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = {}
        for key in samples[0]:
            values = [s[key] for s in samples]
            if key == "text":
                batch.update(self._text(values))
            elif isinstance(values[0], torch.Tensor):
                batch[key] = torch.stack(values)
            elif isinstance(values[0], (bool, int)):
                batch[key] = torch.tensor(values, dtype=torch.long)
            elif isinstance(values[0], float):
                batch[key] = torch.tensor(values, dtype=torch.float32)
            else:
                batch[key] = values
        return batch

    def _text(self, texts: list[str]) -> dict[str, torch.Tensor]:
        text = encode_texts(self.tokenizer, texts, self.max_length)
        out = {"text_ids": text.input_ids, "text_mask": text.attention_mask, "text_word_ids": text.word_ids}
        if self.mlm is not None:
            out["mlm_ids"], out["mlm_labels"] = self.mlm(text)
        return out
