"""GPU check of the training paths the CPU test suite cannot reach: CUDA, bf16 autocast, SDPA, FSDP.

Run on a machine with one CUDA GPU (not collected by pytest):

    python tests/gpu/check.py --work /tmp/vlmerge-gpu

1. Numerics: the tiny and base models on CUDA (fp32 and bf16 autocast) against fp32 on CPU,
   image, text and pair encoders; relative errors printed, fp32 held to 1e-4, bf16 to 3e-2.
2. Throughput: base preset pre-training step (MLM + ITC + ITM) on CUDA, fp32 vs bf16-mixed,
   samples/s of each in the same run.
3. The stage CLIs end to end on the GPU over a freshly generated synthetic corpus: pre-training
   with ``--strategy ddp`` and ``--strategy fsdp`` (bf16-mixed), fine-tuning and evaluation.
4. MFU: model FLOPs per sample (``torch.utils.flop_counter``, one forward + backward) of the base
   pre-training step (MLM + ITC + ITM, 224 px) and of a VQA fine-tuning step (480 px), and for each
   combination of the speed options (attention kernel, compiled blocks, AdamW implementation) the
   samples/s and the model FLOP utilisation against the device's dense bf16 peak (:data:`PEAK_TFLOPS`,
   or ``VLMERGE_PEAK_TFLOPS``; "n/a" where neither knows the device), in bf16 autocast at the paper's
   per-GPU batch (22) and at the largest batch that fits (doubling until out of memory).
5. Grams: gram collection (the hooks of ``python -m vlmerge.grams``) against a plain forward of the same
   batch, base MS model in fp32 at batch 32, float32 and float64 products (fastest and median of 5 rounds);
   the float32-product grams are checked against the float64 ones of the same passes (relative difference
   under 1e-5: the products must run in IEEE float32, not TF32).
Exit status 1 if any check fails.

Without a GPU, ``--cpu-smoke`` runs sections 4 and 5 alone on the CPU (a 3-layer, width-32 tiny model at 48 px,
fp32, batches 2 and at most 4, compiled blocks on the ``eager`` backend; grams of the same model at batch
4): the same tables, for testing this script; their figures say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from vlmerge.bench.grams import measure as measure_grams
from vlmerge.model import Heads, VLModel, create_model
from vlmerge.pretrain.module import PretrainConfig, PretrainModule
from vlmerge.tasks.registry import get_task
from vlmerge.train.optim import OptimConfig, SpeedOptions, build_optimizer

FAILURES: list[str] = []


def check(name: str, ok: bool, detail: str) -> None:
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)
    if not ok:
        FAILURES.append(name)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float().cpu() - b.float().cpu()).norm() / b.float().cpu().norm())


def numerics(preset: str, batch: int = 4) -> None:
    torch.manual_seed(0)
    model = create_model(preset, "modality_specific", Heads.pretraining()).eval()
    size, cfg = model.config.image_size, model.config
    images = torch.randn(batch, 3, size, size)
    ids = torch.randint(5, cfg.vocab_size, (batch, 24))
    mask = torch.ones_like(ids)
    mask[:, 18:] = 0
    with torch.no_grad():
        ref = [model.encode_image(images), model.encode_text(ids, mask), model.encode_pair(ids, mask, images)]
        gpu = model.cuda()
        args = [(images.cuda(),), (ids.cuda(), mask.cuda()), (ids.cuda(), mask.cuda(), images.cuda())]
        fns: list[Callable[..., torch.Tensor]] = [gpu.encode_image, gpu.encode_text, gpu.encode_pair]
        fp32 = [f(*a) for f, a in zip(fns, args)]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = [f(*a) for f, a in zip(fns, args)]
    for name, r, a, b in zip(("image", "text", "pair"), ref, fp32, bf16):
        check(f"{preset} {name} fp32 cuda vs cpu", rel(a, r) < 1e-4, f"rel err {rel(a, r):.2e}")
        check(f"{preset} {name} bf16 cuda vs cpu", rel(b, r) < 3e-2, f"rel err {rel(b, r):.2e}")


def throughput(batch: int = 32, steps: int = 6) -> None:
    torch.manual_seed(0)
    module = PretrainModule(create_model("base", "shared", Heads.pretraining()), PretrainConfig(100, 0)).cuda()
    optimizer = module.configure_optimizers()["optimizer"]
    ids = torch.randint(5, 30522, (batch, 40), device="cuda")
    masked = torch.rand(batch, 40, device="cuda") < 0.15
    b = {
        "image": torch.randn(batch, 3, 224, 224, device="cuda"),
        "text_ids": ids,
        "text_mask": torch.ones_like(ids),
        "mlm_ids": torch.where(masked, 103, ids),
        "mlm_labels": torch.where(masked, ids, -100),
    }
    rates = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        for i in range(steps + 2):
            if i == 2:
                torch.cuda.synchronize()
                start = time.perf_counter()
            with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = module.losses(b, torch.Generator(device="cuda").manual_seed(i))["loss"]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        torch.cuda.synchronize()
        rates[name] = steps * batch / (time.perf_counter() - start)
        check(f"base {name} step finite", bool(torch.isfinite(loss)), f"loss {loss.item():.3f}")
    print(
        f"base pre-training step, batch {batch}, 224 px: fp32 {rates['fp32']:.1f} samples/s, "
        f"bf16-mixed {rates['bf16']:.1f} samples/s (x{rates['bf16'] / rates['fp32']:.2f}); "
        f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB",
        flush=True,
    )


# Dense bf16 tensor-core peaks in TFLOPS (vendor data sheets, without sparsity), by device-name substring;
# the first match wins, so the more specific names come first.
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM and NVL
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("A10G", 70.0),
    ("L4", 121.0),
)
PEAK_ENV = "VLMERGE_PEAK_TFLOPS"
PAPER_BATCH = 22  # per GPU: 1024 samples over 48 GPUs (the paper's pre-training)
VQA_ANSWERS = 3129  # VQAv2's answer vocabulary in ViLT/VLMo
# Option combinations measured, each adding one option to the one before.
COMBOS: dict[str, SpeedOptions] = {
    "eager": SpeedOptions(attention="explicit", optimizer="foreach"),
    "+sdpa": SpeedOptions(attention="sdpa", optimizer="foreach"),
    "+fused_adamw": SpeedOptions(attention="sdpa", optimizer="fused"),
    "+compile": SpeedOptions(attention="sdpa", optimizer="fused", compile_blocks=True),
}


def peak_tflops(device_name: str) -> float | None:
    """The device's dense bf16 peak: ``VLMERGE_PEAK_TFLOPS`` if set, else :data:`PEAK_TFLOPS`, else None."""
    if os.environ.get(PEAK_ENV):
        return float(os.environ[PEAK_ENV])
    return next((peak for name, peak in PEAK_TFLOPS if name in device_name), None)


