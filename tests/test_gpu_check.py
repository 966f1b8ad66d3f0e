"""tests/gpu/check.py's MFU section on the CPU: the ``--cpu-smoke`` table, the FLOP count and the peak table."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "gpu" / "check.py"


@pytest.fixture(scope="module")
def check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_cpu_smoke_prints_the_mfu_table() -> None:
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--cpu-smoke", "--options", "eager,+sdpa"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    mfu_part, grams_part = run.stdout.split("grams on cpu:")
    table = [line for line in mfu_part.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header == ["step", "options", "batch", "size", "GFLOP/sample", "samples/s", "TFLOPS", "MFU"]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table[1:]]
    keys = [(r[0], r[1], r[2], r[3]) for r in rows]
    assert keys == [
        (step, combo, label, size)
        for step in ("pretrain", "vqa")
        for combo in ("eager", "+sdpa")
        for label, size in (("paper", "2"), ("max", "4"))
    ]
    for row in rows:
        assert float(row[4]) > 0 and float(row[5]) > 0 and float(row[6]) > 0
        assert row[7] == "n/a"  # a CPU has no bf16 tensor-core peak in the table
    flops = {(r[0], r[4]) for r in rows}
    assert len(flops) == 2  # one count per step, whatever the options
    assert "MFU against n/a" in run.stdout and "0 failure(s)" in run.stdout
    grams = [
        [c.strip() for c in line.strip("|").split("|")] for line in grams_part.splitlines() if line.startswith("| ")
    ]
    assert [row[0] for row in grams] == [
        "variant",
        "plain forward",
        "+ grams, float32 products",
        "+ grams, float64 products",
    ]
    assert grams[1][2] == grams[1][4] == "1.00" and all(float(v) > 0 for row in grams[1:] for v in row[1:])
    assert "PASS grams float32 vs float64 products" in grams_part


def test_grams_check_fails_when_the_float32_products_are_rounded_coarsely(check: ModuleType, monkeypatch) -> None:
    """The section's numeric check can fail: float32-product grams off by TF32-sized rounding (2⁻¹¹ relative)."""
    measure = check.measure_grams

    def coarse(*args: object, **kwargs: object) -> dict:
        figures = measure(*args, **kwargs)
        fast = figures["grams"]["float32"]
        noise = {n: g * (1 + 2.0**-11 * torch.randn(g.shape, dtype=g.dtype)) for n, g in fast.xtx.items()}
        figures["grams"]["float32"] = type(fast)(noise, fast.sums, fast.counts)
        return figures

    monkeypatch.setattr(check, "FAILURES", [])
    check.grams("cpu", check.SMOKE.preset, check.SMOKE.overrides, 2, rounds=1)
    assert check.FAILURES == []
    monkeypatch.setattr(check, "measure_grams", coarse)
    check.grams("cpu", check.SMOKE.preset, check.SMOKE.overrides, 2, rounds=1)
    assert check.FAILURES == ["grams float32 vs float64 products"]


def test_each_combination_adds_one_option_and_compiles_with_the_benchs_backend(check: ModuleType) -> None:
    options = [check.combo_options(c, check.SMOKE) for c in check.COMBOS]
    assert [o.attention for o in options] == ["explicit", "sdpa", "sdpa", "sdpa"]
    assert [o.optimizer for o in options] == ["foreach", "foreach", "fused", "fused"]
    assert [o.compile_blocks for o in options] == [False, False, False, True]
    assert options[-1].compile_backend == "eager" and check.combo_options("+compile", check.GPU).compile_backend == (
        "inductor"
    )
    step = check.Step("vqa", check.SMOKE, options[-1])
    assert all(block._compiled_call_impl is not None for block in step.model.transformer.blocks)


def test_unknown_options_and_a_missing_gpu_are_refused(check: ModuleType, monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", ["check.py", "--cpu-smoke", "--options", "flash"])
    with pytest.raises(SystemExit) as stop:
        check.main()
    assert stop.value.code == 2 and "unknown ['flash']" in capsys.readouterr().err
    if not torch.cuda.is_available():
        monkeypatch.setattr(sys, "argv", ["check.py", "--work", "/nonexistent"])
        assert check.main() == 2 and "no CUDA device" in capsys.readouterr().err


def test_peaks_by_device_name_and_from_the_environment(check: ModuleType, monkeypatch) -> None:
    monkeypatch.delenv(check.PEAK_ENV, raising=False)
    assert check.peak_tflops("NVIDIA H200") == 989.0
    assert check.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert check.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert check.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert check.peak_tflops("cpu") is None
    monkeypatch.setenv(check.PEAK_ENV, "123.5")
    assert check.peak_tflops("cpu") == 123.5


def test_flops_per_sample_match_a_linear_layer_count(check: ModuleType) -> None:
    """The counter over the VQA step against a closed form: per sample and per layer, forward 2·(tokens·in·out)
    for each matmul, backward twice that (the last layer's keys and values for every token, the rest for
    token 0 alone); the counted total is at least that share and the same per sample at two batch sizes."""
    bench = check.SMOKE
    step = check.Step("vqa", bench, check.COMBOS["+sdpa"])
    per_sample = step.flops_per_sample(2)
    assert per_sample == pytest.approx(step.flops_per_sample(4), rel=1e-9)
    cfg = step.model.config
    tokens = cfg.max_text_len + 1 + cfg.grid**2  # text + image [CLS] + patches, through every block
    block_params = 4 * cfg.dim * cfg.dim + 2 * cfg.dim * cfg.mlp_dim  # qkv, proj, fc1, fc2 weights
    full = cfg.num_layers - 1  # the last layer computes token 0 alone (the pooler reads nothing else)
    linear = 6 * full * block_params * tokens
    linear += 6 * (2 * cfg.dim * cfg.dim * tokens + (block_params - 2 * cfg.dim * cfg.dim))  # its k, v; the rest
    attention = 6 * full * 2 * tokens**2 * cfg.dim  # q·kᵀ and weights·v, forward + backward
    attention += 6 * 2 * tokens * cfg.dim  # the last layer: token 0's query only
    assert linear + attention <= per_sample < 1.3 * (linear + attention)
