"""Checkpoints (safetensors + sidecar), BEiT and vl-merging imports, and refusal of code-running pickles."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import sys
import types

import pytest
import torch

from tests.builders import SMALL
from vlmerge.model import CheckpointError, Heads, VLModel, create_model
from vlmerge.model.checkpoint import load_model, read_meta, save_checkpoint, save_model, sidecar_path
from vlmerge.model.import_beit import init_from_beit
from vlmerge.model.import_vlmerging import read_vlmerging
from vlmerge.model.pickles import load_pickled_weights
from vlmerge.model.relpos import RelPosLayout, resize_image_table


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


def probe(model: VLModel, image: int = 32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids, mask = torch.randint(1, 50, (2, 6), generator=g), torch.ones(2, 6, dtype=torch.long)
    images = torch.randn(2, 3, image, image, generator=g)
    with torch.no_grad():
        return [model.encode_text(ids, mask), model.encode_image(images), model.encode_pair(ids, mask, images, 2)]


# ---------------------------------------------------------------------------------- our checkpoints
def test_round_trip_restores_model_and_records_provenance(tmp_path):
    model = create_model("tiny", "modality_specific", heads=Heads.pretraining(), **SMALL)
    model.add_vqa_head(7)
    model.add_nlvr2_head()
    model.resize_image_relpos(4)
    randomise(model)
    source = tmp_path / "seed.safetensors"
    source.write_bytes(b"seed weights")
    path = tmp_path / "ms.safetensors"
    save_model(path, model, steps=12, inputs={"seed": source}, extra={"note": "test"})

    loaded, meta = load_model(path)
    assert loaded.config == model.config and loaded.config.image_size == 64
    assert loaded.sharing is model.sharing and loaded.heads == model.heads
    assert loaded.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    for got, want in zip(probe(loaded.eval(), 64), probe(model, 64)):
        torch.testing.assert_close(got, want)
    record = json.loads(sidecar_path(path).read_text())
    assert record["preset"] == "tiny" and record["sharing"] == "modality_specific" and record["steps"] == 12
    assert record["overrides"]["image_size"] == 64 and record["token_types"] == 3
    assert record["inputs"] == {"seed": hashlib.sha256(b"seed weights").hexdigest()}
    assert record["extra"] == {"note": "test"} and meta.steps == 12 and len(record["config_hash"]) == 64


def test_rerun_writes_identical_bytes(tmp_path):
    model = randomise(create_model("tiny", "shared", **SMALL))
    first, second = tmp_path / "a" / "m.safetensors", tmp_path / "b" / "m.safetensors"
    save_model(first, model, steps=3)
    save_model(second, model, steps=3)
    assert first.read_bytes() == second.read_bytes()
    assert sidecar_path(first).read_bytes() == sidecar_path(second).read_bytes()
    assert not list(tmp_path.rglob(".tmp-*"))


def test_bad_checkpoints_give_clear_errors(tmp_path):
    model = create_model("tiny", "shared", **SMALL)
    path = tmp_path / "m.safetensors"
    state = model.state_dict()
    state["surprise.weight"] = torch.zeros(1)
    del state["pooler.dense.bias"]
    save_model(path, model)
    meta = read_meta(path)
    save_checkpoint(path, state, meta)
    with pytest.raises(
        CheckpointError,
        match=r"m\.safetensors does not fit.*missing pooler\.dense\.bias.*"
        r"unexpected surprise\.weight",
    ):
        load_model(path)
    save_model(path, model)
    path.write_bytes(path.read_bytes()[:-1] + b"x")
    with pytest.raises(CheckpointError, match="weights_sha256"):
        load_model(path)
    sidecar_path(path).unlink()
    with pytest.raises(CheckpointError, match=r"sidecar .*m\.json"):
        load_model(path)


# ---------------------------------------------------------------------------------- BEiT
def timm_beit(image: int, shared_table: bool = False):
    import timm.models.beit as tb  # timm only here: 5 s of import time

    torch.manual_seed(3)
    beit = tb.Beit(
        img_size=image,
        patch_size=16,
        embed_dim=32,
        depth=3,
        num_heads=2,
        mlp_ratio=2,
        use_abs_pos_emb=False,
        use_rel_pos_bias=not shared_table,
        use_shared_rel_pos_bias=shared_table,
        init_values=0.1,
        global_pool="token",
        num_classes=5,
    )
    return randomise(beit)


@pytest.mark.parametrize("sharing", ["shared", "modality_specific", "ln"])
def test_beit_timm_layout_gives_beit_image_features(tmp_path, sharing):
    beit = timm_beit(32)
    torch.save(beit.state_dict(), tmp_path / "beit.pth")
    model = create_model("tiny", sharing, **SMALL).eval()
    kept = init_from_beit(model, tmp_path / "beit.pth")
    assert set(kept) == {
        "text_embeddings.word_embeddings.weight",
        "text_embeddings.token_type_embeddings.weight",
        "text_embeddings.LayerNorm.weight",
        "text_embeddings.LayerNorm.bias",
        "token_type_embeddings.weight",
        "pooler.dense.weight",
        "pooler.dense.bias",
    }
    ours, theirs = model.state_dict(), beit.state_dict()
    layout = model.expert_layout()
    for layer in range(3):  # every expert starts from BEiT's block, vl included
        for ma_key, experts in layout.expert_keys(layer).items():
            for key in experts.values():
                assert torch.equal(ours[key], theirs[ma_key.removeprefix("transformer.")])
    with torch.no_grad():
        model.token_type_embeddings.weight[1] = 0  # BEiT has no token types
        images = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(model.encode_image(images), beit.forward_features(images))


def test_beit_unilm_layout_with_shared_table(tmp_path):
    beit = timm_beit(32, shared_table=True)
    state = dict(beit.state_dict()) | {"mask_token": torch.zeros(1, 1, 32), "lm_head.weight": torch.zeros(9, 32)}
    assert "rel_pos_bias.relative_position_bias_table" in state
    torch.save({"model": state}, tmp_path / "beit_unilm.pth")
    model = create_model("tiny", "modality_specific", **SMALL).eval()
    init_from_beit(model, tmp_path / "beit_unilm.pth")
    with torch.no_grad():
        model.token_type_embeddings.weight[1] = 0
        images = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(model.encode_image(images), beit.forward_features(images))


def test_beit_tables_are_resampled_to_the_model_grid(tmp_path):
    beit = timm_beit(64)  # 4x4 patches into a 2x2-patch model
    torch.save({"model": beit.state_dict()}, tmp_path / "beit64.pth")
    model = create_model("tiny", "shared", **SMALL)
    before = model.relative_position_bias_table.detach().clone()
    init_from_beit(model, tmp_path / "beit64.pth")
    table, rows = model.relative_position_bias_table.detach(), RelPosLayout(2, 8).image_rows
    for layer in range(3):
        src = beit.state_dict()[f"blocks.{layer}.attn.relative_position_bias_table"]
        torch.testing.assert_close(table[:rows, 2 * layer : 2 * layer + 2], resize_image_table(src, 4, 2))
    assert torch.equal(table[rows:], before[rows:])  # text and cross-modal rows keep their init
    with pytest.raises(CheckpointError, match="3 blocks, the model 4"):
        init_from_beit(create_model("tiny", "shared", **(SMALL | {"num_layers": 4})), tmp_path / "beit64.pth")


# ---------------------------------------------------------------------------------- vl-merging
def fake_class(monkeypatch, module: str, name: str, base: type = object) -> type:
    """A class that pickles under ``module.name`` (as upstream objects do) although no such package exists."""
    cls = type(name, (base,), {"__module__": module, "__qualname__": name})
    parts = module.split(".")
    for i in range(1, len(parts) + 1):
        monkeypatch.setitem(sys.modules, ".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    setattr(sys.modules[module], name, cls)
    return cls


def upstream_state(model: VLModel, extra_text: int) -> dict[str, torch.Tensor]:
    """``model``'s weights as vl-merging names and lays them out, its text rows built for a longer text."""
    cfg = model.config
    state = {k.replace("itc_", "ifm_") if k.startswith("itc_") else k: v for k, v in model.state_dict().items()}
    table, start = state["relative_position_bias_table"], RelPosLayout(cfg.grid, 0).text_start
    src_len, text = cfg.max_text_len + extra_text, table[start:]
    up_text = torch.randn(2 * src_len, table.shape[1])
    up_text[extra_text : extra_text + 2 * cfg.max_text_len - 3] = text[:-3]
    up_text[-3:] = text[-3:]
    state["relative_position_bias_table"] = torch.cat([table[:start], up_text])
    for scale in ("logit_scale", "logit_vl_scale"):  # 0-d tensors upstream
        if scale in state:
            state[scale] = state[scale].reshape(())
    return state | {
        "relative_position_index": torch.zeros(cfg.grid**2 + 1, cfg.grid**2 + 1, dtype=torch.long),
        "text_relative_position_index": torch.zeros(cfg.max_text_len, cfg.max_text_len, dtype=torch.long),
        "text_embeddings.position_ids": torch.arange(cfg.max_text_len)[None],
        "text_embeddings.position_embeddings.weight": torch.zeros(cfg.max_text_len, cfg.dim),
        "transformer.mask_token": torch.zeros(1, 1, cfg.dim),
    }


