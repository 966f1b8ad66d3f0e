"""Pre-training speed: Lightning's overhead against a plain loop, and the base model's cost on CPU.

1. The tiny preset through ``PretrainModule`` + the project's Trainer against a plain PyTorch loop
   that runs the same ``PretrainModule.losses``, backward, AdamW and LR schedule over the same model
   initialisation and the same pre-built batches (data loading is excluded from both).
2. The base preset (12 layers, 768 wide, 224 px): forward + backward of one full pre-training step
   (MLM + both ITC terms + ITM with hard negatives) per sample, batch 2, and the AdamW step.
3. How the model runs padded text (tiny preset, batch 32, texts of 6-40 tokens padded to 40, one thread):
   a pre-training step (``losses`` + backward) with ``text_padding`` compute against skip, and an
   image+text forward + backward read through token 0 with ``first_only`` against the whole sequence.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, cast

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from vlmerge.model import Heads, VLModel, create_model
from vlmerge.model.model import TextPadding, set_text_padding
from vlmerge.pretrain.module import PretrainConfig, PretrainModule
from vlmerge.train.seeds import Stream
from vlmerge.train.trainer import TrainerConfig, build_trainer


def random_batches(count: int, batch: int, image_size: int, text_len: int, vocab: int) -> list[dict[str, Any]]:
    """Pre-training batches of random pixels and ids (15 % of tokens masked for MLM), seeded."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(count):
        ids = torch.randint(5, vocab, (batch, text_len), generator=g)
        masked = torch.rand(batch, text_len, generator=g) < 0.15
        out.append(
            {
                "image": torch.randn(batch, 3, image_size, image_size, generator=g),
                "text_ids": ids,
                "text_mask": torch.ones_like(ids),
                "mlm_ids": torch.where(masked, 4, ids),
                "mlm_labels": torch.where(masked, ids, -100),
            }
        )
    return out


def _module(preset: str, steps: int, **overrides: Any) -> PretrainModule:
    torch.manual_seed(0)
    return PretrainModule(create_model(preset, "shared", Heads.pretraining(), **overrides), PretrainConfig(steps, 0))


class _Clock(pl.Callback):
    """Wall time from the start of batch ``skip`` to the end of training."""

    def __init__(self, skip: int) -> None:
        self.skip, self.start, self.end = skip, 0.0, 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any, idx: int) -> None:
        if idx == self.skip:
            self.start = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.end = time.perf_counter()


def lightning_seconds(batches: list[dict[str, Any]], skip: int) -> float:
    clock = _Clock(skip)
    with tempfile.TemporaryDirectory(prefix="vlmerge-bench-") as work:
        trainer = build_trainer(
            TrainerConfig(Path(work), max_steps=len(batches), ckpt_every=10 * len(batches), log_every=10)
        )
        trainer.callbacks.append(clock)  # type: ignore[attr-defined]  # set by Lightning, not declared on Trainer
        # A list is a map-style dataset to DataLoader; torch's type asks for a Dataset subclass.
        trainer.fit(
            _module("tiny", len(batches)), train_dataloaders=DataLoader(cast(Dataset, batches), batch_size=None)
        )
    return clock.end - clock.start


def plain_seconds(batches: list[dict[str, Any]], skip: int) -> float:
    module = _module("tiny", len(batches))
    module.train()
    # Lightning types the scheduler entry as a union of forms; ours is always {"scheduler": LambdaLR, ...}.
    configured = cast(dict[str, Any], module.configure_optimizers())
    optimizer, schedule = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    start = 0.0
    for i, batch in enumerate(batches):
        if i == skip:
            start = time.perf_counter()
        module.on_train_batch_start(batch, i)  # the same per-batch seeding
        loss = module.losses(batch, module.step_generator(Stream.ITM, i, stage=0))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return time.perf_counter() - start


def base_step_seconds(batch: int = 2, steps: int = 2) -> tuple[float, float]:
    """(forward + backward seconds, AdamW step seconds) per step of the base preset at 224 px."""
    module = _module("base", steps + 1)
    module.train()
    optimizer = module.configure_optimizers()["optimizer"]
    batches = random_batches(steps + 1, batch, 224, 40, module.model.config.vocab_size)
    fwd_bwd = opt = 0.0
    for i, b in enumerate(batches):
        t0 = time.perf_counter()
        module.losses(b, torch.Generator().manual_seed(i))["loss"].backward()
        t1 = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad()
        t2 = time.perf_counter()
        if i > 0:  # the first step allocates optimizer state and warms caches
            fwd_bwd, opt = fwd_bwd + t1 - t0, opt + t2 - t1
    return fwd_bwd / steps, opt / steps


