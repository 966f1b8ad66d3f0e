"""Weight-distance metrics: hand-worked values, constructed task vectors with known answers, the CLI."""

from __future__ import annotations

import hashlib
import json
import math

import torch

from vlmerge.distance.cli import main
from vlmerge.merging import block_groups, infer_layout
from vlmerge.merging.distance import pair_metrics, pair_sums, weight_distances
from vlmerge.merging.sparsify import magnitude_threshold
from vlmerge.model import create_model
from vlmerge.model.checkpoint import save_model


def test_pair_metrics_match_hand_worked_values() -> None:
    a, b = torch.tensor([1.0, -2.0, 3.0, 0.5]), torch.tensor([2.0, 1.0, -1.0, 5.0])

    def metrics(k: float) -> dict:
        return pair_metrics(pair_sums(a, b, (magnitude_threshold(a.abs(), k), magnitude_threshold(b.abs(), k))))

    m = metrics(75.0)
    # products [2, -2, -3, 2.5]: conflict 5 of mass 9.5; 2 of 4 signs differ
    assert math.isclose(m["l2"], math.sqrt(1 + 9 + 16 + 4.5**2))
    assert math.isclose(m["cosine"], 1 + 0.5 / math.sqrt(14.25 * 31))
    assert m["sign"] == 0.5 and math.isclose(m["soft_sign"], 5 / 9.5)
    # top 75 %: a keeps 3, -2, 1 (drops 0.5); b keeps 5, 2 and both 1s (a tie at the threshold)
    assert math.isclose(m["truncated_sign"], 5 / 7)
    # top 50 %: a keeps {3, -2}, b keeps {5, 2}: no coordinate is large in both
    assert metrics(50.0)["truncated_sign"] is None


def constructed(sharing: str = "modality_specific"):
    """Seed θ₀, direction D; experts v = θ₀ + D, l = θ₀ − D, vl = θ₀ + 2D."""
    torch.manual_seed(0)
    seed = {k: torch.randn(v.shape) for k, v in create_model("pico", "shared").state_dict().items()}
    ms = {k: torch.randn(v.shape) for k, v in create_model("pico", sharing).state_dict().items()}
    layout = infer_layout(ms)
    direction = {}
    for group in block_groups(layout):
        direction[group.ma_key] = torch.randn(seed[group.ma_key].shape)
        for m, key in group.ms_keys:
            ms[key] = seed[group.ma_key] + {"v": 1.0, "l": -1.0, "vl": 2.0}[m.value] * direction[group.ma_key]
    return ms, seed, layout, direction


def test_constructed_task_vectors_give_known_distances() -> None:
    ms, seed, layout, direction = constructed()
    record = weight_distances(ms, seed, layout, k=30.0)
    total = 0.0
    for layer in range(layout.num_layers):
        keys = [g.ma_key for g in block_groups(layout) if g.layer == layer]
        d2 = sum(float((direction[k].double() ** 2).sum()) for k in keys)
        base = torch.cat([seed[k].reshape(-1) for k in keys]).double()
        total += d2
        pairs, to_seed = record["layers"][str(layer)]["pairs"], record["layers"][str(layer)]["to_seed"]
        vl = pairs["v-l"]
        assert math.isclose(vl["l2"], 2 * math.sqrt(d2), rel_tol=1e-6)
        assert math.isclose(vl["cosine"], 2.0, rel_tol=1e-9)
        assert vl["sign"] == 1.0 and vl["soft_sign"] == 1.0 and vl["truncated_sign"] == 1.0
        assert math.isclose(to_seed["v"]["l2"], math.sqrt(d2), rel_tol=1e-6)
        assert math.isclose(to_seed["l"]["relative_l2"], math.sqrt(d2) / float(base.norm()), rel_tol=1e-6)
        theta = torch.cat(
            [ms[g.experts[next(iter(g.experts))]].reshape(-1) for g in block_groups(layout) if g.layer == layer]
        ).double()
        cos = float(theta @ base / (theta.norm() * base.norm()))
        assert math.isclose(to_seed["v"]["cosine"], 1 - cos, rel_tol=1e-5, abs_tol=1e-9)
        if layer >= layout.fusion_start:
            agree = pairs["v-vl"]
            assert abs(agree["cosine"]) < 1e-9 and agree["sign"] == 0.0 and agree["truncated_sign"] == 0.0
            assert math.isclose(agree["l2"], math.sqrt(d2), rel_tol=1e-6)
        else:
            assert set(pairs) == {"v-l"} and set(to_seed) == {"v", "l"}
    overall = record["overall"]["pairs"]["v-l"]
    assert math.isclose(overall["l2"], 2 * math.sqrt(total), rel_tol=1e-6) and overall["soft_sign"] == 1.0
    squares = sum(record["layers"][str(i)]["pairs"]["v-l"]["l2"] ** 2 for i in range(layout.num_layers))
    assert math.isclose(overall["l2"] ** 2, squares, rel_tol=1e-9)


def test_only_per_expert_parts_are_measured() -> None:
    ms, seed, layout, direction = constructed("ln")
    record = weight_distances(ms, seed, layout)
    norms = sum(float((direction[g.ma_key] ** 2).sum()) for g in block_groups(layout) if g.layer == 0)
    assert math.isclose(record["layers"]["0"]["to_seed"]["v"]["l2"], math.sqrt(norms), rel_tol=1e-6)


def save(path, sharing: str, state) -> None:
    model = create_model("pico", sharing)
    model.load_state_dict(state)
    save_model(path, model)


def test_cli_writes_json_and_rejects_an_ma_checkpoint(tmp_path, capsys) -> None:
    ms, seed, _, _ = constructed()
    save(tmp_path / "ms.safetensors", "modality_specific", ms)
    save(tmp_path / "seed.safetensors", "shared", seed)
    out = tmp_path / "d.json"
    assert (
        main(
            [
                "--ms",
                str(tmp_path / "ms.safetensors"),
                "--seed",
                str(tmp_path / "seed.safetensors"),
                "--out",
                str(out),
                "--k",
                "10",
            ]
        )
        == 0
    )
    record = json.loads(out.read_text())
    assert record["k"] == 10.0 and record["overall"]["pairs"]["v-l"]["soft_sign"] == 1.0
    assert record["inputs"]["ms"] == hashlib.sha256((tmp_path / "ms.safetensors").read_bytes()).hexdigest()
    capsys.readouterr()
    assert (
        main(
            [
                "--ms",
                str(tmp_path / "seed.safetensors"),
                "--seed",
                str(tmp_path / "seed.safetensors"),
                "--out",
                str(tmp_path / "e.json"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("vlmerge.distance: error:") and "modality-agnostic" in err and "\n" not in err
