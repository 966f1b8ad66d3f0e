"""Gram collection: hook statistics against inputs captured by hand, pad exclusion, exact shard reduction, files."""

from __future__ import annotations

import json

import pytest
import torch

from vlmerge.files.grams import load_grams, reduce_files, save_grams, sidecar_path
from vlmerge.grams.collect import sample_indices
from vlmerge.grams.hooks import GramCollector
from vlmerge.merging import GramsError, GramStats, gram_targets, reduce_grams
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


def collect(net, batches, include_pad: bool = False, task: str = "pair") -> GramStats:
    with torch.no_grad(), GramCollector(net, include_pad) as collector:
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
