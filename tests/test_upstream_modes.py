"""The switches that reproduce the released code (docs/fidelity.md rows 9–12): upstream's fixed-budget MLM
masking on text padded to 40, one stochastic-depth draw per sample below F, and fp16 AMP with fp32 attention
logits; and that the defaults still compute what they computed before the switches existed."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from pathlib import Path
from typing import Any, get_args

import pytest
import torch
import torch.nn.functional as F

from vlmerge.data.collate import (
    IGNORE_INDEX,
    MASKING_MODES,
    BatchCollator,
    MaskingMode,
    TextBatch,
    WholeWordMaskCollator,
    encode_texts,
)
from vlmerge.data.tokenizer import load_tokenizer, train_wordpiece
from vlmerge.model import create_model
from vlmerge.model.checkpoint import load_state, save_model
from vlmerge.model.config import DROP_PATH_MODES, DropPathMode, config_hash, model_config
from vlmerge.model.errors import ModelConfigError
from vlmerge.model.layers import Attention, DropPath, attention_fp32_logits
from vlmerge.pretrain.config import DropPathMode as SettingsDropPathMode
from vlmerge.pretrain.config import MlmMasking, PretrainSettings
from vlmerge.pretrain.run import model_overrides
from vlmerge.train.errors import TrainConfigError
from vlmerge.train.trainer import precision_flag

WORDS = ["red", "circle", "left", "of", "the", "unaffable", "photograph", "xylophone", "zebra", "colour", "?"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    # A small vocabulary, so that most words split into several ## sub-tokens.
    rng = random.Random(0)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))) for _ in range(2000)]
    return load_tokenizer(train_wordpiece(corpus, Path(tmp_path_factory.mktemp("tok")), vocab_size=60))


def sample_texts(rng: random.Random, n: int) -> list[str]:
    return [" ".join(rng.choice(WORDS) for _ in range(rng.choice([1, 2, 4, 8, 30]))) for _ in range(n)]


# ----------------------------------------------------------------------------- the default, bit for bit


class StubTokenizer:
    """What the masker reads of a tokenizer: ids 0–4 special ([PAD] 0 … [MASK] 4), 30 tokens."""

    mask_token_id = 4
    all_special_ids = [0, 1, 2, 3, 4]

    def __len__(self) -> int:
        return 30


def test_default_masking_is_unchanged_bit_for_bit() -> None:
    """Output of the masking as it was before the upstream mode existed (seed 7, three calls)."""
    ids = torch.tensor(
        [
            [2, 10, 11, 12, 13, 14, 15, 3, 0, 0, 0, 0],
            [2, 20, 21, 22, 3, 0, 0, 0, 0, 0, 0, 0],
            [2, 5, 6, 7, 8, 9, 16, 17, 18, 19, 23, 3],
            [2, 1, 24, 3, 0, 0, 0, 0, 0, 0, 0, 0],
        ]
    )
    word = torch.tensor(
        [
            [-1, 0, 0, 1, 2, 2, 3, -1, -1, -1, -1, -1],
            [-1, 0, 1, 1, -1, -1, -1, -1, -1, -1, -1, -1],
            [-1, 0, 1, 2, 2, 2, 3, 4, 5, 6, 6, -1],
            [-1, 0, 1, -1, -1, -1, -1, -1, -1, -1, -1, -1],
        ]
    )
    masker = WholeWordMaskCollator(StubTokenizer(), 0.25, seed=7)  # type: ignore[arg-type]
    got = [masker(TextBatch(ids, (ids != 0).long(), word)) for _ in range(3)]
    n = IGNORE_INDEX
    expected = [
        (
            [[2, 10, 11, 4, 13, 14, 15, 3, 0, 0, 0, 0], [2, 20, 4, 4, 3, 0, 0, 0, 0, 0, 0, 0],
             [2, 5, 6, 7, 8, 9, 16, 17, 4, 19, 23, 3], [2, 1, 4, 3, 0, 0, 0, 0, 0, 0, 0, 0]],
            [[n, n, n, 12, n, n, n, n, n, n, n, n], [n, n, 21, 22, n, n, n, n, n, n, n, n],
             [n, n, n, n, n, n, n, n, 18, n, n, n], [n, n, 24, n, n, n, n, n, n, n, n, n]],
        ),
        (
            [[2, 10, 11, 12, 13, 14, 4, 3, 0, 0, 0, 0], [2, 20, 21, 22, 3, 0, 0, 0, 0, 0, 0, 0],
             [2, 5, 6, 4, 4, 4, 16, 4, 18, 19, 23, 3], [2, 1, 24, 3, 0, 0, 0, 0, 0, 0, 0, 0]],
            [[n, n, n, n, n, n, 15, n, n, n, n, n], [n, 20, n, n, n, n, n, n, n, n, n, n],
             [n, n, n, 7, 8, 9, n, 17, n, n, n, n], [n, n, n, n, n, n, n, n, n, n, n, n]],
        ),
        (
            [[2, 26, 4, 12, 13, 14, 15, 3, 0, 0, 0, 0], [2, 20, 4, 4, 3, 0, 0, 0, 0, 0, 0, 0],
             [2, 5, 6, 7, 8, 9, 16, 11, 4, 19, 23, 3], [2, 1, 4, 3, 0, 0, 0, 0, 0, 0, 0, 0]],
            [[n, 10, 11, n, n, n, n, n, n, n, n, n], [n, n, 21, 22, n, n, n, n, n, n, n, n],
             [n, n, n, n, n, n, 16, 17, 18, n, n, n], [n, n, 24, n, n, n, n, n, n, n, n, n]],
        ),
    ]  # fmt: skip
    for (masked, labels), (want_ids, want_labels) in zip(got, expected, strict=True):
        assert masked.tolist() == want_ids
        assert labels.tolist() == want_labels


def test_the_settings_name_the_same_modes() -> None:
    assert get_args(MlmMasking) == get_args(MaskingMode) == MASKING_MODES
    assert get_args(SettingsDropPathMode) == get_args(DropPathMode) == DROP_PATH_MODES
    defaults = PretrainSettings()
    assert (defaults.mlm_masking, defaults.pad_text_to_max, defaults.drop_path_mode) == (
        "bernoulli_words",
        False,
        "per_modality",
    )


# ----------------------------------------------------------------------------- upstream's MLM masking


def hf_candidates(tokens: list[str]) -> list[list[int]]:
    """HF ``_whole_word_mask``'s candidate list: every position but [CLS]/[SEP], ## joining the one before."""
    cand_indexes: list[list[int]] = []
    for i, token in enumerate(tokens):
        if token == "[CLS]" or token == "[SEP]":
            continue
        if len(cand_indexes) >= 1 and token.startswith("##"):
            cand_indexes[-1].append(i)
        else:
            cand_indexes.append([i])
    return cand_indexes


