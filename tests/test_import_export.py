"""``python -m vlmerge.import`` / ``vlmerge.export``: vl-merging Lightning checkpoints in and out.

The upstream files are built here from upstream's key names and shapes (``vilt_module.py``,
``heads.py``, ``vision_transformer.py`` of ``ylsung/vl-merging``), not from our model, so a naming
slip on either side shows up as a failed detection or a key mismatch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import math
import re
from pathlib import Path

import pytest
import torch

from tests.builders import SMALL
from vlmerge.model import Heads
from vlmerge.model.checkpoint import load_state, read_meta
from vlmerge.model.import_vlmerging import UNUSED
from vlmerge.model.relpos import RelPosLayout, image_index, joint_index, text_index

import_main = importlib.import_module("vlmerge.import.cli").main  # `import` is a keyword
export_main = importlib.import_module("vlmerge.export.cli").main

D, LAYERS, F, MLP, VOCAB, TEXT = SMALL["dim"], SMALL["num_layers"], SMALL["num_layers"] - 2, 64, 50, 8
HEADS, GRID, INIT_TEXT = SMALL["num_heads"], SMALL["image_size"] // 16, 11  # INIT_TEXT: max_text_len_of_initckpt
TINY = ["--preset", "tiny", "--overrides", "num_layers=3,dim=32,num_heads=2,mlp_dim=64"]
PARTS = {
    "norm1": {"weight": (D,), "bias": (D,)},
    "attn": {"qkv.weight": (3 * D, D), "q_bias": (D,), "v_bias": (D,), "proj.weight": (D, D), "proj.bias": (D,)},
    "norm2": {"weight": (D,), "bias": (D,)},
    "mlp": {"fc1.weight": (MLP, D), "fc1.bias": (MLP,), "fc2.weight": (D, MLP), "fc2.bias": (D,)},
}
HEAD_SETS = {
    "none": Heads(),
    "pretraining": Heads.pretraining(),
    "vqa": Heads(vqa_answers=5),
    "retrieval": Heads(itc=True),  # upstream's irtr: ifm_text/image_proj and logit_scale only
    "nlvr2": Heads(nlvr2=True),
}


# ------------------------------------------------------------------------------- upstream builders
def upstream_indices() -> dict[str, torch.Tensor]:
    """The index buffers exactly as upstream's ``ViLTransformerSS.__init__`` computes them."""
    num_rel = (2 * GRID - 1) ** 2 + 3
    coords = torch.stack(torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += GRID - 1
    rel[:, :, 1] += GRID - 1
    rel[:, :, 0] *= 2 * GRID - 1
    image = torch.zeros((GRID * GRID + 1,) * 2, dtype=torch.long)
    image[1:, 1:] = rel.sum(-1)
    image[0, 0:], image[0:, 0], image[0, 0] = num_rel - 3, num_rel - 2, num_rel - 1
    pos = torch.arange(TEXT - 1)
    text = torch.zeros((TEXT, TEXT), dtype=torch.long)
    text[1:, 1:] = pos.unsqueeze(-2) - pos.unsqueeze(-1) - (2 - INIT_TEXT) + num_rel + 2
    total = num_rel + 2 * INIT_TEXT + 2
    text[0, 0:], text[0:, 0], text[0, 0] = total - 3, total - 2, total - 1
    t2i = torch.ones(TEXT, GRID * GRID + 1) * num_rel
    i2t = torch.ones(GRID * GRID + 1, TEXT) * (num_rel + 1)
    joint = torch.cat([torch.cat([text, t2i], 1), torch.cat([i2t, image], 1)], 0)
    return {
        "relative_position_index": image,
        "text_relative_position_index": text,
        "text_imag_relative_position_index": joint,
    }


def block_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """Block keys: one copy per part (MA) or one per expert, ``vl`` from layer F on (MS)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(LAYERS):
        shapes |= {f"transformer.blocks.{i}.gamma_1": (D,), f"transformer.blocks.{i}.gamma_2": (D,)}
        experts = ["v", "l"] + (["vl"] if i >= F else [])
        for part, params in PARTS.items():
            for param, shape in params.items():
                if arch == "ms":
                    shapes |= {f"transformer.blocks.{i}.{part}.{m}.{param}": shape for m in experts}
                else:
                    shapes[f"transformer.blocks.{i}.{part}.{param}"] = shape
    return shapes


def head_shapes(heads: Heads) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {"pooler.dense.weight": (D, D), "pooler.dense.bias": (D,)}
    if heads.mlm:
        shapes |= {
            "mlm_score.bias": (VOCAB,),
            "mlm_score.transform.dense.weight": (D, D),
            "mlm_score.transform.dense.bias": (D,),
            "mlm_score.transform.LayerNorm.weight": (D,),
            "mlm_score.transform.LayerNorm.bias": (D,),
            "mlm_score.decoder.weight": (VOCAB, D),
        }
    if heads.itm:
        shapes |= {"itm_score.fc.weight": (2, D), "itm_score.fc.bias": (2,)}
    if heads.itc:
        shapes |= {"ifm_text_proj.fc.weight": (D, D), "ifm_image_proj.fc.weight": (D, D), "logit_scale": ()}
    if heads.itc_vl:
        shapes |= {"ifm_vl_text_proj.fc.weight": (D, D), "ifm_vl_image_proj.fc.weight": (D, D), "logit_vl_scale": ()}
    for name, width, out in (("vqa_classifier", D, heads.vqa_answers), ("nlvr2_classifier", 2 * D, 2 * heads.nlvr2)):
        if out:
            shapes |= {
                f"{name}.0.weight": (2 * D, width),
                f"{name}.0.bias": (2 * D,),
                f"{name}.1.weight": (2 * D,),
                f"{name}.1.bias": (2 * D,),
                f"{name}.3.weight": (out, 2 * D),
                f"{name}.3.bias": (out,),
            }
    return shapes


def upstream_checkpoint(arch: str, heads: Heads, seed: int = 0) -> dict:
    """A Lightning-style vl-merging checkpoint: ``ma``, ``ms``, or ``merged`` (an MS one averaged to MA shape)."""
    torch.manual_seed(seed)
    table_rows = RelPosLayout(GRID, INIT_TEXT).num_rows
    shapes = {
        "text_embeddings.word_embeddings.weight": (VOCAB, D),
        "text_embeddings.position_embeddings.weight": (TEXT, D),
        "text_embeddings.token_type_embeddings.weight": (2, D),
        "text_embeddings.LayerNorm.weight": (D,),
        "text_embeddings.LayerNorm.bias": (D,),
        "token_type_embeddings.weight": (3 if heads.nlvr2 else 2, D),
        "transformer.cls_token": (1, 1, D),
        "transformer.mask_token": (1, 1, D),
        "transformer.patch_embed.proj.weight": (D, 3, 16, 16),
        "transformer.patch_embed.proj.bias": (D,),
        "transformer.norm.weight": (D,),
        "transformer.norm.bias": (D,),
        "relative_position_bias_table": (table_rows, LAYERS * HEADS),
        **block_shapes("ms" if arch == "merged" else arch),
        **head_shapes(heads),
    }
    state = {k: torch.randn(shape) for k, shape in shapes.items()}
    if arch == "merged":
        state = merge_by_mean(state)
    state |= upstream_indices() | {"text_embeddings.position_ids": torch.arange(TEXT)[None]}
    return {"state_dict": state, "epoch": 3, "global_step": 1234, "pytorch-lightning_version": "1.5.10"}


def merge_by_mean(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Upstream's ``merge_weights`` with equal ratios: each MA key the mean of its experts."""
    out: dict[str, list[torch.Tensor]] = {}
    for key, value in state.items():
        parts = key.split(".")
        if key.startswith("transformer.blocks.") and parts[3] in PARTS:
            del parts[4]
        out.setdefault(".".join(parts), []).append(value)
    return {k: torch.stack(v).mean(0) for k, v in out.items()}


# ------------------------------------------------------------------------------- helpers
def save_upstream(path: Path, arch: str, heads: Heads) -> dict[str, torch.Tensor]:
    ckpt = upstream_checkpoint(arch, heads)
    torch.save(ckpt, path)
    return ckpt["state_dict"]


def run_import(ckpt: Path, out: Path, *extra: str) -> None:
    assert import_main(["--ckpt", str(ckpt), "--out", str(out), *TINY, *extra]) == 0


def lookup(table: torch.Tensor, index: torch.Tensor, layer: int) -> torch.Tensor:
    """The bias a layer's heads read for ``index`` [N, N] (how both codebases use the table)."""
    return table[:, layer * HEADS : (layer + 1) * HEADS][index]


def assert_same_bias(ours: torch.Tensor, upstream: dict[str, torch.Tensor]) -> None:
    """Every position pair reads the same bias from our table (our indices) as from upstream's (its indices)."""
    layout = RelPosLayout(GRID, TEXT)
    image, text = image_index(GRID), text_index(layout)
    for layer in range(LAYERS):
        table = upstream["relative_position_bias_table"]
        assert torch.equal(lookup(ours, image, layer), lookup(table, upstream["relative_position_index"], layer))
        assert torch.equal(lookup(ours, text, layer), lookup(table, upstream["text_relative_position_index"], layer))
        joint = upstream["text_imag_relative_position_index"].long()
        assert torch.equal(lookup(ours, joint_index(text, image, layout), layer), lookup(table, joint, layer))


def assert_tensor_equal(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    unequal = [k for k in want if got[k].dtype != want[k].dtype or not torch.equal(got[k], want[k])]
    assert not unequal


def one_error_line(capsys: pytest.CaptureFixture[str], stage: str) -> str:
    """The one line the stage printed besides its log records (``HH:MM:SS LEVEL …``)."""
    lines = [line for line in capsys.readouterr().err.splitlines() if not re.match(r"\d\d:\d\d:\d\d ", line)]
    assert len(lines) == 1 and lines[0].startswith(f"vlmerge.{stage}: error: "), lines
    return lines[0]


# ------------------------------------------------------------------------------- import
@pytest.mark.parametrize("heads_name", sorted(HEAD_SETS))
@pytest.mark.parametrize("arch", ["ma", "ms", "merged"])
def test_import_detects_maps_and_round_trips(tmp_path: Path, arch: str, heads_name: str) -> None:
    heads = HEAD_SETS[heads_name]
    source = save_upstream(tmp_path / "up.ckpt", arch, heads)
    run_import(tmp_path / "up.ckpt", tmp_path / "ours.safetensors")

    ours, meta = load_state(tmp_path / "ours.safetensors")
    detected = meta.extra["detected"]
    assert detected["architecture"] == ("MS" if arch == "ms" else "MA")
    assert meta.sharing.value == ("modality_specific" if arch == "ms" else "shared")
    assert meta.heads == heads and detected["heads"] == dataclasses.asdict(heads)
    assert meta.token_types == detected["token_types"] == (3 if heads.nlvr2 else 2)
    assert (detected["grid"], detected["text_rows_for"]) == (GRID, INIT_TEXT)
    assert meta.config.image_size == SMALL["image_size"] and meta.config.max_text_len == TEXT
    assert meta.config.vocab_size == VOCAB
    assert meta.inputs["source"] == hashlib.sha256((tmp_path / "up.ckpt").read_bytes()).hexdigest()
    assert ("vqa" in meta.extra) == bool(heads.vqa_answers)

    # Every kept tensor arrives unchanged under its vlmerge name; the bias table reads the same biases.
    renamed = {("itc_" + k[4:] if k.startswith("ifm_") else k): v for k, v in source.items() if k not in UNUSED}
    assert sorted(ours) == sorted(renamed)
    for key, want in renamed.items():
        if key in ("logit_scale", "logit_vl_scale"):
            assert ours[key].shape == (1,) and torch.equal(ours[key][0], want)
        elif key != "relative_position_bias_table":
            assert torch.equal(ours[key], want), key
    assert_same_bias(ours["relative_position_bias_table"], source)

    # Export, then import again: every tensor equal.
    ckpt_out = tmp_path / "back.ckpt"
    argv = ["--ckpt", str(tmp_path / "ours.safetensors"), "--out", str(ckpt_out), "--format", "vl-merging"]
    assert export_main([*argv, "--text-rows-for", str(INIT_TEXT)]) == 0
    run_import(ckpt_out, tmp_path / "again.safetensors")
    again, again_meta = load_state(tmp_path / "again.safetensors")
    assert_tensor_equal(again, ours)
    assert (again_meta.sharing, again_meta.heads, again_meta.token_types) == (
        meta.sharing,
        meta.heads,
        meta.token_types,
    )


@pytest.mark.parametrize("arch", ["ma", "ms"])
def test_export_is_what_upstream_loads(tmp_path: Path, arch: str) -> None:
    """Upstream's loader: ``torch.load(path, map_location="cpu")["state_dict"]``, then (fine-tuning path) it reads
    the text positions and pops the three index buffers. The exported file has upstream's keys, shapes,
    dtypes and index buffers, the table's extra text offsets zero."""
    source = save_upstream(tmp_path / "up.ckpt", arch, Heads.pretraining())
    run_import(tmp_path / "up.ckpt", tmp_path / "ours.safetensors")
    meta = read_meta(tmp_path / "ours.safetensors")
    assert export_main(["--ckpt", str(tmp_path / "ours.safetensors"), "--out", str(tmp_path / "x.ckpt")]) == 0

    ckpt = torch.load(tmp_path / "x.ckpt", map_location="cpu", weights_only=True)
    assert (ckpt["epoch"], ckpt["global_step"]) == (0, meta.steps)
    state = ckpt["state_dict"]
    assert set(state) == set(source) - {"transformer.mask_token"}  # upstream keeps its initial mask token
    mismatched = [k for k in state if (state[k].shape, state[k].dtype) != (source[k].shape, source[k].dtype)]
    assert mismatched == ["relative_position_bias_table"]  # laid out for 196 tokens, the source for 11
    # Default layout: upstream's max_text_len_of_initckpt = 196.
    assert state["relative_position_bias_table"].shape[0] == RelPosLayout(GRID, 196).num_rows
    assert torch.equal(state["text_embeddings.position_ids"], source["text_embeddings.position_ids"])
    assert torch.equal(state["relative_position_index"], source["relative_position_index"])

    assert export_main(["--ckpt", str(tmp_path / "ours.safetensors"), "--out", str(tmp_path / "y.ckpt"),
                        "--text-rows-for", str(INIT_TEXT)]) == 0  # fmt: skip
    state = torch.load(tmp_path / "y.ckpt", weights_only=True)["state_dict"]
    for key in ("relative_position_index", "text_relative_position_index", "text_imag_relative_position_index"):
        assert state[key].dtype == source[key].dtype and torch.equal(state[key], source[key]), key
    for name in ("relative_position_index", "text_relative_position_index", "text_imag_relative_position_index"):
        index = source[name].long()
        for layer in range(LAYERS):
            got = lookup(state["relative_position_bias_table"], index, layer)
            assert torch.equal(got, lookup(source["relative_position_bias_table"], index, layer))
    start = RelPosLayout(GRID, 0).text_start
    used = set(upstream_indices()["text_relative_position_index"][1:, 1:].flatten().tolist())
    unused = [r for r in range(start, start + 2 * INIT_TEXT - 3) if r not in used]
    assert unused and not state["relative_position_bias_table"][unused].any()


def test_vqa_answers_are_kept_beside_the_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save_upstream(tmp_path / "vqa.ckpt", "ma", HEAD_SETS["vqa"])
    answers = ["yes", "no", "2", "red", "dog"]
    (tmp_path / "answers.json").write_text(json.dumps(answers))
    run_import(tmp_path / "vqa.ckpt", tmp_path / "vqa.safetensors", "--vqa-answers", str(tmp_path / "answers.json"))
    meta = read_meta(tmp_path / "vqa.safetensors")
    assert meta.extra["vqa"] == {"label_order": "vilt", "answers_file": "vqa.vqa_answers.json"}
    assert json.loads((tmp_path / "vqa.vqa_answers.json").read_text()) == answers
    assert "vqa_answers" in meta.inputs

    (tmp_path / "short.json").write_text(json.dumps(answers[:3]))
    argv = ["--ckpt", str(tmp_path / "vqa.ckpt"), "--out", str(tmp_path / "o.safetensors"), *TINY]
    assert import_main([*argv, "--vqa-answers", str(tmp_path / "short.json")]) == 2
    assert "short.json lists 3 answers" in one_error_line(capsys, "import")
    assert not (tmp_path / "o.safetensors").exists()


def test_without_vqa_answers_the_label_order_is_still_recorded(tmp_path: Path) -> None:
    save_upstream(tmp_path / "vqa.ckpt", "ms", HEAD_SETS["vqa"])
    run_import(tmp_path / "vqa.ckpt", tmp_path / "vqa.safetensors")
    assert read_meta(tmp_path / "vqa.safetensors").extra["vqa"] == {"label_order": "vilt", "answers_file": None}


# ------------------------------------------------------------------------------- bad input
def _not_a_checkpoint(path: Path) -> None:
    path.write_text("this is no pickle")


def _a_list(path: Path) -> None:
    torch.save([torch.ones(2)], path)


def _code_running(path: Path) -> None:
    torch.save({"state_dict": {"w": torch.ones(1)}, "x": math.floor}, path)  # any non-allowed global


def _beit_keys(path: Path) -> None:
    torch.save({"model": {"blocks.0.attn.qkv.weight": torch.ones(3, 1)}}, path)


def _unknown_sharing(path: Path) -> None:
    ckpt = upstream_checkpoint("ma", Heads())
    state = ckpt["state_dict"]
    for key in [k for k in state if k.startswith("transformer.blocks.0.mlp.")]:
        state[key.replace(".mlp.", ".mlp.v.")] = state.pop(key)  # only the MLP per expert: no such layout
    torch.save(ckpt, path)


def _no_preset_fits(path: Path) -> None:
    ckpt = upstream_checkpoint("ma", Heads())
    for key in [k for k in ckpt["state_dict"] if k.startswith("transformer.blocks.2.")]:
        del ckpt["state_dict"][key]  # 2 layers
    torch.save(ckpt, path)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_not_a_checkpoint, "cannot read"),
        (_a_list, "not a checkpoint dictionary"),
        (_code_running, "refusing to unpickle"),
        (_beit_keys, "not a vl-merging"),
        (_unknown_sharing, "match no sharing layout"),
        (_no_preset_fits, "do not fit preset 'tiny'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], make, message) -> None:
    path = tmp_path / "bad_input.ckpt"
    make(path)
    assert import_main(["--ckpt", str(path), "--out", str(tmp_path / "o.safetensors"), *TINY]) == 2
    line = one_error_line(capsys, "import")
    assert "bad_input.ckpt" in line and message in line
    assert not (tmp_path / "o.safetensors").exists()


def test_shapes_must_fit_a_preset_when_none_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save_upstream(tmp_path / "small.ckpt", "ma", Heads())
    assert import_main(["--ckpt", str(tmp_path / "small.ckpt"), "--out", str(tmp_path / "o.safetensors")]) == 2
    assert "small.ckpt: its shapes (num_layers=3, dim=32" in one_error_line(capsys, "import")


def test_export_refuses_a_text_layout_shorter_than_the_model(tmp_path: Path, capsys) -> None:
    save_upstream(tmp_path / "up.ckpt", "ma", Heads())
    run_import(tmp_path / "up.ckpt", tmp_path / "ours.safetensors")
    argv = ["--ckpt", str(tmp_path / "ours.safetensors"), "--out", str(tmp_path / "x.ckpt"), "--text-rows-for", "4"]
    assert export_main(argv) == 2
    assert "max_text_len 8" in one_error_line(capsys, "export")
    assert not (tmp_path / "x.ckpt").exists()
