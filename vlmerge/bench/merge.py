"""Merge methods at the base preset, and the cost of gram hooks.

Each method runs as its own ``python -m vlmerge.merge`` child on a random base-size MS checkpoint
(184M block parameters), the seed and synthetic gram statistics; its wall time and peak RSS are
quoted against the floor of a child that only loads the same inputs and writes an output of the
same size. Gram collection is timed against plain forward passes over the same batches (tiny preset),
and RegMean's float64 solves against their essential flops at the float64 GEMM rate of the same run.
The inputs' checksums (as every stage hashes a file: through read-only mappings) are timed against
reading the same files into a buffer.

Everything heavy runs in children and this module imports no torch at top level: on Linux a
child's peak RSS (``wait4``) is at least its parent's RSS at spawn time, so a parent holding the
base models would inflate every figure.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from vlmerge.bench.measure import Measurement, Spread, python_module, run_measured

log = logging.getLogger(__name__)

# (method, --param values, which inputs it reads besides the MS checkpoint)
RUNS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("interpolation", (), "ms"),
    ("arithmetic", (), "seed"),
    ("arithmetic", ("mode=upstream_sequential",), "seed"),
    ("task_arithmetic", (), "seed"),
    ("ties", (), "seed"),
    ("ties", ("topk_scope=global",), "seed"),
    ("dare", (), "seed"),
    ("regmean", (), "grams"),
    ("regmean_exact_bias", (), "grams"),
)

# What a streaming merge should cost against the floor (issue 13): time for the weight-space methods
# (RegMean adds its solves), peak RSS for every method.
TIME_GOAL, RSS_GOAL = 1.5, 1.3
# Rounds of every method and floor (``--rounds``); each figure is the fastest and the median of its runs.
ROUNDS = 3


def _child(function: str, *args: str) -> list[str]:
    """argv running ``vlmerge.bench.merge.<function>(*args)`` in a fresh interpreter."""
    code = f"import sys\nfrom vlmerge.bench.merge import {function}\n{function}(*sys.argv[1:])\n"
    return [sys.executable, "-c", code, *args]


def write_inputs(work: str) -> None:
    """(child) Random base MS and seed checkpoints, and synthetic grams G = AAᵀ + diag(u), A [D, 256]."""
    import torch

    from vlmerge.files.grams import save_grams
    from vlmerge.merging import GramStats, gram_targets
    from vlmerge.model import create_model
    from vlmerge.model.checkpoint import save_model
    from vlmerge.runtime import sha256_file

    root = Path(work)
    torch.manual_seed(0)
    ms = create_model("base", "modality_specific")
    save_model(root / "ms.safetensors", ms)
    save_model(root / "seed.safetensors", create_model("base", "shared"))
    g = torch.Generator().manual_seed(0)
    xtx, sums, counts = {}, {}, {}
    for name, _ in gram_targets(ms.expert_layout()):
        dim = ms.config.mlp_dim if name.endswith("fc2") else ms.config.dim
        a = torch.randn(dim, 256, generator=g, dtype=torch.float64)  # low rank + diagonal: PD, cheap at base size
        xtx[name] = a @ a.T + torch.diag(torch.rand(dim, generator=g, dtype=torch.float64))
        sums[name], counts[name] = torch.randn(dim, generator=g, dtype=torch.float64), 10_000
    save_grams(
        root / "grams.safetensors",
        GramStats(xtx, sums, counts),
        {"task": "synthetic", "checkpoint_sha256": sha256_file(root / "ms.safetensors")},
    )


def floor(ms: str, out: str, seed: str = "", grams: str = "") -> None:
    """(child) Load the inputs as the merge CLI does and write an MA-sized output (the v expert's weights)."""
    from vlmerge.files.grams import load_grams
    from vlmerge.merging import block_groups
    from vlmerge.merging.keys import copied_keys
    from vlmerge.model import Modality, Sharing, expert_layout
    from vlmerge.model.checkpoint import CheckpointMeta, load_state, save_checkpoint

    state, meta = load_state(ms)
    if seed:
        load_state(seed)
    if grams:
        load_grams(grams)
    layout = expert_layout(meta.config, meta.sharing)
    merged = {k: state[k] for k in copied_keys(layout, state)}
    merged.update({g.ma_key: state[g.experts[Modality.V]] for g in block_groups(layout)})
    save_checkpoint(out, merged, CheckpointMeta(meta.preset, meta.overrides, Sharing.SHARED, meta.heads))


def gram_hooks(batches: str = "12", batch_size: str = "32", rounds: str = "5") -> None:
    """(child) Print JSON: seconds per batch of image+text forwards (tiny preset), plain and with gram hooks.

    Each batch runs plain (hooks paused) and hooked back to back, so that a slow spell of the machine hits
    both; a round is one pass over the batches, and each figure is the fastest and the median round."""
    import functools

    import torch

    from vlmerge.grams.hooks import GramCollector
    from vlmerge.model import create_model

    torch.manual_seed(0)
    model = create_model("tiny", "modality_specific").eval()
    n, size, length = int(batch_size), model.config.image_size, model.config.max_text_len
    data = []
    for _ in range(int(batches)):
        mask = (torch.arange(length)[None, :] < torch.randint(8, length + 1, (n, 1))).long()
        ids = torch.randint(5, model.config.vocab_size, (n, length)) * mask
        data.append((ids, mask, torch.randn(n, 3, size, size)))
    plain: list[float] = []
    hooked: list[float] = []
    with torch.no_grad(), GramCollector(model) as collector:
        for ids, mask, images in data[:2]:  # warm-up: kernels, and the sums allocated on first use
            with collector.text(mask):
                model.encode_pair(ids, mask, images)
        for _ in range(int(rounds)):
            times = {"plain": 0.0, "hooked": 0.0}
            for ids, mask, images in data:
                with collector.text(mask):
                    forward = functools.partial(model.encode_pair, ids, mask, images)
                    with collector.paused():
                        times["plain"] += _timed(forward)
                    times["hooked"] += _timed(forward)
            plain.append(times["plain"] / len(data))
            hooked.append(times["hooked"] / len(data))
    p, h = Spread.of(plain), Spread.of(hooked)
    fastest, median = h.over(p)
    print(
        json.dumps(
            {
                "plain_s_per_batch": p.fastest,
                "grams_s_per_batch": h.fastest,
                "ratio": fastest,
                "ratio_median": median,
                "rounds": p.runs,
            }
        )
    )


def regmean_gemm(blocks: str = "3", repeats: str = "2") -> None:
    """(child) Print JSON: RegMean's float64 solves on ``blocks`` × 4 base-size linear layers (qkv, proj,
    fc1, fc2), 2 experts, against the floor of their essential flops at the GEMM rate of this run.

    Essential flops of one layer with n inputs, k outputs: 2 × 2n²k for Σ_m G_m W_mᵀ, n³/3 for the
    Cholesky factorisation, 2n²k for the two triangular solves: 6n²k + n³/3. The GEMM rate is the best
    of several float64 [2048, 2048] products, measured before and after the solves (the higher is
    used, so load during the run counts against RegMean, not for it).
    """

    import torch

    from vlmerge.merging.regmean import Workspace, regmean_solve
    from vlmerge.model import Modality, model_config

    config = model_config("base")
    d, h = config.dim, config.mlp_dim
    shapes = [(d, 3 * d), (d, d), (d, h), (h, d)] * int(blocks)  # (n inputs, k outputs)
    g = torch.Generator().manual_seed(0)
    layers = []
    for n, k in shapes:
        grams = {}
        for m in (Modality.V, Modality.L):
            a = torch.randn(n, 256, generator=g, dtype=torch.float64)  # low rank + diagonal: PD
            grams[m] = a @ a.T + torch.diag(torch.rand(n, generator=g, dtype=torch.float64))
        layers.append(({m: torch.randn(k, n, generator=g) for m in grams}, grams))
    flops = sum(6 * n * n * k + n**3 / 3 for n, k in shapes)

    def gemm_rate() -> float:
        x = torch.randn(2048, 2048, dtype=torch.float64)
        x @ x
        best = min(_timed(lambda: x @ x) for _ in range(5))
        return 2 * 2048**3 / best

    workspace = Workspace()  # as a merge holds it: buffers reused from layer to layer

    def solves() -> None:
        for weights, grams in layers:
            regmean_solve(weights, grams, 1e10, workspace=workspace)

    rate = gemm_rate()
    solves()  # warm-up
    seconds = min(_timed(solves) for _ in range(int(repeats)))
    rate = max(rate, gemm_rate())
    floor = flops / rate
    print(
        json.dumps(
            {
                "layers": len(shapes),
                "gflop": flops / 1e9,
                "gemm_gflops": rate / 1e9,
                "seconds": seconds,
                "floor_s": floor,
                "ratio": seconds / floor,
                "threads": torch.get_num_threads(),
            }
        )
    )


def hashing(kind: str, *paths: str) -> None:
    """(child) Print the seconds to sha256 ``paths`` once, as the stages do (``kind`` "mapped":
    :func:`sha256_file`, read-only mappings) or by reading each file into one reused 1 MiB buffer and
    hashing that ("read": the copy a read makes). A stage hashes each input once per process, so each
    figure is a fresh process's first pass (later passes over the same files cost less either way)."""
    import hashlib

    from vlmerge.runtime import sha256_file

    def read_copy(path: str) -> None:
        digest, view = hashlib.sha256(), memoryview(bytearray(1 << 20))
        with open(path, "rb", buffering=0) as fh:
            while got := fh.readinto(view):
                digest.update(view[:got])

    one = sha256_file if kind == "mapped" else read_copy
    print(json.dumps(_timed(lambda: [one(p) for p in paths])))


def _hashing(paths: list[str], rounds: int = ROUNDS) -> dict[str, float]:
    """:func:`hashing` of ``paths`` both ways in alternating rounds of fresh children; the fastest of each."""
    runs: dict[str, list[float]] = {"read": [], "mapped": []}
    for _ in range(rounds):
        for kind, seconds in runs.items():
            child = subprocess.run(_child("hashing", kind, *paths), capture_output=True, text=True, check=True)
            seconds.append(float(child.stdout))
    read, mapped = min(runs["read"]), min(runs["mapped"])
    size = sum(Path(p).stat().st_size for p in paths)
    return {"bytes": size, "read_s": read, "mapped_s": mapped, "ratio": mapped / read}


def _timed(fn: Callable[[], object]) -> float:
    import time

    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _summary(runs: list[Measurement]) -> tuple[Spread, float]:
    """The fastest and median time of repeated runs, and the largest peak RSS among them."""
    return Spread.of([m.seconds for m in runs]), max(m.peak_rss_mb for m in runs)


def method_rows(
    floor_runs: dict[str, list[Measurement]], method_runs: list[list[Measurement]]
) -> list[dict[str, object]]:
    """One row per entry of :data:`RUNS`: its time (fastest, median) and peak RSS against its floor's."""
    floors = {kind: _summary(runs) for kind, runs in floor_runs.items()}
    rows = []
    for (method, params, needs), runs in zip(RUNS, method_runs, strict=True):
        (spread, rss), (floor, floor_rss) = _summary(runs), floors[needs]
        fastest, median = spread.over(floor)
        rows.append(
            {
                "method": " ".join([method, *params]),
                "seconds": spread.fastest,
                "median_s": spread.median,
                "peak_rss_mb": rss,
                "floor_s": floor.fastest,
                "floor_median_s": floor.median,
                "floor_rss_mb": floor_rss,
                "time_vs_floor": fastest,
                "time_vs_floor_median": median,
                "rss_vs_floor": rss / floor_rss,
            }
        )
    return rows


def _bench_methods(work: Path, rounds: int) -> tuple[list[dict[str, object]], dict[str, float]]:
    run_measured(_child("write_inputs", str(work)))
    paths = {name: str(work / f"{name}.safetensors") for name in ("ms", "seed", "grams")}
    out = str(work / "out.safetensors")
    floor_argv = {
        "ms": _child("floor", paths["ms"], out),
        "seed": _child("floor", paths["ms"], out, paths["seed"]),
        "grams": _child("floor", paths["ms"], out, "", paths["grams"]),
    }
    method_argv = []
    for method, params, needs in RUNS:
        args = ["--method", method, "--ms", paths["ms"], "--out", out]
        args += [f"--{needs}", paths[needs]] if needs != "ms" else []
        for p in params:
            args += ["--param", p]
        method_argv.append(python_module("vlmerge.merge", *args))
    # Rounds of every floor and every method, so that a slow spell of the machine hits both sides.
    floor_runs: dict[str, list[Measurement]] = {k: [] for k in floor_argv}
    method_runs: list[list[Measurement]] = [[] for _ in RUNS]
    for round_ in range(rounds):
        log.info("merge benchmark: round %d of %d", round_ + 1, rounds)
        for kind, argv in floor_argv.items():
            floor_runs[kind].append(run_measured(argv))
        for runs, argv in zip(method_runs, method_argv, strict=True):
            runs.append(run_measured(argv))
    return method_rows(floor_runs, method_runs), _hashing([paths["ms"], paths["seed"]], rounds)


def run(rounds: int = ROUNDS) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="vlmerge-bench-") as tmp:
        rows, hashed = _bench_methods(Path(tmp), rounds)
    hooks = json.loads(subprocess.run(_child("gram_hooks"), capture_output=True, text=True, check=True).stdout)
    solve = json.loads(subprocess.run(_child("regmean_gemm"), capture_output=True, text=True, check=True).stdout)
    print(
        f"\n## merge: base preset, random weights, synthetic grams (one child process per method; "
        f"{rounds} alternating rounds; times: the fastest and the median run, each against the floor's)"
    )
    print(
        f"{'method':<36} {'s':>6} {'med s':>6} {'peak RSS MB':>12} {'floor s':>8} {'med':>6} {'floor MB':>9}"
        f" {'x floor':>8} {'med x':>6} {'RSS x':>6}"
    )
    for r in rows:
        print(
            f"{r['method']:<36} {r['seconds']:>6.1f} {r['median_s']:>6.1f} {r['peak_rss_mb']:>12.0f}"
            f" {r['floor_s']:>8.1f} {r['floor_median_s']:>6.1f} {r['floor_rss_mb']:>9.0f}"
            f" {r['time_vs_floor']:>8.2f} {r['time_vs_floor_median']:>6.2f} {r['rss_vs_floor']:>6.2f}"
        )
    weight_space = [r for r in rows if not str(r["method"]).startswith("regmean")]
    worst_time = max(float(r["time_vs_floor"]) for r in weight_space)  # type: ignore[arg-type]
    worst_median = max(float(r["time_vs_floor_median"]) for r in weight_space)  # type: ignore[arg-type]
    worst_rss = max(float(r["rss_vs_floor"]) for r in rows)  # type: ignore[arg-type]
    print(
        f"goals: weight-space methods x floor <= {TIME_GOAL} (worst {worst_time:.2f} fastest, "
        f"{worst_median:.2f} median), every method RSS x <= {RSS_GOAL} (worst {worst_rss:.2f})"
    )
    print(
        f"checksums of the MS and seed inputs ({hashed['bytes'] / 2**30:.2f} GiB, page cache): "
        f"{hashed['mapped_s']:.2f} s mapped vs {hashed['read_s']:.2f} s read into a buffer (x{hashed['ratio']:.2f})"
    )
    print(
        f"\n## grams: tiny preset, batch 32 image+text pairs: plain forward "
        f"{hooks['plain_s_per_batch'] * 1e3:.0f} ms, with gram hooks {hooks['grams_s_per_batch'] * 1e3:.0f} ms "
        f"per batch in the fastest of {hooks['rounds']} rounds (x{hooks['ratio']:.2f}; x{hooks['ratio_median']:.2f} "
        "the median rounds)"
    )
    print(
        f"\n## RegMean solves: {solve['layers']} base-size linear layers (qkv, proj, fc1, fc2), 2 experts, float64: "
        f"{solve['seconds']:.2f} s vs floor {solve['floor_s']:.2f} s ({solve['gflop']:.0f} GFLOP essential at "
        f"{solve['gemm_gflops']:.0f} GFLOP/s float64 GEMM, {solve['threads']} threads): x{solve['ratio']:.2f}"
    )
    return {"methods": rows, "checksums": hashed, "grams": hooks, "regmean_solve": solve}