def padded_batch(model: VLModel, batch: int = 32, text_len: int = 40, seed: int = 1) -> dict[str, torch.Tensor]:
    """One pre-training batch whose texts have 6 to ``text_len`` real tokens (about 55 % real), seeded."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, model.config.vocab_size, (batch, text_len), generator=g)
    lengths = torch.randint(6, text_len + 1, (batch,), generator=g)
    mask = (torch.arange(text_len)[None] < lengths[:, None]).long()
    masked = (torch.rand(batch, text_len, generator=g) < 0.25) & mask.bool()
    size = model.config.image_size
    return {
        "image": torch.randn(batch, 3, size, size, generator=g),
        "text_ids": ids * mask,
        "text_mask": mask,
        "mlm_ids": torch.where(masked, 3, ids * mask),
        "mlm_labels": torch.where(masked, ids, -100),
    }


def _best(step: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return min(times)


def padding_rows(repeats: int = 5, rounds: int = 3) -> dict[str, float]:
    """Seconds of a tiny pre-training step per ``text_padding`` mode, and of an image+text forward +
    backward through token 0 with and without ``first_only`` (fastest of alternating rounds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        module = _module("tiny", 10)
        module.train()
        model, batch = module.model, padded_batch(module.model)

        def step(mode: TextPadding) -> None:
            set_text_padding(model, mode)
            model.zero_grad()
            module.losses(batch, torch.Generator().manual_seed(7))["loss"].backward()

        def pair(first_only: bool) -> None:
            set_text_padding(model, "compute")
            model.zero_grad()
            hidden = model.encode_pair(batch["text_ids"], batch["text_mask"], batch["image"], first_only=first_only)
            model.pooler(hidden).sum().backward()

        best: dict[str, float] = {}
        for _ in range(rounds):
            for name, call in (
                ("step_compute_s", lambda: step("compute")),
                ("step_skip_s", lambda: step("skip")),
                ("pair_whole_s", lambda: pair(False)),
                ("pair_first_only_s", lambda: pair(True)),
            ):
                best[name] = min(best.get(name, float("inf")), _best(call, repeats))
        best["real_token_share"] = float(batch["text_mask"].float().mean())
        return best
    finally:
        torch.set_num_threads(threads)


def run(steps: int = 40, skip: int = 5, batch: int = 32, rounds: int = 2) -> dict[str, float]:
    batches = random_batches(steps, batch, 48, 24, 4096)
    timed = (steps - skip) * batch
    # Interleaved rounds, best of each: the machine is shared, so the fastest run is the least disturbed.
    light, plain = [], []
    for _ in range(rounds):
        light.append(timed / lightning_seconds(batches, skip))
        plain.append(timed / plain_seconds(batches, skip))
    rows = {"lightning_samples_per_s": max(light), "plain_samples_per_s": max(plain)}
    rows["lightning_vs_plain"] = rows["lightning_samples_per_s"] / rows["plain_samples_per_s"]
    fwd_bwd, opt = base_step_seconds()
    rows |= {"base_fwd_bwd_s_per_sample": fwd_bwd / 2, "base_adamw_s_per_step": opt}
    padding = padding_rows()
    rows |= padding
    print(
        f"\n## pretrain: tiny preset, batch {batch}, {steps - skip} timed steps, best of {rounds}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"{'loop':>10} {'samples/s':>10} {'all rounds':>20}")
    print(f"{'lightning':>10} {rows['lightning_samples_per_s']:>10.1f} {' '.join(f'{x:.1f}' for x in light):>20}")
    print(f"{'plain':>10} {rows['plain_samples_per_s']:>10.1f} {' '.join(f'{x:.1f}' for x in plain):>20}")
    print(f"Lightning / plain throughput: {rows['lightning_vs_plain']:.3f}")
    print("\n## pretrain: base preset (MA), 224 px, batch 2, MLM + ITC + ITM")
    print(
        f"forward+backward {rows['base_fwd_bwd_s_per_sample']:.2f} s/sample; AdamW step "
        f"{rows['base_adamw_s_per_step']:.2f} s"
    )
    share = padding["real_token_share"]
    print(f"\n## pretrain: padded text, tiny preset, batch 32, {share:.0%} real text tokens, 1 thread, fastest rounds")
    print(f"{'':>34} {'s':>7} {'× baseline':>11}")
    print(f"{'step, text_padding compute':>34} {padding['step_compute_s']:>7.3f} {1:>11.2f}")
    ratio = padding["step_skip_s"] / padding["step_compute_s"]
    print(f"{'step, text_padding skip':>34} {padding['step_skip_s']:>7.3f} {ratio:>11.2f}")
    print(f"{'image+text to token 0, whole':>34} {padding['pair_whole_s']:>7.3f} {1:>11.2f}")
    ratio = padding["pair_first_only_s"] / padding["pair_whole_s"]
    print(f"{'image+text to token 0, first_only':>34} {padding['pair_first_only_s']:>7.3f} {ratio:>11.2f}")
    return rows