@pytest.mark.parametrize("sharing", ["shared", "modality_specific"])
def test_vlmerging_lightning_checkpoint_imports(tmp_path, monkeypatch, sharing):
    source = create_model("tiny", sharing, heads=Heads.pretraining(), **SMALL)
    source.add_nlvr2_head()
    randomise(source)
    moe = fake_class(monkeypatch, "vilt.moe.config", "MOEConfig")()
    moe.in_attn = True
    hparams = fake_class(monkeypatch, "pytorch_lightning.utilities.parsing", "AttributeDict", dict)(lr=1e-4)
    ckpt = {
        "state_dict": upstream_state(source, extra_text=3),
        "epoch": 4,
        "hyper_parameters": hparams | {"moe_config": moe},
    }
    ckpt["hyper_parameters"] = type(hparams)(ckpt["hyper_parameters"])
    torch.save(ckpt, tmp_path / "upstream.ckpt")
    for name in ("vilt", "vilt.moe", "vilt.moe.config", "pytorch_lightning"):
        monkeypatch.delitem(sys.modules, name)  # the importer must not need upstream code

    loaded, found = read_vlmerging(
        tmp_path / "upstream.ckpt", "tiny", **{k: v for k, v in SMALL.items() if k != "vocab_size"}
    )
    assert found.sharing.value == sharing and found.heads == source.heads and found.text_rows_for == 11
    assert loaded.config.vocab_size == 50 and loaded.token_type_embeddings.num_embeddings == 3
    for got, want in zip(probe(loaded), probe(source)):
        torch.testing.assert_close(got, want)
    assert torch.equal(loaded.relative_position_bias_table, source.relative_position_bias_table)


# ---------------------------------------------------------------------------------- malicious pickles
class Payload:
    """Unpickling this would create a directory: proof that code ran."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_code_running_pickles_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "payload": Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match=r"refusing to unpickle .*evil\.ckpt.*mkdir"):
        load_pickled_weights(path)
    with pytest.raises(CheckpointError, match="mkdir"):
        read_vlmerging(path, "tiny")
    with pytest.raises(CheckpointError, match="mkdir"):
        init_from_beit(create_model("tiny", "shared"), path)
    assert not marker.exists()
    # Files that cannot be scanned beforehand (raw pickles, pre-1.6 torch.save) are refused while unpickling.
    plain, legacy = tmp_path / "evil.pkl", tmp_path / "evil_legacy.pth"
    plain.write_bytes(pickle.dumps({"w": Payload(str(marker))}, protocol=2))
    torch.save({"w": Payload(str(marker))}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match=r"evil\.pkl"):
        load_pickled_weights(plain)
    with pytest.raises(CheckpointError, match=r"evil_legacy\.pth.*mkdir"):
        load_pickled_weights(legacy)
    assert not marker.exists()
