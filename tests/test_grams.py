"""Gram collection: hook statistics against inputs captured by hand, the float32 products' error bound and its
effect on a RegMean merge, pad exclusion, exact shard reduction, files."""

from __future__ import annotations

import json

import pytest
import torch

from vlmerge.files.grams import load_grams, reduce_files, save_grams, sidecar_path
from vlmerge.grams import hooks
from vlmerge.grams.collect import sample_indices
from vlmerge.grams.config import GramsSettings
from vlmerge.grams.hooks import GramCollector, product_error_bound, triangle_blocks
from vlmerge.merging import GramsError, GramStats, gram_targets, reduce_grams
from vlmerge.merging.regmean import regmean_solve
from vlmerge.model import Modality, create_model

F64 = torch.float64


def model(sharing: str = "modality_specific"):
    torch.manual_seed(0)
    m = create_model("pico", sharing).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)
    return m


def batch(seed: int, lengths: tuple[int, ...] = (6, 4, 2)):
    """Text ids padded to the longest of ``lengths`` (mask 0 on pads) and images [B, 3, 32, 32]."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(1, 50, (len(lengths), width), generator=g)
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    ids = ids * mask  # pad id 0
    return ids, mask, torch.randn(len(lengths), 3, 32, 32, generator=g)


def collect(net, batches, include_pad: bool = False, task: str = "pair", products: str = "float64") -> GramStats:
    with torch.no_grad(), GramCollector(net, include_pad, products) as collector:  # type: ignore[arg-type]
        for ids, mask, images in batches:
            if task == "pair":
                with collector.text(mask):
                    net.encode_pair(ids, mask, images)
            else:
                with collector.text(None):
                    net.encode_image(images)
                with collector.text(mask):
                    net.encode_text(ids, mask)
        return collector.result()


def test_hook_grams_equal_xtx_of_inputs_captured_by_hand() -> None:
    net = model()
    ids, mask, images = batch(0)
    captured: dict[str, list[torch.Tensor]] = {}
    handles = [
        net.get_submodule(name).register_forward_pre_hook(
            lambda module, args, name=name: captured.setdefault(name, []).append(args[0].detach().clone())
        )
        for name, _ in gram_targets(net.expert_layout())
    ]
    with torch.no_grad():
        net.encode_pair(ids, mask, images)
    for h in handles:
        h.remove()
    grams = collect(net, [(ids, mask, images)])
    real_text = mask.bool()
    for name, modality in gram_targets(net.expert_layout()):
        if name not in captured:  # v and l experts of the fusion layers: image+text input skips them
            assert int(name.split(".")[2]) >= net.config.fusion_start and modality is not Modality.VL
            assert grams.counts[name] == 0 and not grams.xtx[name].any()
            continue
        (x,) = captured[name]
        if modality is Modality.L:  # text tokens only: keep the real ones
            rows = x[real_text]
        elif modality is Modality.VL:  # [text; image]: text pads dropped, every image token kept
            rows = torch.cat([x[:, : ids.shape[1]][real_text], x[:, ids.shape[1] :].reshape(-1, x.shape[-1])])
        else:
            rows = x.reshape(-1, x.shape[-1])
        rows = rows.to(F64)
        torch.testing.assert_close(grams.xtx[name], rows.T @ rows, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grams.sums[name], rows.sum(0), rtol=1e-12, atol=1e-12)
        assert grams.counts[name] == rows.shape[0]
    # One anchor computed from scratch: layer 0's l-expert qkv input is norm1.l of the text embedding.
    with torch.no_grad():
        x0 = net.transformer.blocks[0].norm1.l(net._embed_text(ids))[real_text].to(F64)
    torch.testing.assert_close(grams.xtx["transformer.blocks.0.attn.l"], x0.T @ x0, rtol=1e-6, atol=1e-6)
    assert grams.counts["transformer.blocks.0.attn.l"] == 12 and grams.counts["transformer.blocks.0.attn.v"] == 15
    assert grams.counts["transformer.blocks.2.mlp.vl.fc2"] == 12 + 15


def captured_rows(net, batches) -> dict[str, torch.Tensor]:
    """The kept rows [n, D] (float64) of every hook point over ``batches`` of pairs, captured by hand."""
    rows: dict[str, list[torch.Tensor]] = {}
    targets = dict(gram_targets(net.expert_layout()))

    def grab(name: str, width: int, real: torch.Tensor, module, args) -> None:
        x, modality = args[0].detach(), targets[name]
        if modality is Modality.L:
            kept = x[real]
        elif modality is Modality.VL:
            kept = torch.cat([x[:, :width][real], x[:, width:].reshape(-1, x.shape[-1])])
        else:
            kept = x.reshape(-1, x.shape[-1])
        rows.setdefault(name, []).append(kept.to(F64))

    for ids, mask, images in batches:
        real = mask.bool()
        handles = [
            net.get_submodule(n).register_forward_pre_hook(
                lambda module, args, n=n, w=ids.shape[1], r=real: grab(n, w, r, module, args)
            )
            for n in targets
        ]
        with torch.no_grad():
            net.encode_pair(ids, mask, images)
        for h in handles:
            h.remove()
    return {n: torch.cat(r) for n, r in rows.items()}


def test_triangle_blocks_cover_the_upper_triangle_once() -> None:
    for dim, leaf, panel in [(128, None, None), (768, None, None), (3072, None, None), (100, 32, 5), (7, 3, 1)]:
        hits = torch.zeros(dim, dim, dtype=torch.int64)
        for r, c in triangle_blocks(dim, leaf, panel):
            hits[r, c] += 1
        assert torch.equal(hits.triu(), torch.ones(dim, dim, dtype=torch.int64).triu()), (dim, leaf)
        assert hits.max() == 1


@pytest.mark.parametrize("chunk,leaf", [(4096, 768), (7, 16)])
def test_float32_products_stay_within_the_stated_bound(chunk: int, leaf: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Grams from float32 products (flushed into float64 every ``chunk`` rows, so 7 splits every call and flushes
    often; the triangle split into blocks at most ``leaf`` wide) against XᵀX computed naively in float64 from
    the same activations: every entry within the stated bound ε·(|X|ᵀ|X|), and in practice far below it."""
    monkeypatch.setattr(hooks, "CHUNK_TOKENS", chunk)
    monkeypatch.setattr(hooks, "LEAF", leaf)
    monkeypatch.setattr(hooks, "PANEL", 96 if leaf > 16 else 5)
    net = model()
    batches = [batch(s, (8, 5, 3, 7)) for s in range(3)]
    exact = captured_rows(net, batches)
    with torch.no_grad(), GramCollector(net, products="float32") as collector:
        for ids, mask, images in batches:
            with collector.text(mask):
                net.encode_pair(ids, mask, images)
        fast = collector.result()
        bounds = {n: collector.error_bound(n) for n in exact}
    assert set(exact) < set(fast.names)
    for name, x in exact.items():
        reference, magnitude = x.T @ x, x.abs().T @ x.abs()
        error = (fast.xtx[name] - reference).abs()
        # The float64 reference itself errs by γ_n(fp64)·|X|ᵀ|X|: counted on the side of the bound.
        slack = product_error_bound([x.shape[0]], "float64")
        assert bool((error <= (bounds[name] + slack) * magnitude).all()), name
        assert bounds[name] < 1e-3 and bounds[name] >= product_error_bound([min(chunk, x.shape[0])], "float32")
        assert error.max() <= 1e-5 * reference.diagonal().max(), name  # measured: ~1e-7
        torch.testing.assert_close(fast.sums[name], x.sum(0), rtol=1e-6, atol=1e-5)
        assert fast.counts[name] == x.shape[0]
        assert torch.equal(fast.xtx[name], fast.xtx[name].T)