def hf_whole_word_mask(tokens: list[str], order: list[int], mlm_prob: float) -> list[int]:
    """HF ``DataCollatorForWholeWordMask._whole_word_mask`` line by line, with the shuffle given as ``order``
    (the permutation ``random.shuffle`` would have applied)."""
    cand_indexes = hf_candidates(tokens)
    cand_indexes = [cand_indexes[j] for j in order]
    num_to_predict = min(512, max(1, int(round(len(tokens) * mlm_prob))))
    masked_lms: list[int] = []
    covered_indexes: set[int] = set()
    for index_set in cand_indexes:
        if len(masked_lms) >= num_to_predict:
            break
        if len(masked_lms) + len(index_set) > num_to_predict:
            continue
        if any(index in covered_indexes for index in index_set):
            continue
        for index in index_set:
            covered_indexes.add(index)
            masked_lms.append(index)
    return [1 if i in covered_indexes else 0 for i in range(len(tokens))]


def hf_predicted(tokenizer: Any, ids: list[int], mask_labels: list[int]) -> list[bool]:
    """HF's mask step: the drawn positions, less special tokens and pads."""
    special = set(tokenizer.all_special_ids)
    return [bool(m) and i not in special and i != tokenizer.pad_token_id for i, m in zip(ids, mask_labels)]