@dataclass(frozen=True)
class Bench:
    """Where and how big section 4 runs: the GPU setting, or the CPU smoke test's."""

    device: str
    preset: str
    overrides: dict
    vqa_image_size: int
    vqa_answers: int
    batch: int
    max_batch: int
    dtype: torch.dtype | None
    backend: str
    warmup: int
    steps: int


GPU = Bench(
    "cuda",
    "base",
    {},
    get_task("vqa").settings.image_size,
    VQA_ANSWERS,
    PAPER_BATCH,
    2048,
    torch.bfloat16,
    "inductor",
    3,
    6,
)
# The tiny preset made smaller still, so that the whole table takes seconds on two cores.
SMOKE_MODEL = {"num_layers": 3, "dim": 32, "num_heads": 2, "mlp_dim": 64, "vocab_size": 512, "max_text_len": 12}
SMOKE = Bench("cpu", "tiny", SMOKE_MODEL, 48, 16, 2, 4, None, "eager", 1, 1)


class Step:
    """One training step (forward, backward, AdamW) of the pre-training or the VQA model."""

    def __init__(self, kind: str, bench: Bench, speed: SpeedOptions) -> None:
        torch.manual_seed(0)
        self.kind, self.bench = kind, bench
        if kind == "pretrain":
            model = create_model(bench.preset, "shared", Heads.pretraining(), **bench.overrides)
            self.module: torch.nn.Module = PretrainModule(model, PretrainConfig(100, 0), speed).to(bench.device)
            self.loss: Callable[[dict], torch.Tensor] = lambda b: self.module.losses(b, None)["loss"]  # type: ignore[operator]
        else:
            size = bench.vqa_image_size
            model = create_model(
                bench.preset, "shared", Heads(vqa_answers=bench.vqa_answers), **bench.overrides, image_size=size
            )
            speed.apply(model)
            self.module = model.to(bench.device)
            task = get_task("vqa")
            self.loss = lambda b: task.loss(model, b)["loss"]
        self.model: VLModel = model
        self.optimizer = build_optimizer(model, OptimConfig(), speed.optimizer)

    def batch(self, size: int) -> dict[str, torch.Tensor]:
        cfg, dev = self.model.config, self.bench.device
        ids = torch.randint(5, cfg.vocab_size, (size, cfg.max_text_len), device=dev)
        out = {
            "image": torch.randn(size, 3, cfg.image_size, cfg.image_size, device=dev),
            "text_ids": ids,
            "text_mask": torch.ones_like(ids),
        }
        if self.kind == "pretrain":
            masked = torch.rand(size, cfg.max_text_len, device=dev) < 0.15
            masked[:, 1] = True
            out |= {"mlm_ids": torch.where(masked, 3, ids), "mlm_labels": torch.where(masked, ids, -100)}
        else:
            answers = self.bench.vqa_answers
            out["target"] = torch.zeros(size, answers, device=dev).scatter_(1, ids[:, 1:2] % answers, 1.0)
        return out

    def run(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        dtype = self.bench.dtype
        with torch.autocast(self.bench.device, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = self.loss(batch)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def flops_per_sample(self, size: int) -> float:
        """Model FLOPs of one forward + backward at batch ``size``, per sample (no optimizer step)."""
        batch = self.batch(size)
        counter = FlopCounterMode(display=False)
        with counter:
            dtype = self.bench.dtype
            with torch.autocast(self.bench.device, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = self.loss(batch)
            loss.backward()
        self.optimizer.zero_grad(set_to_none=True)
        return counter.get_total_flops() / size

    def samples_per_s(self, size: int) -> float:
        batch = self.batch(size)
        for _ in range(self.bench.warmup):
            self.run(batch)
        sync(self.bench.device)
        start = time.perf_counter()
        for _ in range(self.bench.steps):
            loss = self.run(batch)
        sync(self.bench.device)
        rate = self.bench.steps * size / (time.perf_counter() - start)
        check(f"{self.kind} batch {size} finite", bool(torch.isfinite(loss)), f"loss {float(loss):.3f}")
        return rate


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def out_of_memory(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e)


def free(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()


def largest_batch(step: Step) -> tuple[int, float | None]:
    """Double the batch from the paper's until a step runs out of memory or reaches ``max_batch``;
    the largest batch that ran and its samples/s (None if none above the paper's ran)."""
    best: tuple[int, float | None] = (step.bench.batch, None)
    size = step.bench.batch * 2
    while size <= step.bench.max_batch:
        try:
            best = (size, step.samples_per_s(size))
        except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
            if not out_of_memory(e):
                raise
            step.optimizer.zero_grad(set_to_none=True)
            free(step.bench.device)
            break
        size *= 2
    return best


def combo_options(combo: str, bench: Bench) -> SpeedOptions:
    """The speed options of ``combo``, blocks compiled with the bench's backend."""
    speed = COMBOS[combo]
    return dataclasses.replace(speed, compile_backend=bench.backend) if speed.compile_blocks else speed


def mfu(bench: Bench, combos: list[str]) -> list[tuple[str, ...]]:
    """Section 4: a row per (step, option combination, batch); printed as a table and returned."""
    name = torch.cuda.get_device_name() if bench.device == "cuda" else "cpu"
    peak = peak_tflops(name)
    print(
        f"MFU against {f'{peak:.0f} TFLOPS dense bf16' if peak else 'n/a (unknown peak; set ' + PEAK_ENV + ')'}"
        f" on {name}, {'bf16 autocast' if bench.dtype else 'fp32'}, {bench.preset} preset",
        flush=True,
    )
    rows: list[tuple[str, ...]] = []
    for kind in ("pretrain", "vqa"):
        flops = Step(kind, bench, COMBOS["+sdpa"]).flops_per_sample(bench.batch)
        for combo in combos:
            torch._dynamo.reset()
            step = Step(kind, bench, combo_options(combo, bench))
            measured = [(bench.batch, step.samples_per_s(bench.batch)), largest_batch(step)]
            for label, (size, rate) in zip(("paper", "max"), measured):
                achieved = None if rate is None else flops * rate / 1e12
                util = "n/a" if achieved is None or peak is None else f"{100 * achieved / peak:.1f}%"
                rows.append(
                    (
                        kind,
                        combo,
                        label,
                        str(size),
                        f"{flops / 1e9:.4g}",
                        "n/a" if rate is None else f"{rate:.1f}",
                        "n/a" if achieved is None else f"{achieved:.4g}",
                        util,
                    )
                )
            del step
            free(bench.device)
    header = ("step", "options", "batch", "size", "GFLOP/sample", "samples/s", "TFLOPS", "MFU")
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |", flush=True)
    return rows


GRAMS_TOLERANCE = 1e-5  # float32 vs float64 products, relative Frobenius difference (TF32 gives ~1e-3)


def grams(device: str, preset: str, overrides: dict, batch: int, rounds: int = 5) -> None:
    """Section 5: the gram hooks' forward against a plain one on ``device`` (fp32 model), as × the plain
    forward's fastest and median time; the float32-product grams checked against the float64 ones."""
    torch.manual_seed(0)
    model = create_model(preset, "modality_specific", **overrides).eval().to(device)
    r = measure_grams(model, batch, rounds, device)
    wall, median = r["seconds"], r["median_seconds"]
    print(
        f"grams on {device}: {preset} MS model, fp32, batch {batch} ({r['tokens_per_batch']} tokens), "
        f"fastest and median of {rounds} rounds",
        flush=True,
    )
    rows = [("variant", "fastest ms", "x plain", "median ms", "x plain")]
    for variant in ("plain", "float32", "float64"):
        label = "plain forward" if variant == "plain" else f"+ grams, {variant} products"
        rows.append(
            (
                label,
                f"{1e3 * wall[variant]:.1f}",
                f"{wall[variant] / wall['plain']:.2f}",
                f"{1e3 * median[variant]:.1f}",
                f"{median[variant] / median['plain']:.2f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |", flush=True)
    fast, ref = r["grams"]["float32"], r["grams"]["float64"]
    seen = [name for name in ref.names if ref.counts[name]]
    worst = max(float((fast.xtx[n] - ref.xtx[n]).norm() / ref.xtx[n].norm()) for n in seen)
    same_counts = all(fast.counts[n] == ref.counts[n] for n in ref.names)
    check(
        "grams float32 vs float64 products",
        bool(seen) and same_counts and worst < GRAMS_TOLERANCE,
        f"{len(seen)} hook points, largest relative difference {worst:.2e} (limit {GRAMS_TOLERANCE:g}), "
        f"counts {'equal' if same_counts else 'differ'}",
    )


def cli(work: Path, name: str, *args: str) -> None:
    start = time.perf_counter()
    log = work / f"{name}.log"
    with log.open("w") as out:
        rc = subprocess.call([sys.executable, "-m", *args], stdout=out, stderr=subprocess.STDOUT)
    tail = log.read_text().strip().splitlines()[-3:]
    check(f"cli {name}", rc == 0, f"rc {rc} in {time.perf_counter() - start:.0f} s; " + " | ".join(tail)[-400:])


def pipeline(work: Path) -> None:
    raw, arrow, tok = work / "raw", work / "arrow", work / "arrow" / "tokenizer"
    cli(work, "synth", "vlmerge.synth", "--out", str(raw), "--size", "small", "--image-size", "48")
    for d in ("coco", "vg", "sbu", "gcc", "nlvr2"):
        cli(work, f"prepare-{d}", "vlmerge.prepare", "--dataset", d, "--raw", str(raw / d), "--out", str(arrow))
    cli(work, "vocab", "vlmerge.vocab", "--arrow", str(arrow), "--out", str(tok), "--vocab-size", "4096")
    common = [
        "--arrow",
        str(arrow),
        "--tokenizer",
        str(tok),
        "--preset",
        "tiny",
        "--steps",
        "60",
        "--batch-size",
        "32",
        "--image-size",
        "48",
        "--precision",
        "auto",
        "--num-workers",
        "2",
    ]
    for strategy in ("ddp", "fsdp"):
        cli(
            work,
            f"pretrain-{strategy}",
            "vlmerge.pretrain",
            *common,
            "--strategy",
            strategy,
            "--out",
            str(work / f"ma-{strategy}.safetensors"),
            "--work-dir",
            str(work / f"w-{strategy}"),
        )
    init = work / "ma-fsdp.safetensors"
    for task in ("nlvr2", "coco"):
        cli(
            work,
            f"finetune-{task}",
            "vlmerge.finetune",
            "--task",
            task,
            "--init",
            str(init),
            "--arrow",
            str(arrow),
            "--tokenizer",
            str(tok),
            "--steps",
            "40",
            "--global-batch",
            "32",
            "--image-size",
            "48",
            "--val-every",
            "20",
            "--out",
            str(work / f"{task}.safetensors"),
            "--work-dir",
            str(work / f"f-{task}"),
        )
        cli(
            work,
            f"evaluate-{task}",
            "vlmerge.evaluate",
            "--task",
            task,
            "--method",
            "ma",
            "--ckpt",
            str(work / f"{task}.safetensors"),
            "--arrow",
            str(arrow),
            "--tokenizer",
            str(tok),
            "--out",
            str(work / f"{task}.json"),
        )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, help="scratch folder of the pipeline section")
    p.add_argument("--skip", default="", help="comma list of numerics,throughput,pipeline,mfu,grams")
    p.add_argument(
        "--options", default=",".join(COMBOS), help=f"comma list of MFU option combinations of {list(COMBOS)}"
    )
    p.add_argument("--max-batch", type=int, help="upper end of the largest-batch search (default: 2048; smoke: 4)")
    p.add_argument("--cpu-smoke", action="store_true", help="sections 4 and 5 alone on the CPU, tiny model")
    a = p.parse_args()
    combos = [c for c in a.options.split(",") if c]
    if unknown := sorted(set(combos) - set(COMBOS)):
        p.error(f"--options: unknown {unknown}; choose from {list(COMBOS)}")
    if a.cpu_smoke:
        bench = SMOKE if a.max_batch is None else dataclasses.replace(SMOKE, max_batch=a.max_batch)
        torch.set_num_threads(min(2, torch.get_num_threads()))
        mfu(bench, combos)
        grams("cpu", SMOKE.preset, SMOKE.overrides, 4)
        print(f"{len(FAILURES)} failure(s): {FAILURES}")
        return 1 if FAILURES else 0
    if a.work is None:
        p.error("--work is required (except with --cpu-smoke)")
    if not torch.cuda.is_available():
        print(
            "no CUDA device: this check needs a GPU (--cpu-smoke runs the MFU and grams tables on the CPU)",
            file=sys.stderr,
        )
        return 2
    print(f"device {torch.cuda.get_device_name()} torch {torch.__version__}", flush=True)
    a.work.mkdir(parents=True, exist_ok=True)
    skip = set(a.skip.split(","))
    if "numerics" not in skip:
        numerics("tiny")
        numerics("base")
    if "throughput" not in skip:
        throughput()
    if "mfu" not in skip:
        bench = GPU if a.max_batch is None else dataclasses.replace(GPU, max_batch=a.max_batch)
        mfu(bench, combos)
    if "grams" not in skip:
        grams("cuda", "base", {}, 32)
    if "pipeline" not in skip:
        pipeline(a.work)
    print(f"{len(FAILURES)} failure(s): {FAILURES}")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    raise SystemExit(main())