def test_regmean_on_float32_grams_equals_regmean_on_float64_grams() -> None:
    """The merge each gram set gives, layer by layer (α = 0.9, per-token means, as config.yaml): the float32
    products change merged weights by under 1e-5 of their scale."""
    net = model()
    batches = [batch(s, (8, 5, 3, 7)) for s in range(3)]
    fast = collect(net, batches, products="float32")
    ref = collect(net, batches, products="float64")
    layout = net.expert_layout()
    compared = 0
    for layer in range(layout.num_layers):
        for suffix, param in [("", "qkv"), (".proj", "proj"), (".fc1", "fc1"), (".fc2", "fc2")]:
            part = "attn" if param in ("qkv", "proj") else "mlp"
            stem = f"transformer.blocks.{layer}.{part}"
            experts = [m for m in layout.experts(layer) if ref.counts.get(f"{stem}.{m.value}{suffix}", 0)]
            if len(experts) < 1:
                continue
            weights = {m: net.get_submodule(f"{stem}.{m.value}.{param}").weight.detach() for m in experts}
            merged = []
            for grams in (fast, ref):
                g = {m: grams.xtx[f"{stem}.{m.value}{suffix}"] for m in experts}
                scales = {m: 1.0 / grams.counts[f"{stem}.{m.value}{suffix}"] for m in experts}
                w, _ = regmean_solve(weights, g, 1e10, alpha=0.9, scales=scales)
                merged.append(w.clone())
            scale = max(w.abs().max() for w in weights.values())
            assert (merged[0] - merged[1]).abs().max() <= 1e-5 * scale, (stem, param)
            compared += 1
    assert compared >= 8