def test_fixed_budget_matches_a_naive_port_of_hf(tokenizer) -> None:
    """Same generator, same permutations: the predicted positions equal HF's algorithm's, text by text."""
    rng = random.Random(1)
    masker = WholeWordMaskCollator(tokenizer, 0.25, seed=3, masking="upstream_fixed_budget")
    reference = torch.Generator()
    checked_pads = 0
    for _ in range(40):
        text = encode_texts(tokenizer, sample_texts(rng, 8), max_length=40, pad_to_max_length=True)
        state = masker._rng().get_state()
        reference.set_state(state)
        masked, labels = masker(text)
        for row, ids in enumerate(text.input_ids.tolist()):
            tokens = tokenizer.convert_ids_to_tokens(ids)
            order = torch.randperm(len(hf_candidates(tokens)), generator=reference).tolist()
            drawn = hf_whole_word_mask(tokens, order, 0.25)
            assert sum(drawn) <= 10  # round(0.25 · 40)
            checked_pads += sum(d for d, i in zip(drawn, ids) if i == tokenizer.pad_token_id)
            got = [label != IGNORE_INDEX for label in labels[row].tolist()]
            assert got == hf_predicted(tokenizer, ids, drawn)
        predicted = labels != IGNORE_INDEX
        assert (labels[predicted] == text.input_ids[predicted]).all()
        assert (masked[~predicted] == text.input_ids[~predicted]).all()
    assert checked_pads > 0  # short texts: pads were drawn, spent budget, and were not predicted


def test_fixed_budget_properties(tokenizer) -> None:
    rng = random.Random(2)
    masker = WholeWordMaskCollator(tokenizer, 0.25, seed=5, masking="upstream_fixed_budget")
    pad, specials = tokenizer.pad_token_id, torch.tensor(tokenizer.all_special_ids)
    continues = torch.tensor([t.startswith("##") for t in tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))])
    for _ in range(30):
        text = encode_texts(tokenizer, sample_texts(rng, 8), max_length=40, pad_to_max_length=True)
        drawn = masker.choose_fixed_budget(text.input_ids, masker._rng())
        assert (drawn.sum(dim=1) <= 10).all()
        assert not (
            drawn & torch.isin(text.input_ids, torch.tensor([tokenizer.cls_token_id, tokenizer.sep_token_id]))
        ).any()
        # A text of only single-token candidates spends the whole budget.
        single = ~(continues[text.input_ids] & (text.input_ids != pad)).any(dim=1)
        assert (drawn.sum(dim=1)[single] == 10).all()
        _, labels = masker(text)
        predicted = labels != IGNORE_INDEX
        assert not (predicted & torch.isin(text.input_ids, specials)).any()  # never a pad, [CLS] or [SEP]
        # Whole words: a predicted token's ## continuations are predicted with it, and so is its head.
        for row in range(text.input_ids.shape[0]):
            ids = text.input_ids[row].tolist()
            for i in range(1, len(ids)):
                if continues[ids[i]] and ids[i] != pad:
                    assert predicted[row, i] == predicted[row, i - 1]


def test_fixed_budget_rates_on_short_texts(tokenizer) -> None:
    """A one-token word among 37 pads: 38 single candidates, 10 drawn, so the word is predicted w.p. 10/38;
    of the predicted tokens 80 % become [MASK], 10 % a random id (any of the vocabulary), 10 % stay."""
    masker = WholeWordMaskCollator(tokenizer, 0.25, seed=11, masking="upstream_fixed_budget")
    word = "red" if len(tokenizer.tokenize("red")) == 1 else "?"
    assert len(tokenizer.tokenize(word)) == 1
    text = encode_texts(tokenizer, [word] * 400, max_length=40, pad_to_max_length=True)
    hits = mask_hits = random_hits = kept = random_specials = 0
    specials = torch.tensor([i for i in tokenizer.all_special_ids if i != tokenizer.mask_token_id])
    calls = 25
    for _ in range(calls):
        masked, labels = masker(text)
        predicted = labels[:, 1] != IGNORE_INDEX
        assert (labels[:, 2:] == IGNORE_INDEX).all()  # [SEP] and pads never predicted
        hits += int(predicted.sum())
        out = masked[predicted, 1]
        mask_hits += int((out == tokenizer.mask_token_id).sum())
        kept += int((out == text.input_ids[0, 1]).sum())
        random_hits += int(((out != tokenizer.mask_token_id) & (out != text.input_ids[0, 1])).sum())
        random_specials += int(torch.isin(out, specials).sum())
    n = 400 * calls
    rate = hits / n
    assert abs(rate - 10 / 38) < 4 * (10 / 38 * 28 / 38 / n) ** 0.5
    # A random id may equal the word itself (1 / vocabulary), counted as kept here.
    assert abs(mask_hits / hits - 0.8) < 0.03
    assert abs(random_hits / hits - 0.1 * (1 - 1 / len(tokenizer))) < 0.025
    assert abs(kept / hits - 0.1) < 0.025
    assert random_specials > 0  # HF's random id: any of the vocabulary, special tokens too


