"""Text batching and whole-word masking, checked position by position over many random batches."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from vlmerge.data.collate import IGNORE_INDEX, BatchCollator, TextBatch, WholeWordMaskCollator, encode_texts
from vlmerge.data.tokenizer import load_tokenizer, train_wordpiece

WORDS = [
    "red",
    "green",
    "circle",
    "square",
    "left",
    "of",
    "the",
    "unaffable",
    "photograph",
    "xylophone",
    "zebra",
    "what",
    "colour",
    "is",
    "there",
    "a",
    "?",
    ".",
]


def texts(rng: random.Random, n: int) -> list[str]:
    # Lengths from 1 to 45 words: short texts, padded batches and truncation at 40 tokens all occur.
    return [" ".join(rng.choice(WORDS) for _ in range(rng.choice([1, 2, 3, 5, 8, 12, 45]))) for _ in range(n)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    # A small vocabulary, so that most words split into several sub-tokens.
    folder = train_wordpiece(texts(random.Random(0), 3000), Path(tmp_path_factory.mktemp("tok")), vocab_size=70)
    return load_tokenizer(folder)


def test_encode_texts_pads_truncates_and_keeps_word_ids(tokenizer) -> None:
    batch = encode_texts(tokenizer, ["a red circle", "unaffable zebra " * 30, "?"], max_length=40)
    assert batch.input_ids.shape == batch.word_ids.shape == batch.attention_mask.shape == (3, 40)
    for row, text in enumerate(["a red circle", "unaffable zebra " * 30, "?"]):
        expected = tokenizer(text, truncation=True, max_length=40)
        n = len(expected["input_ids"])
        assert batch.input_ids[row, :n].tolist() == expected["input_ids"]
        assert batch.attention_mask[row].tolist() == [1] * n + [0] * (40 - n)
        assert (batch.input_ids[row, n:] == tokenizer.pad_token_id).all()
        words = [-1 if w is None else w for w in expected.word_ids()]
        assert batch.word_ids[row].tolist() == words + [-1] * (40 - n)
    assert batch.input_ids[1, -1] == tokenizer.sep_token_id  # truncated texts keep their [SEP]
    short = len(tokenizer("a red circle")["input_ids"])
    assert encode_texts(tokenizer, ["a red circle", "?"]).input_ids.shape == (2, short)  # padded to the longest


def masked_batches(tokenizer, seed: int, batches: int = 150):
    rng = random.Random(seed)
    collator = WholeWordMaskCollator(tokenizer, mlm_prob=0.25, seed=seed)
    for _ in range(batches):
        text = encode_texts(tokenizer, texts(rng, 16))
        ids, labels = collator(text)
        yield text, ids, labels


def word_groups(word_ids: list[int]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = defaultdict(list)
    for position, word in enumerate(word_ids):
        if word >= 0:
            groups[word].append(position)
    return groups


def test_whole_word_masking_properties(tokenizer) -> None:
    special = set(tokenizer.all_special_ids)
    p = 0.25
    masked_tokens, expected, variance = 0, 0.0, 0.0
    actions = {"mask": 0, "random": 0, "same": 0}
    for text, ids, labels in masked_batches(tokenizer, seed=0):
        chosen = labels != IGNORE_INDEX
        assert not chosen[text.word_ids < 0].any()  # never [PAD], [CLS], [SEP]
        assert torch.equal(ids[~chosen], text.input_ids[~chosen])
        assert torch.equal(labels[chosen], text.input_ids[chosen])
        for row in range(ids.shape[0]):
            groups = word_groups(text.word_ids[row].tolist())
            for positions in groups.values():  # all sub-tokens of a word together
                assert len({bool(chosen[row, q]) for q in positions}) == 1
            assert chosen[row].any() == bool(groups)  # at least one word per non-empty text
            # Exact expectation: each word with probability p, plus one uniform word when none was drawn.
            n = len(groups)
            extra = (1 - p) ** n / n
            for positions in groups.values():
                expected += len(positions) * (p + extra)
                variance += len(positions) ** 2 * (p + extra) * (1 - p - extra)
        masked_tokens += int(chosen.sum())
        original, new = text.input_ids[chosen], ids[chosen]
        assert not any(int(t) in special for t in new[new != tokenizer.mask_token_id])
        actions["mask"] += int((new == tokenizer.mask_token_id).sum())
        actions["same"] += int((new == original).sum())
        actions["random"] += int(((new != original) & (new != tokenizer.mask_token_id)).sum())
    assert abs(masked_tokens - expected) < 5 * math.sqrt(variance)
    total = sum(actions.values())
    pool = tokenizer.vocab_size - len(special)
    for name, share in [("mask", 0.8), ("random", 0.1 * (1 - 1 / pool)), ("same", 0.1 + 0.1 / pool)]:
        assert abs(actions[name] / total - share) < 5 * math.sqrt(share * (1 - share) / total), name


def test_masked_fraction_close_to_mlm_prob(tokenizer) -> None:
    rng = random.Random(5)
    collator = WholeWordMaskCollator(tokenizer, mlm_prob=0.25, seed=5)
    long_texts = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(2000)]
    text = encode_texts(tokenizer, long_texts)
    _, labels = collator(text)
    real = int((text.word_ids >= 0).sum())
    assert abs(int((labels != IGNORE_INDEX).sum()) / real - 0.25) < 0.015


def test_masking_is_deterministic_per_seed(tokenizer) -> None:
    text = encode_texts(tokenizer, texts(random.Random(3), 64))
    runs = {seed: WholeWordMaskCollator(tokenizer, seed=seed)(text) for seed in (7, 8)}
    again = WholeWordMaskCollator(tokenizer, seed=7)(text)
    assert torch.equal(runs[7][0], again[0]) and torch.equal(runs[7][1], again[1])
    assert not torch.equal(runs[7][1], runs[8][1])


class Repeated(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> dict:
        return {
            "text": "the unaffable zebra is left of the green photograph",
            "image": torch.zeros(3, 2, 2),
            "label": index % 2,
            "score": 0.5,
            "answers": ["yes"],
        }


def test_batch_collator_and_dataloader_workers(tokenizer) -> None:
    collate = BatchCollator(tokenizer, mlm=WholeWordMaskCollator(tokenizer, seed=0))
    batch = collate([Repeated()[i] for i in range(3)])
    assert batch["image"].shape == (3, 3, 2, 2) and batch["label"].tolist() == [0, 1, 0]
    assert batch["score"].dtype == torch.float32 and batch["answers"] == [["yes"]] * 3
    assert batch["text_ids"].shape == batch["mlm_ids"].shape == batch["mlm_labels"].shape
    assert isinstance(encode_texts(tokenizer, ["x"]), TextBatch)

    def run() -> list[torch.Tensor]:
        torch.manual_seed(0)
        loader = DataLoader(Repeated(), batch_size=4, num_workers=2, collate_fn=collate)
        return [b["mlm_labels"] for b in loader]

    first, second = run(), run()
    assert all(torch.equal(a, b) for a, b in zip(first, second))  # reproducible under a seeded main RNG
    assert not torch.equal(first[0], first[1])  # the two workers draw different masks