def test_paused_collection_adds_nothing_and_settings_default_to_float32() -> None:
    net = model()
    ids, mask, images = batch(0)
    with torch.no_grad(), GramCollector(net) as collector:
        with collector.paused(), collector.text(mask):
            net.encode_pair(ids, mask, images)
        assert not any(collector.result().counts.values())
    assert GramsSettings().products == "float32"
    with pytest.raises(ValueError, match="choose from"):
        GramCollector(net, products="float16")  # type: ignore[arg-type]


def test_pad_tokens_are_excluded_by_default() -> None:
    net = model()
    ids, mask, images = batch(1)
    padded = collect(net, [(ids, mask, images)])
    one_by_one = reduce_grams(
        [collect(net, [(ids[i : i + 1, :n], mask[i : i + 1, :n], images[i : i + 1])]) for i, n in enumerate((6, 4, 2))]
    )
    for name in padded.names:
        torch.testing.assert_close(padded.xtx[name], one_by_one.xtx[name], rtol=1e-5, atol=1e-5)
        assert padded.counts[name] == one_by_one.counts[name]
    with_pads = collect(net, [(ids, mask, images)], include_pad=True)
    fc1 = "transformer.blocks.0.mlp.l.fc1"
    assert with_pads.counts[fc1] == 18 and padded.counts[fc1] == 12
    # Retrieval data runs the unimodal paths: the vl experts never fire.
    unimodal = collect(net, [(ids, mask, images)], task="unimodal")
    assert unimodal.counts["transformer.blocks.2.attn.vl"] == 0 and unimodal.counts["transformer.blocks.2.attn.l"] == 12


def test_shards_reduce_to_the_one_process_statistics() -> None:
    net = model()
    batches = [batch(s) for s in range(4)]
    whole = collect(net, batches)
    shards = [collect(net, batches[i::2]) for i in range(2)]
    reduced = reduce_grams(shards)
    for name in whole.names:
        torch.testing.assert_close(reduced.xtx[name], whole.xtx[name], rtol=1e-12, atol=1e-10)
        torch.testing.assert_close(reduced.sums[name], whole.sums[name], rtol=1e-12, atol=1e-10)
        assert reduced.counts[name] == whole.counts[name]
    # With integer-valued inputs every sum is exact in float64: reduction is bit-identical.
    g = torch.Generator().manual_seed(0)
    xs = [torch.randint(-8, 8, (n, 5), generator=g).to(F64) for n in (7, 3, 9)]
    stats = [GramStats({"m": x.T @ x}, {"m": x.sum(0)}, {"m": x.shape[0]}) for x in xs]
    union = torch.cat(xs)
    exact = reduce_grams(stats)
    assert torch.equal(exact.xtx["m"], union.T @ union) and torch.equal(exact.sums["m"], union.sum(0))
    assert exact.counts["m"] == 19
    with pytest.raises(GramsError, match="other modules"):
        reduce_grams([stats[0], GramStats({"n": xs[0].T @ xs[0]}, {"n": xs[0].sum(0)}, {"n": 7})])


def test_sample_indices_are_even_and_shards_partition_them() -> None:
    assert sample_indices(10, 4) == [0, 2, 5, 7]
    assert sample_indices(5, None) == [0, 1, 2, 3, 4] and sample_indices(3, 10) == [0, 1, 2]
    parts = [sample_indices(100, 30, (i, 3)) for i in range(3)]
    assert sorted(sum(parts, [])) == sample_indices(100, 30) and all(len(p) == 10 for p in parts)