def test_fixed_budget_is_deterministic_and_defaults_are_untouched(tokenizer) -> None:
    rng = random.Random(4)
    text = encode_texts(tokenizer, sample_texts(rng, 16), max_length=40, pad_to_max_length=True)
    a = WholeWordMaskCollator(tokenizer, 0.25, seed=9, masking="upstream_fixed_budget")(text)
    b = WholeWordMaskCollator(tokenizer, 0.25, seed=9, masking="upstream_fixed_budget")(text)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    with pytest.raises(ValueError, match="masking"):
        WholeWordMaskCollator(tokenizer, 0.25, masking="hf")  # type: ignore[arg-type]


def test_batch_collator_pads_to_max(tokenizer) -> None:
    samples = [{"text": "red circle"}, {"text": "zebra"}]
    assert BatchCollator(tokenizer, 40)(samples)["text_ids"].shape[1] < 40  # the longer text's length
    padded = BatchCollator(tokenizer, 40, pad_to_max=True)(samples)
    assert padded["text_ids"].shape == padded["text_mask"].shape == (2, 40)
    assert padded["text_mask"].sum().item() == BatchCollator(tokenizer, 40)(samples)["text_mask"].sum().item()


def test_padding_to_max_changes_no_real_token_of_the_model(tokenizer) -> None:
    """Pad keys are masked in attention, so padding to 40 leaves every real position's output as it was."""
    torch.manual_seed(0)
    model = create_model("tiny", "modality_specific", vocab_size=len(tokenizer), num_layers=3, dim=32, mlp_dim=64)
    model.eval()
    texts = ["red circle left of the zebra", "xylophone"]
    short = encode_texts(tokenizer, texts, max_length=40)
    full = encode_texts(tokenizer, texts, max_length=40, pad_to_max_length=True)
    images = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        a = model.encode_pair(short.input_ids, short.attention_mask, images)
        b = model.encode_pair(full.input_ids, full.attention_mask, images)
    t = short.input_ids.shape[1]
    real = short.attention_mask.bool()
    torch.testing.assert_close(a[:, :t][real], b[:, :t][real], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a[:, t:], b[:, 40:], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- stochastic depth


def record_keeps(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, torch.Tensor]]:
    """Every DropPath call, as (module id, per-sample keep flags it applied)."""
    calls: list[tuple[int, torch.Tensor]] = []
    original = DropPath.forward

    def forward(self: DropPath, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        keep = self.draw(x) if keep is None else keep
        calls.append((id(self), keep.flatten().clone()))
        return original(self, x, keep)

    monkeypatch.setattr(DropPath, "forward", forward)
    return calls


def pair_model(mode: DropPathMode, drop_path: float) -> Any:
    torch.manual_seed(0)
    return create_model("pico", "modality_specific", num_layers=4, drop_path=drop_path, drop_path_mode=mode)


def pair_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 50, (16, 6), generator=gen)
    mask = torch.ones(16, 6, dtype=torch.long)
    mask[::3, 4:] = 0
    return ids, mask, torch.randn(16, 3, 32, 32, generator=gen)


@pytest.mark.parametrize("mode", DROP_PATH_MODES)
def test_drop_path_masks_of_the_two_halves(mode: DropPathMode, monkeypatch: pytest.MonkeyPatch) -> None:
    """Below F (layers 0, 1 of 4): per_sample applies one draw per sample and branch to the text and image
    halves of the same block; per_modality draws each half apart (so some sample differs at seed 0)."""
    model = pair_model(mode, 0.6).train()
    calls = record_keeps(monkeypatch)
    torch.manual_seed(0)
    model.encode_pair(*pair_inputs())
    blocks = list(model.transformer.blocks)
    differs = False
    for layer in (1,):  # layer 0 has rate 0 (nn.Identity): nothing to draw
        drop = blocks[layer].drop_path
        keeps = [k for module, k in calls if module == id(drop)]
        assert len(keeps) == 4  # text attn, text mlp, image attn, image mlp
        same = torch.equal(keeps[0], keeps[2]) and torch.equal(keeps[1], keeps[3])
        if mode == "per_sample":
            assert same
        differs |= not same
        assert 0 < int(keeps[0].sum()) < 16  # a real draw at p = 0.6 · 1/3
    assert differs == (mode == "per_modality")
    # Layers >= F see the joint sequence once: one draw per branch in either mode.
    for layer in (2, 3):
        assert len([k for module, k in calls if module == id(blocks[layer].drop_path)]) == 2


