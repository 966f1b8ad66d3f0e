"""The multiway transformer: sizes, key names, routing against a naive reference, padding, rel-pos."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.builders import SMALL
from vlmerge.errors import ConfigError
from vlmerge.model import (
    Heads,
    Modality,
    ModelConfigError,
    Part,
    Sharing,
    config_hash,
    create_model,
    detect_sharing,
    expert_layout,
    model_config,
)
from vlmerge.model.model import set_text_padding
from vlmerge.model.relpos import RelPosLayout, joint_index, resize_image_table

SHARINGS = [s.value for s in Sharing]
# Which sub-modules each layout splits per expert, written out by hand (docs/model.md).
PER_EXPERT = {
    "shared": set(),
    "modality_specific": {"norm1", "attn", "norm2", "mlp"},
    "attn": {"attn", "norm1"},
    "ffn": {"mlp", "norm2"},
    "ln": {"norm1", "norm2"},
}
PARAMS = {
    "norm1": ["weight", "bias"],
    "norm2": ["weight", "bias"],
    "mlp": ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"],
    "attn": ["qkv.weight", "q_bias", "v_bias", "proj.weight", "proj.bias"],
}


def randomised(sharing: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A small model in eval mode with every parameter random, so no weight is a trivial 0 or 1."""
    torch.manual_seed(seed)
    model = create_model("tiny", sharing, **(SMALL | overrides)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def inputs(batch: int = 2, text: int = 6, image: int = 32, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (batch, text), generator=g)
    mask = torch.ones(batch, text, dtype=torch.long)
    mask[0, text - 2 :] = 0  # the first sample is padded
    return ids, mask, torch.randn(batch, 3, image, image, generator=g)


# ---------------------------------------------------------------------------------- naive reference
def naive_bias_row(a, b, grid: int, tmax: int) -> int:
    """Table row for query token a and key token b; tokens are ("t", i) or ("v", r, c), r = -1 for image CLS."""
    img_rows = (2 * grid - 1) ** 2
    text_start = img_rows + 5
    if a[0] == "t" and b[0] == "t":
        if a[1] == 0 or b[1] == 0:
            return text_start + 2 * tmax - 3 + (a[1] == 0 and b[1] == 0) * 2 + (a[1] != 0)
        return text_start + (b[1] - a[1]) + tmax - 2
    if a[0] == "v" and b[0] == "v":
        if a[1] < 0 or b[1] < 0:
            return img_rows + (a[1] < 0 and b[1] < 0) * 2 + (a[1] >= 0)
        return (a[1] - b[1] + grid - 1) * (2 * grid - 1) + (a[2] - b[2] + grid - 1)
    return img_rows + 3 + (a[0] == "v")


def naive_forward(model, ids=None, mask=None, images=None, image_type=1):
    """Explicit loops/matmuls over the state dict; returns final-norm states, text tokens first."""
    sd, cfg = model.state_dict(), model.config
    sharing = model.sharing.value
    heads, dim, grid, fusion = cfg.num_heads, cfg.dim, cfg.grid, cfg.fusion_start
    parts, tokens, keep = [], [], []
    if ids is not None:
        x = sd["text_embeddings.word_embeddings.weight"][ids] + sd["text_embeddings.token_type_embeddings.weight"][0]
        x = F.layer_norm(x, (dim,), sd["text_embeddings.LayerNorm.weight"], sd["text_embeddings.LayerNorm.bias"], 1e-12)
        parts.append(x + sd["token_type_embeddings.weight"][0])
        tokens += [("t", i) for i in range(ids.shape[1])]
        keep.append(mask.bool())
    if images is not None:
        p = cfg.patch_size
        w = sd["transformer.patch_embed.proj.weight"].reshape(dim, -1)
        patches = [
            images[:, :, r * p : (r + 1) * p, c * p : (c + 1) * p].reshape(images.shape[0], -1) @ w.T
            + sd["transformer.patch_embed.proj.bias"]
            for r in range(grid)
            for c in range(grid)
        ]
        cls = sd["transformer.cls_token"].reshape(1, dim).expand(images.shape[0], dim)
        x = torch.stack([cls, *patches], dim=1) + sd["token_type_embeddings.weight"][image_type]
        parts.append(x)
        tokens += [("v", -1, -1)] + [("v", r, c) for r in range(grid) for c in range(grid)]
        keep.append(torch.ones(x.shape[:2], dtype=torch.bool))
    x, keep = torch.cat(parts, dim=1), torch.cat(keep, dim=1)
    n = len(tokens)
    rows = torch.tensor([[naive_bias_row(a, b, grid, cfg.max_text_len) for b in tokens] for a in tokens])
    pair = ids is not None and images is not None
    for layer in range(cfg.num_layers):
        if pair and layer >= fusion:
            route = ["vl"] * n
        else:
            route = ["l" if t[0] == "t" else "v" for t in tokens]
        same = torch.tensor([[route[a] == route[b] for b in range(n)] for a in range(n)])
        allowed = same[None] & keep[:, None, :]  # [B, N, N]: within the routed group, real keys only

        def param(part, name, expert):
            e = f"{expert}." if part in PER_EXPERT[sharing] else ""
            return sd[f"transformer.blocks.{layer}.{part}.{e}{name}"]

        def per_token(fn):  # apply each token's own expert
            outs = {e: fn(e) for e in set(route)}
            return torch.stack([outs[route[i]][:, i] for i in range(n)], dim=1)

        h = per_token(lambda e: F.layer_norm(x, (dim,), param("norm1", "weight", e), param("norm1", "bias", e), 1e-6))
        qkv = per_token(
            lambda e: (
                h @ param("attn", "qkv.weight", e).T
                + torch.cat([param("attn", "q_bias", e), torch.zeros(dim), param("attn", "v_bias", e)])
            )
        )
        q, k, v = qkv.reshape(x.shape[0], n, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        bias = sd["relative_position_bias_table"][:, layer * heads : (layer + 1) * heads][rows].permute(2, 0, 1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(dim // heads) + bias
        scores = scores.masked_fill(~allowed[:, None], float("-inf"))
        att = (scores.softmax(-1) @ v).transpose(1, 2).reshape(x.shape[0], n, dim)
        att = per_token(lambda e: att @ param("attn", "proj.weight", e).T + param("attn", "proj.bias", e))
        x = x + sd[f"transformer.blocks.{layer}.gamma_1"] * att
        h = per_token(lambda e: F.layer_norm(x, (dim,), param("norm2", "weight", e), param("norm2", "bias", e), 1e-6))
        mlp = per_token(
            lambda e: (
                F.gelu(h @ param("mlp", "fc1.weight", e).T + param("mlp", "fc1.bias", e))
                @ param("mlp", "fc2.weight", e).T
                + param("mlp", "fc2.bias", e)
            )
        )
        x = x + sd[f"transformer.blocks.{layer}.gamma_2"] * mlp
    return F.layer_norm(x, (dim,), sd["transformer.norm.weight"], sd["transformer.norm.bias"], 1e-6)


# ---------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("sharing", SHARINGS)
def test_routing_matches_naive_reference(sharing):
    model = randomised(sharing)
    ids, mask, images = inputs()
    real = mask.bool()
    with torch.no_grad():
        got_text = model.encode_text(ids, mask)
        got_image = model.encode_image(images)
        got_pair = model.encode_pair(ids, mask, images)
        want_text = naive_forward(model, ids=ids, mask=mask)
        want_image = naive_forward(model, images=images)
        want_pair = naive_forward(model, ids, mask, images)
    torch.testing.assert_close(got_text[real], want_text[real], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got_image, want_image, atol=1e-4, rtol=1e-4)
    keep = torch.cat([real, torch.ones(2, got_image.shape[1], dtype=torch.bool)], dim=1)
    torch.testing.assert_close(got_pair[keep], want_pair[keep], atol=1e-4, rtol=1e-4)


def test_pair_below_fusion_is_the_two_unimodal_paths():
    """Image+text before layer F: text through l and image through v with no cross-modal attention."""
    model = randomised("modality_specific")
    ids, mask, images = inputs()
    with torch.no_grad():
        _, text_in = model.encode_text(ids, mask, return_fusion_input=True)
        _, image_in = model.encode_image(images, return_fusion_input=True)
        pair = model.encode_pair(ids, mask, images)
        # Re-run the fusion layers on the concatenation by hand: must give the pair output.
        joint = torch.cat([text_in, image_in], dim=1)
        index = joint_index(model.text_index[:6, :6], model.image_index, model._relpos_layout())
        keep = torch.cat([mask.bool(), torch.ones(image_in.shape[:2], dtype=torch.bool)], dim=1)
        fused = model.transformer.norm(model._run(joint, Modality.VL, range(1, 3), index, keep))
    torch.testing.assert_close(pair, fused)
    assert not torch.allclose(pair[:, :6], model.encode_text(ids, mask).detach())  # the vl layers did act


def test_fuse_unimodal_runs_the_vl_expert_on_the_fusion_input():
    model = randomised("modality_specific")
    ids, mask, images = inputs()
    with torch.no_grad():
        final, fusion_input = model.encode_text(ids, mask, return_fusion_input=True)
        vl = model.fuse_unimodal(fusion_input, mask, Modality.L)
        # Swapping the vl expert weights into the l expert makes the plain text path equal the vl re-run.
        for i in range(model.config.fusion_start, model.config.num_layers):
            for part in ("norm1", "attn", "norm2", "mlp"):
                getattr(model.transformer.blocks[i], part)["l"].load_state_dict(
                    getattr(model.transformer.blocks[i], part)["vl"].state_dict()
                )
        swapped = model.encode_text(ids, mask)
        image_final, image_in = model.encode_image(images, return_fusion_input=True)
    real = mask.bool()
    torch.testing.assert_close(vl[real], swapped[real])
    assert not torch.allclose(final[real], vl[real])
    assert model.fuse_unimodal(image_in, None, Modality.V).shape == image_final.shape


def test_padding_does_not_change_real_tokens():
    model = randomised("modality_specific")
    ids, _, images = inputs()
    ones = torch.ones_like(ids)
    padded = torch.cat([ids, torch.randint(1, 50, (2, 2))], dim=1)  # pad content must not matter
    pad_mask = torch.cat([ones, torch.zeros(2, 2, dtype=torch.long)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(padded, pad_mask)[:, :6], model.encode_text(ids, ones))
        short, long = model.encode_pair(ids, ones, images), model.encode_pair(padded, pad_mask, images)
    torch.testing.assert_close(long[:, :6], short[:, :6], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(long[:, 8:], short[:, 6:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sharing", SHARINGS)
def test_block_keys_per_layout(sharing):
    model = create_model("tiny", sharing)
    keys = {k for k in model.state_dict() if k.startswith("transformer.blocks.")}
    want = set()
    for layer in range(4):
        experts = ["v", "l"] + (["vl"] if layer >= 2 else [])
        want |= {f"transformer.blocks.{layer}.gamma_1", f"transformer.blocks.{layer}.gamma_2"}
        for part, names in PARAMS.items():
            for name in names:
                if part in PER_EXPERT[sharing]:
                    want |= {f"transformer.blocks.{layer}.{part}.{e}.{name}" for e in experts}
                else:
                    want.add(f"transformer.blocks.{layer}.{part}.{name}")
    assert keys == want
    layout = model.expert_layout()
    from_layout = set()
    for layer in range(4):
        from_layout |= set(layout.shared_keys(layer))
        from_layout |= {k for ms in layout.expert_keys(layer).values() for k in ms.values()}
    assert from_layout == keys
    assert detect_sharing(model.state_dict()) is Sharing(sharing)


def test_shared_keys_outside_blocks():
    model = create_model("tiny", "modality_specific", heads=Heads.pretraining())
    keys = {k for k in model.state_dict() if not k.startswith("transformer.blocks.")}
    assert keys == {
        "relative_position_bias_table",
        "logit_scale",
        "logit_vl_scale",
        "token_type_embeddings.weight",
        "text_embeddings.word_embeddings.weight",
        "text_embeddings.token_type_embeddings.weight",
        "text_embeddings.LayerNorm.weight",
        "text_embeddings.LayerNorm.bias",
        "transformer.cls_token",
        "transformer.patch_embed.proj.weight",
        "transformer.patch_embed.proj.bias",
        "transformer.norm.weight",
        "transformer.norm.bias",
        "pooler.dense.weight",
        "pooler.dense.bias",
        "mlm_score.transform.dense.weight",
        "mlm_score.transform.dense.bias",
        "mlm_score.transform.LayerNorm.weight",
        "mlm_score.transform.LayerNorm.bias",
        "mlm_score.decoder.weight",
        "mlm_score.bias",
        "itm_score.fc.weight",
        "itm_score.fc.bias",
        "itc_text_proj.fc.weight",
        "itc_image_proj.fc.weight",
        "itc_vl_text_proj.fc.weight",
        "itc_vl_image_proj.fc.weight",
    }
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))


# One base expert-layer: qkv 768·2304 + q/v bias 2·768 + proj 768·768+768 + fc1 768·3072+3072
# + fc2 3072·768+768 + two LayerNorms 4·768 = 7,087,104. Shared per layer: gamma_1/2 = 2·768.
ATTN, MLP, NORM = 1_769_472 + 1_536 + 590_592, 2_362_368 + 2_360_064, 1_536


@pytest.mark.parametrize(
    ("sharing", "expected"),
    [
        ("shared", 85_063_680),  # 12 · 7,087,104 + 12 · 1,536 ≈ 85.0M
        ("modality_specific", 184_283_136),  # (10·2 + 2·3) · 7,087,104 + 12 · 1,536 ≈ 184.3M
        ("attn", 12 * (MLP + NORM) + 26 * (ATTN + NORM) + 18_432),
        ("ffn", 12 * (ATTN + NORM) + 26 * (MLP + NORM) + 18_432),
        ("ln", 12 * (ATTN + MLP) + 26 * 2 * NORM + 18_432),
    ],
)
def test_base_parameter_counts(sharing, expected):
    assert ATTN + MLP + 2 * NORM == 7_087_104
    with torch.device("meta"):
        model = create_model("base", sharing)
    blocks = sum(p.numel() for n, p in model.named_parameters() if n.startswith("transformer.blocks."))
    assert blocks == expected
    block = model.transformer.blocks[0]
    parts = [getattr(block, p) for p in ("norm1", "attn", "norm2", "mlp")]
    if sharing == "modality_specific":
        parts = [p["v"] for p in parts]
    if sharing in ("shared", "modality_specific"):
        assert sum(p.numel() for part in parts for p in part.parameters()) == 7_087_104


def test_presets_and_layout():
    assert model_config("large").fusion_start == 21 and model_config("base").fusion_start == 10
    layout = expert_layout(model_config("large"), "ffn")
    assert layout.experts(20) == (Modality.V, Modality.L) and Modality.VL in layout.experts(21)
    tiny = model_config("tiny", vocab_size=123)
    assert (tiny.num_layers, tiny.dim, tiny.num_heads, tiny.mlp_dim, tiny.image_size) == (4, 128, 4, 512, 48)
    assert tiny.overrides() == {"vocab_size": 123}
    layout = expert_layout(model_config("base"), "ffn")
    assert layout.experts(9) == (Modality.V, Modality.L)
    assert layout.experts(10) == (Modality.V, Modality.L, Modality.VL)
    assert set(layout.expert_keys(11)["transformer.blocks.11.mlp.fc1.weight"].values()) == {
        f"transformer.blocks.11.mlp.{m}.fc1.weight" for m in ("v", "l", "vl")
    }
    assert Part.ATTN not in layout.sharing.per_expert
    with pytest.raises(ModelConfigError, match="huge"):
        model_config("huge")
    with pytest.raises(ModelConfigError, match="depth"):
        model_config("tiny", depth=3)
    with pytest.raises(ConfigError, match="all_moe"):
        create_model("tiny", "all_moe")


def test_fusion_start_field_keeps_existing_hashes():
    # Hashes written before fusion_start_layer existed: tiny/base checkpoints must keep loading.
    assert config_hash(model_config("tiny"), "shared") == (
        "71120dd8673d6384c0cf119a7ae6a390821c03540023e2e743abedf82a36e3e0"
    )
    assert config_hash(model_config("base"), "ffn") == (
        "668b7f15517261d22317ca72034db56d49cca739c18765a82dd3bd898fdf72af"
    )
    # The default spelled out is the default: same config, no override, same hash.
    assert model_config("base", fusion_start_layer=10) == model_config("base")
    assert model_config("base", fusion_start_layer=10).overrides() == {}
    moved = model_config("base", fusion_start_layer=8)
    assert moved.fusion_start == 8 and moved.overrides() == {"fusion_start_layer": 8}
    assert config_hash(moved, "ffn") != config_hash(model_config("base"), "ffn")
    assert model_config("tiny", num_layers=6).fusion_start == 4  # the default follows num_layers
    assert model_config("large", fusion_start_layer=22).fusion_start == 22
    for bad in (0, 4):
        with pytest.raises(ModelConfigError, match="fusion_start_layer"):
            model_config("tiny", fusion_start_layer=bad)


def test_drop_path_is_linear_over_depth_and_off_in_eval():
    model = create_model("tiny", "shared", drop_path=0.6)
    rates = [getattr(b.drop_path, "p", 0.0) for b in model.transformer.blocks]
    assert rates == pytest.approx([0.0, 0.2, 0.4, 0.6])
    ids, mask, images = inputs(batch=8, image=48)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.encode_pair(ids, mask, images), model.encode_pair(ids, mask, images))
        model.train()
        torch.manual_seed(0)
        assert not torch.allclose(model.encode_image(images), model.encode_image(images))


def test_relpos_index_matches_naive_rows():
    model = create_model("tiny", "shared", **SMALL)
    grid, tmax = model.config.grid, model.config.max_text_len
    text = [("t", i) for i in range(tmax)]
    image = [("v", -1, -1)] + [("v", r, c) for r in range(grid) for c in range(grid)]
    want_text = torch.tensor([[naive_bias_row(a, b, grid, tmax) for b in text] for a in text])
    want_image = torch.tensor([[naive_bias_row(a, b, grid, tmax) for b in image] for a in image])
    assert torch.equal(model.text_index, want_text)
    assert torch.equal(model.image_index, want_image)
    assert int(model.text_index.max()) == RelPosLayout(grid, tmax).num_rows - 1


def test_resize_image_relpos():
    model = randomised("modality_specific")
    table = model.relative_position_bias_table.detach().clone()
    assert torch.equal(resize_image_table(table, 2, 2), table)  # same grid: the table is kept
    model.resize_image_relpos(3)
    new = model.relative_position_bias_table.detach()
    assert model.config.image_size == 48 and new.shape == (RelPosLayout(3, 8).num_rows, table.shape[1])
    assert torch.equal(new[25:], table[9:])  # CLS, cross-modal and text rows untouched
    constant = torch.full((9 + 3, 4), 0.7)
    assert torch.allclose(resize_image_table(constant, 2, 4)[:49], torch.full((49, 4), 0.7))
    ids, mask, images = inputs(image=48)
    with torch.no_grad():
        assert model.encode_pair(ids, mask, images).shape == (2, 6 + 10, 32)
    with pytest.raises(ModelConfigError, match="image_size 48"):
        model.encode_image(torch.zeros(1, 3, 32, 32))


def test_token_types_and_task_heads():
    model = create_model("tiny", "shared")
    assert model.heads == Heads()
    model.add_vqa_head(17)
    model.add_nlvr2_head()
    assert model.heads == Heads(vqa_answers=17, nlvr2=True)
    weights = model.token_type_embeddings.weight
    assert weights.shape[0] == 3 and torch.equal(weights[2], weights[1])
    ids, mask, images = inputs(image=48)
    with torch.no_grad():
        pooled = model.pooler(model.encode_pair(ids, mask, images, image_token_type=2))
        assert model.vqa_classifier(pooled).shape == (2, 17)
        assert model.nlvr2_classifier(torch.cat([pooled, pooled], -1)).shape == (2, 2)
    with pytest.raises(ModelConfigError, match="17 answers"):
        model.add_vqa_head(5)


# ----------------------------------------------------------------------------- token 0 alone
@pytest.mark.parametrize("padding", ["compute", "skip"])
@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("encoder", ["pair", "text", "image", "fuse_text", "fuse_image"])
def test_first_only_is_token_zero_of_the_whole_sequence(padding: str, training: bool, encoder: str) -> None:
    torch.manual_seed(0)
    # Stochastic depth at 0.5 in training: the last layer's two branch flags must be drawn as the full path draws.
    model = create_model("pico", "modality_specific", Heads.pretraining(), drop_path=0.5).train(training)
    set_text_padding(model, padding)  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, model.config.vocab_size, (4, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[::2, -3:] = 0
    size = model.config.image_size
    images = torch.randn(4, 3, size, size, generator=g)

    def encode(first_only: bool) -> torch.Tensor:
        if encoder == "pair":
            return model.encode_pair(ids, mask, images, first_only=first_only)
        if encoder == "text":
            return model.encode_text(ids, mask, first_only=first_only)
        if encoder == "image":
            return model.encode_image(images, first_only=first_only)
        if encoder == "fuse_text":
            _, mid = model.encode_text(ids, mask, return_fusion_input=True)
            return model.fuse_unimodal(mid, mask, Modality.L, first_only=first_only)
        _, mid = model.encode_image(images, return_fusion_input=True)
        return model.fuse_unimodal(mid, None, Modality.V, first_only=first_only)

    torch.manual_seed(3)
    whole = encode(False)
    torch.manual_seed(3)
    first = encode(True)
    assert first.shape == (4, 1, model.config.dim) and whole.shape[1] > 1
    torch.testing.assert_close(first, whole[:, :1], rtol=1e-5, atol=1e-6)
    # Gradients reach every parameter the whole sequence's token 0 depends on, with the same values.
    grads = []
    for first_only in (False, True):
        model.zero_grad()
        torch.manual_seed(3)
        (encode(first_only)[:, 0] * torch.linspace(-1, 1, model.config.dim)).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)


def test_skipping_padding_needs_a_real_first_token() -> None:
    model = create_model("pico", "modality_specific", Heads()).eval()
    set_text_padding(model, "skip")
    ids = torch.randint(5, model.config.vocab_size, (2, 5))
    mask = torch.ones_like(ids)
    mask[1, 0] = 0
    with pytest.raises(ValueError, match="first token is padding"):
        model.encode_text(ids, mask, first_only=True)
