"""GPU check of the training paths the CPU test suite cannot reach: CUDA, bf16 autocast, SDPA, FSDP.

Run on a machine with one CUDA GPU (not collected by pytest):

    python tests/gpu/check.py --work /tmp/vlmerge-gpu

1. Numerics: the tiny and base models on CUDA (fp32 and bf16 autocast) against fp32 on CPU,
   image, text and pair encoders; relative errors printed, fp32 held to 1e-4, bf16 to 3e-2.
2. Throughput: base preset pre-training step (MLM + ITC + ITM) on CUDA, fp32 vs bf16-mixed,
   samples/s of each in the same run.
3. The stage CLIs end to end on the GPU over a freshly generated synthetic corpus: pre-training
   with ``--strategy ddp`` and ``--strategy fsdp`` (bf16-mixed), fine-tuning and evaluation.
Exit status 1 if any check fails.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

from vlmerge.model import Heads, create_model
from vlmerge.pretrain.module import PretrainConfig, PretrainModule

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
        fns = [gpu.encode_image, gpu.encode_text, gpu.encode_pair]
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
    b = {"image": torch.randn(batch, 3, 224, 224, device="cuda"), "text_ids": ids,
         "text_mask": torch.ones_like(ids), "mlm_ids": torch.where(masked, 103, ids),
         "mlm_labels": torch.where(masked, ids, -100)}
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
    print(f"base pre-training step, batch {batch}, 224 px: fp32 {rates['fp32']:.1f} samples/s, "
          f"bf16-mixed {rates['bf16']:.1f} samples/s (x{rates['bf16'] / rates['fp32']:.2f}); "
          f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB", flush=True)


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
    common = ["--arrow", str(arrow), "--tokenizer", str(tok), "--preset", "tiny", "--steps", "60",
              "--batch-size", "32", "--image-size", "48", "--precision", "auto", "--num-workers", "2"]
    for strategy in ("ddp", "fsdp"):
        cli(work, f"pretrain-{strategy}", "vlmerge.pretrain", *common, "--strategy", strategy,
            "--out", str(work / f"ma-{strategy}.safetensors"), "--work-dir", str(work / f"w-{strategy}"))
    init = work / "ma-fsdp.safetensors"
    for task in ("nlvr2", "coco"):
        cli(work, f"finetune-{task}", "vlmerge.finetune", "--task", task, "--init", str(init), "--arrow",
            str(arrow), "--tokenizer", str(tok), "--steps", "40", "--global-batch", "32", "--image-size", "48",
            "--val-every", "20", "--out", str(work / f"{task}.safetensors"), "--work-dir", str(work / f"f-{task}"))
        cli(work, f"evaluate-{task}", "vlmerge.evaluate", "--task", task, "--method", "ma", "--ckpt",
            str(work / f"{task}.safetensors"), "--arrow", str(arrow), "--tokenizer", str(tok),
            "--out", str(work / f"{task}.json"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--skip", default="", help="comma list of numerics,throughput,pipeline")
    a = p.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: this check needs a GPU", file=sys.stderr)
        return 2
    print(f"device {torch.cuda.get_device_name()} torch {torch.__version__}", flush=True)
    a.work.mkdir(parents=True, exist_ok=True)
    skip = set(a.skip.split(","))
    if "numerics" not in skip:
        numerics("tiny")
        numerics("base")
    if "throughput" not in skip:
        throughput()
    if "pipeline" not in skip:
        pipeline(a.work)
    print(f"{len(FAILURES)} failure(s): {FAILURES}")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    raise SystemExit(main())