def test_gram_files_round_trip_and_refuse_tampering(tmp_path) -> None:
    grams = collect(model(), [batch(0)])
    path = tmp_path / "g.safetensors"
    save_grams(
        path,
        grams,
        {
            "task": "vqa",
            "split": "train",
            "samples": 3,
            "image_size": 32,
            "include_pad": False,
            "checkpoint_sha256": "x",
            "layout": {},
        },
    )
    loaded, record = load_grams(path)
    assert loaded.names == grams.names and loaded.counts == grams.counts
    assert all(torch.equal(loaded.xtx[n], grams.xtx[n]) for n in grams.names)
    assert record["task"] == "vqa" and len(record["weights_sha256"]) == 64
    second = tmp_path / "h.safetensors"
    save_grams(second, grams, json.loads(sidecar_path(path).read_text()) | {"samples": 5})
    both, summary = reduce_files([path, second])
    assert summary["samples"] == 8 and both.counts == {n: 2 * c for n, c in grams.counts.items()}
    other = tmp_path / "o.safetensors"
    save_grams(other, grams, json.loads(sidecar_path(path).read_text()) | {"task": "nlvr2"})
    with pytest.raises(GramsError, match=r"differs from .* in \['task'\]"):
        reduce_files([path, other])
    path.write_bytes(path.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(GramsError, match="does not match the weights_sha256"):
        load_grams(path)
    broken = {k: v.clone() for k, v in grams.to_tensors().items()}
    broken["transformer.blocks.1.mlp.vl.fc1"][0, 0] = float("inf")
    with pytest.raises(GramsError, match=r"transformer\.blocks\.1\.mlp\.vl\.fc1 contains NaN or Inf"):
        GramStats.from_tensors(broken, "f")
    del broken["transformer.blocks.0.attn.v.count"]
    with pytest.raises(GramsError, match="no .sum or .count"):
        GramStats.from_tensors(broken, "f")


@pytest.mark.parametrize("sharing,expected", [("ffn", {"mlp"}), ("attn", {"attn"}), ("ln", set())])
def test_ablation_layouts_hook_only_per_expert_linears(sharing: str, expected: set[str]) -> None:
    net = model(sharing)
    grams = collect(net, [batch(0)])
    assert {n.split(".")[3] for n in grams.names} == expected
    fired = {n for n in grams.names if grams.counts[n] > 0}  # pairs skip v and l from F on
    assert fired == {n for n in grams.names if int(n.split(".")[2]) < net.config.fusion_start or ".vl" in n}


@pytest.mark.parametrize("task", ["vqa", "coco", "f30k", "nlvr2"])
def test_collection_runs_the_tasks_own_encode(task: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Gram collection routes each batch through ``Task.encode``, the function fine-tuning builds its logits
    on, and nothing else: the grams equal those of calling that encode by hand under the collector."""
    from vlmerge.grams.collect import collect_grams
    from vlmerge.tasks.registry import get_task

    net, route = model(), get_task(task)
    if task == "nlvr2":
        net.grow_token_types(3)  # the second image's token type, as the grams stage and fine-tuning do
    ids, mask, images = batch(5)
    sample = {"text_ids": ids, "text_mask": mask, "image": images, "image_0": images, "image_1": images.flip(0)}
    calls: list[str] = []
    original = type(route).encode

    def recording(self, m, b):
        calls.append(task)
        return original(self, m, b)

    monkeypatch.setattr(type(route), "encode", recording)
    got = collect_grams(net, [sample], task)
    assert calls == [task]
    with torch.no_grad(), GramCollector(net) as collector, collector.text(mask):
        original(route, net, sample)
    want = collector.result()
    assert got.counts == want.counts and any(want.counts.values())
    assert all(torch.equal(got.xtx[n], want.xtx[n]) for n in want.xtx)


def test_the_gram_benchmark_times_plain_and_both_product_dtypes(capsys: pytest.CaptureFixture[str]) -> None:
    from vlmerge.bench.grams import VARIANTS, gram_forward

    gram_forward("tiny", "2", "3")
    figures = json.loads(capsys.readouterr().out)
    assert set(figures["seconds"]) == set(figures["median_seconds"]) == set(figures["cpu_seconds"]) == set(VARIANTS)
    assert all(v > 0 for v in figures["seconds"].values()) and figures["batch_size"] == 2
    assert figures["rounds"] == 3
    assert all(figures["median_seconds"][v] >= figures["seconds"][v] for v in VARIANTS)
