"""Batching: tokenised text with word ids, whole-word masking for MLM (docs/objectives.md), sample stacking.

Two masking modes (:data:`MaskingMode`):

- ``bernoulli_words`` (the default): each *word* (the sub-tokens that share a fast-tokenizer word id) is
  picked with probability ``mlm_prob``, at least one per text, then BERT's 80/10/10 rule applies per token.
  Only real tokens are candidates — never ``[PAD]``, ``[CLS]`` or ``[SEP]``.
- ``upstream_fixed_budget``: the released code's masking (HF's whole-word collator on text padded to 40).
  Every position but ``[CLS]``/``[SEP]`` is a candidate, a ``##`` sub-token joining the candidate before
  it, so each ``[PAD]`` is a one-token word; the candidates are shuffled and taken in that order while
  they fit a budget of ``round(mlm_prob × L)`` tokens (L: the padded length, 10 of 40 at 0.25); then the
  special tokens and pads among them are dropped (HF's mask step), so pads spend the budget without being
  masked or predicted, and the rest get 80/10/10 with random ids from the whole vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch.utils.data import get_worker_info

from vlmerge.data.tokenizer import MAX_TEXT_LEN, TextTokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100  # label of positions the MLM loss skips (torch cross-entropy's default)
MaskingMode = Literal["bernoulli_words", "upstream_fixed_budget"]
MASKING_MODES: tuple[MaskingMode, ...] = ("bernoulli_words", "upstream_fixed_budget")


@dataclass(frozen=True)
class TextBatch:
    """``input_ids``, ``attention_mask`` (1 = real token incl. [CLS]/[SEP]) and ``word_ids``
    (word index within its text, -1 for [CLS]/[SEP]/[PAD]): all int64 [B, L]."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    word_ids: torch.Tensor


def encode_texts(
    tokenizer: PreTrainedTokenizerBase | TextTokenizer,
    texts: Sequence[str],
    max_length: int = MAX_TEXT_LEN,
    pad_to_max_length: bool = False,
) -> TextBatch:
    """Tokenise ``texts`` to at most ``max_length`` tokens ([CLS] … [SEP]), padded to the longest (or to max).

    A :class:`~vlmerge.data.tokenizer.TextTokenizer` (the evaluation stages') and transformers' tokenizer
    give the same batch."""
    if isinstance(tokenizer, TextTokenizer):
        encodings = tokenizer.encode_batch(list(texts), max_length, pad_to_max_length)
        shape = (len(encodings), len(encodings[0]) if encodings else 0)
        return TextBatch(
            torch.tensor([e.ids for e in encodings], dtype=torch.long).reshape(shape),
            torch.tensor([e.attention_mask for e in encodings], dtype=torch.long).reshape(shape),
            torch.tensor([[-1 if w is None else w for w in e.word_ids] for e in encodings], dtype=torch.long).reshape(
                shape
            ),
        )
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

    ``masking`` picks the mode (module docstring). With ``bernoulli_words`` every text with at least one
    real token gets at least one masked word (as BERT/HF guarantee one prediction per sequence): when no
    word is drawn, one is picked uniformly, so the expected masked fraction of a text of n words is
    ``mlm_prob + (1 - mlm_prob)^n / n``. With ``upstream_fixed_budget`` a text can end with no masked
    token (its drawn candidates all pads), as upstream's.
    Deterministic given ``seed``; inside a DataLoader worker the stream is re-keyed by the worker's
    seed (which DataLoader derives per worker and epoch from the main process' seeded RNG), so
    workers and epochs do not repeat each other's masks.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase | TextTokenizer,
        mlm_prob: float = 0.25,
        seed: int = 0,
        masking: MaskingMode = "bernoulli_words",
    ) -> None:
        if not 0.0 < mlm_prob <= 1.0:
            raise ValueError(f"mlm_prob must be in (0, 1], got {mlm_prob}")
        if masking not in MASKING_MODES:
            raise ValueError(f"masking must be one of {MASKING_MODES}, got {masking!r}")
        self.mlm_prob, self.seed, self.masking = mlm_prob, seed, masking
        self.mask_id = tokenizer.mask_token_id
        self.special_ids = torch.tensor(sorted(tokenizer.all_special_ids), dtype=torch.long)
        vocab = torch.arange(len(tokenizer))
        self.random_pool = vocab[~torch.isin(vocab, self.special_ids)]  # "random token": never a special one
        if masking == "upstream_fixed_budget":
            self.random_pool = vocab  # HF draws from the whole vocabulary
            self.boundary_ids = torch.tensor([tokenizer.cls_token_id, tokenizer.sep_token_id], dtype=torch.long)
            tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
            self.continues = torch.tensor([t.startswith("##") for t in tokens], dtype=torch.bool)
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
        if self.masking == "upstream_fixed_budget":
            return self.choose_fixed_budget(text.input_ids, rng) & ~torch.isin(text.input_ids, self.special_ids)
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

    def choose_fixed_budget(self, input_ids: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        """bool [B, L]: upstream's whole-word draw, pads and specials included (dropped by the caller).

        Candidates: every position but [CLS]/[SEP], a ``##`` token joining the candidate before it. In a
        random order (one permutation per text), a candidate is taken when it fits the remaining budget
        of ``max(1, round(mlm_prob × L))`` tokens and skipped when it does not; the draw stops at the budget.
        """
        batch, length = input_ids.shape
        budget = max(1, round(length * self.mlm_prob))
        boundary = torch.isin(input_ids, self.boundary_ids).tolist()
        continues = self.continues[input_ids].tolist()
        chosen = torch.zeros(batch, length, dtype=torch.bool)
        for row in range(batch):
            words: list[list[int]] = []
            for i in range(length):
                if boundary[row][i]:
                    continue
                if words and continues[row][i]:
                    words[-1].append(i)
                else:
                    words.append([i])
            taken = 0
            for w in torch.randperm(len(words), generator=rng).tolist():
                if taken >= budget:
                    break
                if taken + len(words[w]) <= budget:
                    chosen[row, words[w]] = True
                    taken += len(words[w])
        return chosen

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
    anything else (strings, answer lists) stays a list. Text is padded to the batch's longest, or to
    ``max_length`` with ``pad_to_max`` (as upstream, whose fixed MLM budget counts the pads).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase | TextTokenizer,
        max_length: int = MAX_TEXT_LEN,
        mlm: WholeWordMaskCollator | None = None,
        pad_to_max: bool = False,
    ) -> None:
        self.tokenizer, self.max_length, self.mlm, self.pad_to_max = tokenizer, max_length, mlm, pad_to_max

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
        text = encode_texts(self.tokenizer, texts, self.max_length, self.pad_to_max)
        out = {"text_ids": text.input_ids, "text_mask": text.attention_mask, "text_word_ids": text.word_ids}
        if self.mlm is not None:
            out["mlm_ids"], out["mlm_labels"] = self.mlm(text)
        return out
