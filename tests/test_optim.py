"""Optimiser groups (decay by parameter kind, LR multipliers) and the warm-up + linear-decay schedule."""

from __future__ import annotations

import pytest
import torch

from vlmerge.model import Heads, Sharing, VLModel, create_model
from vlmerge.train.errors import TrainConfigError
from vlmerge.train.optim import (
    OptimConfig,
    build_optimizer,
    parameter_groups,
    warmup_linear_factor,
    warmup_linear_schedule,
)

SMALL = dict(num_layers=3, dim=16, num_heads=2, mlp_dim=32, image_size=32, max_text_len=8, vocab_size=30)
ALL_HEADS = Heads(mlm=True, itm=True, itc=True, itc_vl=True, vqa_answers=5, nlvr2=True)


def small_model(sharing: Sharing | str) -> VLModel:
    torch.manual_seed(0)
    return create_model("tiny", sharing, ALL_HEADS, **SMALL)


def naive_decayed(model: VLModel) -> set[str]:
    """Independent reference: every matrix-shaped parameter except the two that are not module weights."""
    return {n for n, p in model.named_parameters() if p.ndim >= 2} - {
        "relative_position_bias_table",
        "transformer.cls_token",
    }


@pytest.mark.parametrize("sharing", [s.value for s in Sharing])
def test_every_parameter_in_exactly_one_group_and_decay_only_on_weight_matrices(sharing: str) -> None:
    model = small_model(sharing)
    groups = parameter_groups(model, OptimConfig())
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())  # all, each once
    decayed = {n for g in groups if g["weight_decay"] > 0 for n in g["names"]}
    assert decayed == naive_decayed(model)
    no_decay = {n for g in groups if g["weight_decay"] == 0 for n in g["names"]}
    for name in no_decay:
        assert (
            name.endswith(
                (
                    "bias",
                    "norm.weight",
                    "LayerNorm.weight",
                    "gamma_1",
                    "gamma_2",
                    "scale",
                    "relative_position_bias_table",
                    "cls_token",
                    ".1.weight",
                )
            )
            or ".norm" in name
        ), name
    # The upstream quirk: per-expert LayerNorm weights must not be decayed.
    if Sharing(sharing) in (Sharing.MODALITY_SPECIFIC, Sharing.LN, Sharing.ATTN):
        assert "transformer.blocks.0.norm1.v.weight" in no_decay
        assert "transformer.blocks.2.norm1.vl.weight" in no_decay
    for name in (
        "relative_position_bias_table",
        "logit_scale",
        "logit_vl_scale",
        "transformer.cls_token",
        "transformer.blocks.1.gamma_2",
        "vqa_classifier.1.weight",
        "mlm_score.bias",
    ):
        assert name in no_decay


@pytest.mark.parametrize("sharing", [s.value for s in Sharing])
def test_decay_norm_and_scale_follows_upstreams_name_rule(sharing: str) -> None:
    """decay_norm_and_scale: upstream's rule (vilt_utils.py): exempt only names containing one of its no_decay
    substrings; gamma_*, cls_token, logit scales and norms not named norm/norm1/norm2/LayerNorm + .weight decay."""
    model = small_model(sharing)
    groups = parameter_groups(model, OptimConfig(decay_norm_and_scale=True))
    assert sorted(id(p) for g in groups for p in g["params"]) == sorted(id(p) for p in model.parameters())
    decayed = {n for g in groups if g["weight_decay"] > 0 for n in g["names"]}
    no_decay = {n for g in groups if g["weight_decay"] == 0 for n in g["names"]}
    exempt = ("bias", "LayerNorm.weight", "norm.weight", "norm1.weight", "norm2.weight")  # as written upstream
    assert no_decay == {n for n, _ in model.named_parameters() if any(e in n for e in exempt)}
    for name in (
        "logit_scale",
        "logit_vl_scale",
        "transformer.cls_token",
        "transformer.blocks.1.gamma_2",
        "vqa_classifier.1.weight",  # the head's LayerNorm, held by index
        "text_embeddings.word_embeddings.weight",
    ):
        assert name in decayed, name
    for name in ("relative_position_bias_table", "mlm_score.transform.LayerNorm.weight", "transformer.norm.weight"):
        assert name in no_decay, name
    if Sharing(sharing) in (Sharing.MODALITY_SPECIFIC, Sharing.LN, Sharing.ATTN):
        # The upstream quirk itself: per-expert LayerNorm weights miss the substrings and are decayed.
        assert "transformer.blocks.0.norm1.v.weight" in decayed
        assert "transformer.blocks.0.norm1.v.bias" in no_decay
    else:
        assert "transformer.blocks.0.norm1.weight" in no_decay
    # The default keeps the module-kind rule (the test above): these are exempt there.
    default = {n for g in parameter_groups(model, OptimConfig()) if g["weight_decay"] == 0 for n in g["names"]}
    assert {"logit_scale", "transformer.cls_token", "transformer.blocks.1.gamma_2"} <= default