def test_per_sample_halves_compute_what_the_separate_forwards_do() -> None:
    """Without drops (rate 0 in training, or eval mode) both modes give the same outputs exactly."""
    ids, mask, images = pair_inputs()
    for drop_path, train in ((0.0, True), (0.5, False)):
        a, b = pair_model("per_modality", drop_path), pair_model("per_sample", drop_path)
        b.load_state_dict(a.state_dict())
        a.train(train)
        b.train(train)
        with torch.no_grad():
            assert torch.equal(a.encode_pair(ids, mask, images), b.encode_pair(ids, mask, images))


def test_drop_path_mode_in_the_config_and_the_checkpoint(tmp_path: Path) -> None:
    base = model_config("pico")
    upstream = model_config("pico", drop_path_mode="per_sample")
    assert base.drop_path_mode == "per_modality" and "drop_path_mode" not in base.overrides()
    assert upstream.overrides()["drop_path_mode"] == "per_sample"
    assert config_hash(base, "shared") != config_hash(upstream, "shared")
    # The default enters no hash: the hash of a config without the field, as before it existed.
    fields = dataclasses.asdict(base)
    for name in ("fusion_start_layer", "drop_path_mode"):
        del fields[name]
    record = {"config": fields, "sharing": "shared"}
    assert config_hash(base, "shared") == hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    with pytest.raises(ModelConfigError, match="drop_path_mode"):
        model_config("pico", drop_path_mode="per_token")
    torch.manual_seed(0)
    save_model(tmp_path / "m.safetensors", create_model("pico", "shared", drop_path_mode="per_sample"))
    assert load_state(tmp_path / "m.safetensors")[1].config.drop_path_mode == "per_sample"


def test_the_recipe_sets_the_model_mode() -> None:
    assert "drop_path_mode" not in model_overrides(PretrainSettings())
    assert model_overrides(PretrainSettings(drop_path_mode="per_sample"))["drop_path_mode"] == "per_sample"
    with pytest.raises(ValueError, match="drop_path_mode"):
        PretrainSettings(model={"drop_path_mode": 1})


# ----------------------------------------------------------------------------- precision


def test_precision_flags() -> None:
    assert precision_flag("16", cuda=True) == "16-mixed"
    assert precision_flag("bf16", cuda=True) == "bf16-mixed"
    assert precision_flag("auto", cuda=True) == "bf16-mixed"
    assert precision_flag("auto", cuda=False) == "32-true"
    with pytest.raises(TrainConfigError, match="CUDA"):
        precision_flag("16", cuda=False)
    assert PretrainSettings(precision="16").precision == "16"


def test_fp32_logit_attention_equals_the_fused_kernel_in_fp32() -> None:
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 7, 8, generator=gen) for _ in range(3))
    bias = torch.randn(1, 2, 7, 7, generator=gen)
    bias = torch.where(torch.arange(7) < 5, bias, -1e4)  # the last two keys padded
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    torch.testing.assert_close(attention_fp32_logits(q, k, v, bias), want, rtol=1e-5, atol=1e-6)
    # Naive reference: softmax(q·kᵀ/√d + bias)·v in float64.
    ref = ((q.double() @ k.double().transpose(-2, -1)) / 8**0.5 + bias.double()).softmax(-1) @ v.double()
    torch.testing.assert_close(attention_fp32_logits(q, k, v, bias), ref.float(), rtol=1e-5, atol=1e-6)


def test_attention_takes_the_fp32_path_under_fp16_autocast(monkeypatch: pytest.MonkeyPatch) -> None:
    """The module's switch, checked on CPU without fp16 kernels: with the fp16 test forced, the output equals
    the fused path's (both run in fp32 here)."""
    torch.manual_seed(0)
    attn = Attention(16, 2)
    x = torch.randn(2, 5, 16)
    mask = torch.zeros(1, 2, 5, 5)
    mask[..., 3:] = -1e4
    plain = attn(x, mask)
    used: list[bool] = []

    def fp32(*args: torch.Tensor) -> torch.Tensor:
        used.append(True)
        return attention_fp32_logits(*args)

    monkeypatch.setattr("vlmerge.model.layers.fp16_autocast", lambda device_type: True)
    monkeypatch.setattr("vlmerge.model.layers.attention_fp32_logits", fp32)
    torch.testing.assert_close(attn(x, mask), plain, rtol=1e-5, atol=1e-6)
    assert used == [True]
