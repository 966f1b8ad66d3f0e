"""Merges streamed from files equal the in-memory merges tensor for tensor, and hold one key group at a time."""

from __future__ import annotations

import json
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from vlmerge.files.grams import load_grams, open_grams, save_grams
from vlmerge.merge import cli as merge_cli
from vlmerge.merging import GramsError, GramStats, MergeError, gram_targets, merge_with_report
from vlmerge.merging.apply import merge_files
from vlmerge.merging.stream import CACHED_GROUPS, TensorFile
from vlmerge.model import create_model, expert_layout
from vlmerge.model.checkpoint import load_state, save_checkpoint, save_model, verify_state
from vlmerge.runtime import sha256_file

# (method, params, inputs besides MS)
CASES: list[tuple[str, dict[str, str], str]] = [
    ("interpolation", {}, ""),
    ("interpolation", {"ratio": "0.3", "used_experts_only": "vqa"}, ""),
    ("interpolation", {"layers": "0", "parts": "ffn", "rest_from": "l"}, ""),
    ("arithmetic", {"lam": "0.75"}, "seed"),
    ("arithmetic", {"mode": "upstream_sequential", "used_experts_only": "coco"}, "seed"),
    ("arithmetic", {"single_expert": "copy", "used_experts_only": "vqa"}, "seed"),
    ("task_arithmetic", {"lam": "0.4", "subset": "v,l"}, "seed"),
    ("ties", {}, "seed"),
    ("ties", {"topk_scope": "global", "k": "30", "used_experts_only": "retrieval"}, "seed"),
    ("dare", {"p": "0.3", "seed": "7"}, "seed"),
    ("dare", {"consensus": "true", "rescale": "false", "used_experts_only": "nlvr2"}, "seed"),
    ("regmean", {}, "grams"),
    ("regmean", {"alpha": "0.9", "normalize": "mean", "used_experts_only": "vqa"}, "grams"),
    ("regmean", {"unseen": "skip"}, "grams"),
    ("regmean_exact_bias", {"alpha": "0.5"}, "grams"),
    ("regmean_exact_bias", {"unseen": "skip", "normalize": "mean"}, "grams"),
    ("regmean_exact_bias", {"used_experts_only": "vqa"}, "grams"),
]