def test_adamw_hyper_parameters_and_decoupled_decay() -> None:
    model = small_model("modality_specific")
    optimizer = build_optimizer(model, OptimConfig(lr=0.1, weight_decay=0.5))
    for group in optimizer.param_groups:
        assert group["betas"] == (0.9, 0.98) and group["eps"] == 1e-8
        assert group["weight_decay"] in (0.0, 0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # zero gradient: Adam's term is 0, only decoupled decay moves weights
    decayed = naive_decayed(model)
    for name, p in model.named_parameters():
        expected = before[name] * (1 - 0.1 * 0.5) if name in decayed else before[name]
        torch.testing.assert_close(p.detach(), expected, msg=name)


def test_lr_multipliers_by_longest_module_prefix() -> None:
    model = small_model("shared")
    config = OptimConfig(lr=1e-3, lr_multipliers=(("vqa_classifier", 10.0), ("vqa_classifier.3", 5.0)))
    groups = parameter_groups(model, config)
    lr_of = {n: g["lr"] for g in groups for n in g["names"]}
    assert lr_of["vqa_classifier.0.weight"] == pytest.approx(1e-2)
    assert lr_of["vqa_classifier.3.bias"] == pytest.approx(5e-3)
    assert lr_of["nlvr2_classifier.0.weight"] == pytest.approx(1e-3)
    assert lr_of["transformer.blocks.0.attn.qkv.weight"] == pytest.approx(1e-3)
    assert {g["name"] for g in groups} == {
        "decay",
        "no_decay",
        "decay/vqa_classifier",
        "no_decay/vqa_classifier",
        "decay/vqa_classifier.3",
        "no_decay/vqa_classifier.3",
    }


@pytest.mark.parametrize("prefix", ["vqa", "nothing", "vqa_classifier.9"])
def test_a_multiplier_prefix_matching_no_parameter_is_an_error(prefix: str) -> None:
    with pytest.raises(TrainConfigError, match="match no trainable parameter"):
        parameter_groups(small_model("shared"), OptimConfig(lr_multipliers=((prefix, 10.0),)))


def test_schedule_at_hand_worked_steps() -> None:
    # warm-up 4 of 12 steps: 0, 1/4, 2/4, 3/4, 1, then (12 - s) / 8 down to 0 at step 12.
    expected = {0: 0.0, 1: 0.25, 2: 0.5, 3: 0.75, 4: 1.0, 6: 0.75, 8: 0.5, 11: 0.125, 12: 0.0, 15: 0.0}
    for step, factor in expected.items():
        assert warmup_linear_factor(step, 4, 12) == pytest.approx(factor)
    model = small_model("shared")
    optimizer = build_optimizer(model, OptimConfig(lr=1e-3, lr_multipliers=(("itm_score", 10.0),)))
    schedule = warmup_linear_schedule(optimizer, 4, 12)
    seen = {}
    for step in range(13):
        seen[step] = {g["name"]: g["lr"] for g in optimizer.param_groups}
        optimizer.step()
        schedule.step()
    for step in (0, 1, 4, 6, 11, 12):
        assert seen[step]["decay"] == pytest.approx(1e-3 * expected[step])
        assert seen[step]["decay/itm_score"] == pytest.approx(1e-2 * expected[step])


def test_schedule_without_warmup_starts_at_full_rate_and_bad_lengths_are_errors() -> None:
    assert warmup_linear_factor(0, 0, 10) == 1.0 and warmup_linear_factor(5, 0, 10) == 0.5
    assert warmup_linear_factor(3, 10, 10) == pytest.approx(0.3)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    for warmup, total in ((5, 4), (-1, 4), (0, 0)):
        with pytest.raises(TrainConfigError):
            warmup_linear_schedule(optimizer, warmup, total)
