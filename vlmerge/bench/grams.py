"""Gram collection against plain forward passes over the same batches, base preset.

One child process builds a random base MS model and a few batches of image+text pairs (224 px, texts of
8–40 tokens), then times, batch by batch and interleaved so that load on the machine hits every variant
alike: the plain forward, the forward with gram hooks taking float32 products (the default) and with
float64 products (the reference). Each figure is the fastest and the median of its rounds, wall time and
the process's CPU time; collectors are warmed on one batch first, so the one-time allocation of the sums is not counted.
This module imports no torch at top level.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import TYPE_CHECKING, Any

from vlmerge.bench.measure import Spread

if TYPE_CHECKING:
    from vlmerge.model import VLModel

VARIANTS = ("plain", "float32", "float64")
# Rounds of every variant (``--rounds``); each figure is the fastest and the median of its rounds.
ROUNDS = 5


def _child(function: str, *args: str) -> list[str]:
    code = f"import sys\nfrom vlmerge.bench.grams import {function}\n{function}(*sys.argv[1:])\n"
    return [sys.executable, "-c", code, *args]


def measure(model: VLModel, batch_size: int, rounds: int, device: str = "cpu") -> dict[str, Any]:
    """Seconds per batch of plain forwards of ``model`` (eval mode, on ``device``) and of forwards with gram
    hooks taking float32 and float64 products: wall time (fastest and median of ``rounds``) and CPU time
    (fastest), each variant warmed once and then timed in turn, round after round, over one batch of
    ``batch_size`` image+text pairs drawn from torch's global generator. On CUDA each timing starts and ends
    with a device synchronisation. ``"grams"`` holds each hooked variant's :class:`GramStats`: both
    collectors saw the same batch equally often (the warm-up and every round), so their sums compare."""
    import contextlib
    import time

    import torch

    from vlmerge.grams.hooks import GramCollector

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    n, size, length = batch_size, model.config.image_size, model.config.max_text_len
    mask = (torch.arange(length)[None, :] < torch.randint(8, length + 1, (n, 1))).long()
    ids = torch.randint(5, model.config.vocab_size, (n, length)) * mask
    images = torch.randn(n, 3, size, size)
    ids, mask, images = ids.to(device), mask.to(device), images.to(device)
    collectors = {v: GramCollector(model, products=v) for v in VARIANTS if v != "plain"}  # type: ignore[arg-type]

    def timed(variant: str) -> tuple[float, float]:
        sync()
        wall, cpu = time.perf_counter(), time.process_time()
        with contextlib.ExitStack() as stack:
            for name, collector in collectors.items():
                stack.enter_context(collector.text(mask))
                if name != variant:
                    stack.enter_context(collector.paused())
            model.encode_pair(ids, mask, images)
        sync()
        return time.perf_counter() - wall, time.process_time() - cpu

    walls: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cpus: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with torch.no_grad():
        for variant in VARIANTS:  # warm-up: kernels, and the sums allocated on first use
            timed(variant)
        for _ in range(rounds):
            for variant in VARIANTS:
                wall, cpu = timed(variant)
                walls[variant].append(wall)
                cpus[variant].append(cpu)
    grams = {name: collector.result() for name, collector in collectors.items()}
    for collector in collectors.values():
        collector.close()
    return {
        "preset": model.config.preset,
        "batch_size": n,
        "tokens_per_batch": int(mask.sum()) + n * (model.config.grid**2 + 1),
        "threads": torch.get_num_threads(),
        "rounds": rounds,
        "seconds": {v: min(walls[v]) for v in VARIANTS},
        "median_seconds": {v: Spread.of(walls[v]).median for v in VARIANTS},
        "cpu_seconds": {v: min(cpus[v]) for v in VARIANTS},
        "grams": grams,
    }


def gram_forward(preset: str = "base", batch_size: str = "8", rounds: str = str(ROUNDS)) -> None:
    """(child) Print :func:`measure`'s figures of a random ``preset`` MS model on the CPU as JSON."""
    import torch

    from vlmerge.model import create_model

    torch.manual_seed(0)
    model = create_model(preset, "modality_specific").eval()
    figures = measure(model, int(batch_size), int(rounds))
    del figures["grams"]
    print(json.dumps(figures))


def run(rounds: int = ROUNDS) -> dict[str, object]:
    proc = subprocess.run(_child("gram_forward", "base", "8", str(rounds)), capture_output=True, text=True, check=True)
    r = json.loads(proc.stdout)
    wall, median, cpu = r["seconds"], r["median_seconds"], r["cpu_seconds"]
    print(
        f"\n## grams: {r['preset']} preset, batch {r['batch_size']} image+text pairs ({r['tokens_per_batch']} tokens), "
        f"{r['threads']} threads; per batch, the fastest of {r['rounds']} rounds (wall, CPU) and the median (wall)"
    )
    print(f"{'variant':<28} {'wall s':>8} {'x plain':>8} {'med s':>8} {'x plain':>8} {'CPU s':>8} {'x plain':>8}")
    for variant, label in [
        ("plain", "plain forward"),
        ("float32", "+ grams, float32 products"),
        ("float64", "+ grams, float64 products"),
    ]:
        print(
            f"{label:<28} {wall[variant]:>8.2f} {wall[variant] / wall['plain']:>8.2f}"
            f" {median[variant]:>8.2f} {median[variant] / median['plain']:>8.2f}"
            f" {cpu[variant]:>8.2f} {cpu[variant] / cpu['plain']:>8.2f}"
        )
    return r