def _random(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) * 0.1 for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A pico MS checkpoint with distinct experts, its seed, and grams (the l/v grams of the fusion
    layers' vl-only inputs saw no tokens, as VQA data leaves them)."""
    root = tmp_path_factory.mktemp("stream")
    ms = create_model("pico", "modality_specific")
    ms.load_state_dict(_random(ms, 0))
    save_model(root / "ms.safetensors", ms)
    seed = create_model("pico", "shared")
    seed.load_state_dict(_random(seed, 1))
    save_model(root / "seed.safetensors", seed)
    layout = ms.expert_layout()
    g = torch.Generator().manual_seed(2)
    xtx, sums, counts = {}, {}, {}
    for name, m in gram_targets(layout):
        dim = ms.config.mlp_dim if name.endswith("fc2") else ms.config.dim
        x = torch.randn(3 * dim, dim, generator=g, dtype=torch.float64)
        unseen = m.value != "vl" and int(name.split(".")[2]) >= layout.fusion_start and name.endswith("fc1")
        xtx[name] = torch.zeros(dim, dim, dtype=torch.float64) if unseen else x.T @ x
        sums[name], counts[name] = x.sum(0), 0 if unseen else x.shape[0]
    save_grams(
        root / "grams.safetensors",
        GramStats(xtx, sums, counts),
        {"task": "vqa", "checkpoint_sha256": sha256_file(root / "ms.safetensors")},
    )
    return {"ms": root / "ms.safetensors", "seed": root / "seed.safetensors", "grams": root / "grams.safetensors"}


def _in_memory(method: str, params: dict[str, str], needs: str, files: dict[str, Path]) -> Any:
    ms, meta = load_state(files["ms"])
    return merge_with_report(
        method,
        ms,
        seed_state=load_state(files["seed"])[0] if needs == "seed" else None,
        grams=load_grams(files["grams"])[0] if needs == "grams" else None,
        layout=expert_layout(meta.config, meta.sharing),
        **params,
    )


def _streamed(method: str, params: dict[str, str], needs: str, files: dict[str, Path]) -> Any:
    meta = verify_state(files["ms"])
    return merge_files(
        method,
        TensorFile(files["ms"], "MS state dict"),
        seed_file=TensorFile(files["seed"], "seed state dict") if needs == "seed" else None,
        grams=open_grams(files["grams"])[0] if needs == "grams" else None,
        layout=expert_layout(meta.config, meta.sharing),
        **params,
    )


def _expect_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert torch.equal(a[key], b[key]), key


def _skip_unseen(method: str, params: dict[str, str]) -> bool:
    """RegMean over every expert with unseen grams and ``unseen=error`` is refused by both paths."""
    return method.startswith("regmean") and "used_experts_only" not in params and params.get("unseen") != "skip"


@pytest.mark.parametrize(("method", "params", "needs"), CASES, ids=[f"{m}-{p}" for m, p, _ in CASES])
def test_streamed_merge_is_the_in_memory_merge(
    method: str, params: dict[str, str], needs: str, files: dict[str, Path]
) -> None:
    if _skip_unseen(method, params):
        for merge_fn in (_in_memory, _streamed):
            with pytest.raises(GramsError, match="saw no tokens"):
                merge_fn(method, params, needs, files)
        return
    memory = _in_memory(method, params, needs, files)
    streamed = _streamed(method, params, needs, files)
    _expect_equal(memory.state, streamed.state)
    assert json.dumps(memory.diagnostics, sort_keys=True) == json.dumps(streamed.diagnostics, sort_keys=True)


def test_lazy_grams_read_as_the_loaded_ones(files: dict[str, Path]) -> None:
    loaded, record = load_grams(files["grams"])
    lazy, lazy_record = open_grams(files["grams"])
    assert record == lazy_record and lazy.names == loaded.names and dict(lazy.counts) == dict(loaded.counts)
    for name in loaded.names:
        assert lazy.shapes[name] == tuple(loaded.xtx[name].shape)
        assert torch.equal(lazy.xtx[name], loaded.xtx[name]) and torch.equal(lazy.sums[name], loaded.sums[name])


def test_a_streamed_merge_holds_a_few_key_groups_not_the_model(files: dict[str, Path]) -> None:
    """Count the per-expert tensors alive at each read (prefetched ones included): bounded by the cached
    groups and the one group read ahead, far below the model."""
    meta = verify_state(files["ms"])
    source = TensorFile(files["ms"], "MS state dict")
    layout = expert_layout(meta.config, meta.sharing)
    experts = {k for k in source.keys() if ".v." in k or ".l." in k or ".vl." in k}
    alive: set[int] = set()
    peak = 0
    reader = source._reader
    read = reader.read

    def counted(key: str) -> torch.Tensor:
        nonlocal peak
        tensor = read(key)
        if key in experts:
            alive.add(id(tensor))
            weakref.finalize(tensor, alive.discard, id(tensor))
            peak = max(peak, len(alive))
        return tensor

    reader.read = counted  # type: ignore[method-assign]
    merge_files("interpolation", source, layout=layout)
    assert 0 < peak <= 3 * (CACHED_GROUPS + 1) < len(experts) / 4


def test_the_cli_writes_the_in_memory_merge_as_a_checkpoint_pair(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "merged.safetensors"
    args = ["--method", "regmean_exact_bias", "--param", "used_experts_only=vqa", "--ms", str(files["ms"])]
    assert merge_cli.main([*args, "--grams", str(files["grams"]), "--out", str(out)]) == 0
    expected = _in_memory("regmean_exact_bias", {"used_experts_only": "vqa"}, "grams", files)
    with safe_open(str(out), framework="pt") as f:
        _expect_equal({k: f.get_tensor(k) for k in f.keys()}, expected.state)
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["weights_sha256"] == sha256_file(out)
    assert sidecar["extra"]["merge"] == json.loads(json.dumps(expected.diagnostics))


def test_non_finite_inputs_are_named_when_streamed(files: dict[str, Path], tmp_path: Path) -> None:
    """A NaN in an expert the merge leaves out, or in a gram, is still an error naming the key."""
    state, meta = load_state(files["ms"])
    bad_key = "transformer.blocks.2.mlp.v.fc1.weight"  # the v expert of a fusion layer: VQA merges vl only
    state[bad_key] = state[bad_key].clone()
    state[bad_key][0, 0] = float("nan")
    save_checkpoint(tmp_path / "ms.safetensors", state, meta)
    source = TensorFile(tmp_path / "ms.safetensors", "MS state dict")
    with pytest.raises(MergeError, match=f"MS state dict: {bad_key} contains NaN or Inf"):
        merge_files("interpolation", source, layout=expert_layout(meta.config, meta.sharing), used_experts_only="vqa")
    grams, record = load_grams(files["grams"])
    name = grams.names[0]
    xtx = dict(grams.xtx) | {name: torch.full_like(grams.xtx[name], float("inf"))}
    save_grams(tmp_path / "g.safetensors", GramStats(xtx, grams.sums, grams.counts), record)
    lazy, _ = open_grams(tmp_path / "g.safetensors")
    with pytest.raises(GramsError, match=f"{name} contains NaN or Inf"):
        lazy.xtx[name]


@pytest.mark.parametrize("which", ["ms", "seed", "grams"])
def test_the_cli_writes_nothing_when_an_input_is_not_the_file_its_sidecar_describes(
    which: str, files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The inputs' checksums are checked on a second thread while the merge reads them; a weights file
    swapped under its sidecar (same layout, other values) is still refused before anything is written."""
    inputs = {}
    for name, path in files.items():
        inputs[name] = tmp_path / path.name
        inputs[name].write_bytes(path.read_bytes())
        inputs[name].with_suffix(".json").write_bytes(path.with_suffix(".json").read_bytes())
    if which == "grams":
        grams, record = load_grams(files["grams"])
        save_grams(
            tmp_path / "other.safetensors",
            GramStats({k: 2 * v for k, v in grams.xtx.items()}, grams.sums, grams.counts),
            record,
        )
    else:
        state, meta = load_state(files[which])
        other = {k: v + 1 for k, v in state.items()}
        if which == "ms":  # the swapped file also fails the merge (NaN): the pair error is the one reported
            other[next(iter(other))].view(-1)[0] = float("nan")
        save_checkpoint(tmp_path / "other.safetensors", other, meta)
    inputs[which].write_bytes((tmp_path / "other.safetensors").read_bytes())  # the old sidecar stays
    method, extra = ("regmean", ["--param", "used_experts_only=vqa"]) if which == "grams" else ("ties", [])
    out = tmp_path / "merged.safetensors"
    args = ["--method", method, *extra, "--ms", str(inputs["ms"]), "--out", str(out)]
    args += ["--grams", str(inputs["grams"])] if which == "grams" else ["--seed", str(inputs["seed"])]
    code = merge_cli.main(args)
    assert code != 0 and not out.exists() and not out.with_suffix(".json").exists()
    error = capsys.readouterr().err
    assert str(inputs[which]) in error and "different writes" in error, error
    assert not list(tmp_path.glob(".tmp-*"))


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int64, torch.bool]
)
def test_gather_reads_the_values_at_flat_positions(dtype: torch.dtype, tmp_path: Path) -> None:
    """A sample read through a mapping of one tensor's bytes: the values ``read`` gives at those positions,
    for offsets that fall anywhere in a page, an empty tensor and repeated positions."""
    from safetensors.torch import save_file

    from vlmerge.merging.stream import SafetensorsReader

    g = torch.Generator().manual_seed(3)
    tensors = {
        "a": torch.randn(3, generator=g),  # shifts the next tensors off any page boundary
        "b": (torch.randn(70, 130, generator=g) * 100).to(dtype),
        "c": torch.empty(0, dtype=dtype),
        "d": (torch.randn(5000, generator=g) * 100).to(dtype),
    }
    save_file(tensors, tmp_path / "t.safetensors")
    reader = SafetensorsReader(tmp_path / "t.safetensors")
    for key in ("b", "d"):
        numel = tensors[key].numel()
        index = torch.cat([torch.randint(numel, (400,), generator=g), torch.tensor([0, numel - 1, 0])])
        got = reader.gather(key, index)
        assert got.dtype == dtype and torch.equal(got, reader.read(key).reshape(-1)[index])
    assert reader.gather("c", torch.empty(0, dtype=torch.int64)).numel() == 0


def test_global_ties_samples_streamed_inputs_without_reading_them(files: dict[str, Path]) -> None:
    """The sample that brackets the global threshold is gathered (a few values per tensor), so each input
    tensor is read twice, for the count and the merge, and the result is the in-memory one."""
    meta = verify_state(files["ms"])
    sources = {n: TensorFile(files[n], f"{n} state dict") for n in ("ms", "seed")}
    reads: dict[str, int] = {}
    gathered: set[str] = set()
    for name, source in sources.items():
        reader = source._reader
        read, gather = reader.read, reader.gather

        def counted(key: str, read: Any = read, name: str = name) -> torch.Tensor:
            reads[f"{name}:{key}"] = reads.get(f"{name}:{key}", 0) + 1
            return read(key)

        def sampled(key: str, index: torch.Tensor, gather: Any = gather, name: str = name) -> torch.Tensor:
            gathered.add(f"{name}:{key}")
            return gather(key, index)

        reader.read, reader.gather = counted, sampled  # type: ignore[method-assign]
    params = {"topk_scope": "global", "k": "30"}
    streamed = merge_files(
        "ties", sources["ms"], seed_file=sources["seed"], layout=expert_layout(meta.config, meta.sharing), **params
    )
    _expect_equal(_in_memory("ties", params, "seed", files).state, streamed.state)
    merged = {k for k in reads if k in gathered}
    assert merged and gathered <= set(reads) and all(reads[k] == 2 for k in merged)


def _mappings(path: Path) -> int:
    """How many of this process's mappings are of ``path``."""
    return sum(str(path) in line for line in Path("/proc/self/maps").read_text().splitlines())


def test_a_read_maps_one_tensor_privately_until_it_is_freed(tmp_path: Path) -> None:
    """A tensor read from a file is a copy-on-write mapping of its bytes: writing to it never reaches the
    file, the mapping lives as long as the tensor (or a view of it) and is gone once they are freed."""
    import gc

    from safetensors.torch import save_file

    from vlmerge.merging.stream import SafetensorsReader

    path = tmp_path / "t.safetensors"
    save_file({"a": torch.arange(7, dtype=torch.float32), "b": torch.arange(5000, dtype=torch.float64)}, path)
    before = path.read_bytes()
    reader = SafetensorsReader(path)
    tensor = reader.read("b")
    view = tensor[10:20]
    assert _mappings(path) == 1 and torch.equal(tensor, torch.arange(5000, dtype=torch.float64))
    tensor.mul_(-1)
    assert float(view[0]) == -10.0 and path.read_bytes() == before
    assert torch.equal(reader.read("b"), torch.arange(5000, dtype=torch.float64))
    del tensor
    gc.collect()
    assert _mappings(path) == 1  # the view still holds it
    del view
    gc.collect()
    assert _mappings(path) == 0


def test_a_truncated_file_is_named_not_mapped(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from vlmerge.merging.stream import SafetensorsReader

    path = tmp_path / "t.safetensors"
    save_file({"a": torch.zeros(3), "b": torch.zeros(5000)}, path)
    reader = SafetensorsReader(path)
    with path.open("r+b") as fh:
        fh.truncate(path.stat().st_size - 4)
    assert reader.read("a").numel() == 3
    with pytest.raises(MergeError, match=r"t\.safetensors: b ends past the end of the file \(truncated\)"):
        reader.read("b")
