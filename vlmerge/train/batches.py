"""Samples and batches whose randomness is a function of their key, not of the process that makes them.

The image transforms draw from torch's global generator and the whole-word masker from a stream
re-keyed per DataLoader worker; both depend on which worker got which batch and on how far its
stream has run, which a resumed run does not reproduce. Here every sample's augmentation is seeded
by its key's draw and every batch's masks by its first key, so a batch is the same whichever
worker builds it, in which run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset

from vlmerge.data.collate import BatchCollator, MaskingMode, TextBatch, WholeWordMaskCollator
from vlmerge.train.sampler import Key
from vlmerge.train.seeds import Stream, derive_seed

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class KeyedSamples(Dataset):
    """``dataset[index]`` computed with torch's global CPU generator seeded by the key's draw; adds ``"draw"``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Key) -> dict[str, Any]:
        index, draw = key
        with torch.random.fork_rng(devices=[]):  # leave the caller's generator as it was
            # The CPU generator alone: torch.manual_seed would also seed (or, before CUDA starts, queue a
            # seed with a formatted stack for) every accelerator, ~0.7 ms a sample, and fork_rng restores
            # only the CPU generator.
            torch.default_generator.manual_seed(draw)
            sample = self.dataset[index]
        return sample | {"draw": draw}


class _SeededMask(WholeWordMaskCollator):
    """Whole-word masking with a generator seeded per call instead of per worker."""

    def mask(self, text: TextBatch, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        self._generator.manual_seed(seed)
        return self(text)

    def _rng(self) -> torch.Generator:
        return self._generator


class SeededBatchCollator:
    """``BatchCollator`` output plus ``mlm_ids``/``mlm_labels`` masked with a seed from the batch's first key.

    Batch: ``image`` [B, 3, S, S], ``text_ids``/``text_mask``/``text_word_ids``/``mlm_ids``/``mlm_labels``
    [B, T] int64, ``image_index``/``text_index``/``draw`` [B] int64.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int,
        mlm_prob: float,
        masking: MaskingMode = "bernoulli_words",
        pad_to_max: bool = False,
    ) -> None:
        self.collate = BatchCollator(tokenizer, max_length, pad_to_max=pad_to_max)
        self.masker = _SeededMask(tokenizer, mlm_prob, masking=masking)

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collate(samples)
        text = TextBatch(batch["text_ids"], batch["text_mask"], batch["text_word_ids"])
        batch["mlm_ids"], batch["mlm_labels"] = self.masker.mask(text, derive_seed(samples[0]["draw"], Stream.MASK))
        return batch
