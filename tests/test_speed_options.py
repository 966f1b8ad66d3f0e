"""The training step's speed options, each against its eager reference on CPU: SDPA attention with the
relative-position bias against the explicit softmax, compiled blocks against eager blocks, fused and
foreach AdamW against the per-parameter loop, and a step that reads nothing back to the host."""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any, get_args

import pytest
import torch
import torch.nn.functional as F

from vlmerge.grams.hooks import GramCollector
from vlmerge.model import Heads, Modality, VLModel, create_model, layers
from vlmerge.model.layers import ATTENTION_KERNELS, Attention, AttentionKernel, attention_explicit
from vlmerge.model.model import TEXT_PADDINGS, set_text_padding
from vlmerge.objectives import IGNORE_INDEX, device, mlm_loss, sample_hard_negatives
from vlmerge.pretrain import step as pretrain_step
from vlmerge.pretrain.module import PretrainConfig, PretrainModule
from vlmerge.tasks.registry import get_task
from vlmerge.train.errors import TrainConfigError
from vlmerge.train.optim import (
    OPTIMIZER_IMPLS,
    OptimConfig,
    SpeedOptions,
    build_optimizer,
    loss_scaled,
    optimizer_flags,
)
from vlmerge.train.seeds import Stream
from vlmerge.train.settings import TrainingRecipe

BATCH, TEXT = 4, 6


def pico(heads: Heads = Heads.pretraining(), seed: int = 0) -> VLModel:
    torch.manual_seed(seed)
    return create_model("pico", "modality_specific", heads)


def pretrain_batch(model: VLModel, seed: int = 1) -> dict[str, torch.Tensor]:
    """Random images and texts with padding (the last two tokens of half the texts) and 1-2 masked tokens."""
    g = torch.Generator().manual_seed(seed)
    size, vocab = model.config.image_size, model.config.vocab_size
    ids = torch.randint(5, vocab, (BATCH, TEXT), generator=g)
    mask = torch.ones_like(ids)
    mask[::2, -2:] = 0
    masked = torch.zeros_like(ids, dtype=torch.bool)
    masked[:, 1] = True
    masked[1::2, 2] = True
    return {
        "image": torch.randn(BATCH, 3, size, size, generator=g),
        "text_ids": ids,
        "text_mask": mask,
        "mlm_ids": torch.where(masked, 3, ids),
        "mlm_labels": torch.where(masked, ids, -100),
    }


def losses_and_grads(module: PretrainModule, batch: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    module.model.zero_grad()
    out = module.losses(batch, torch.Generator().manual_seed(7))
    out["loss"].backward()
    grads = {n: p.grad.clone() for n, p in module.model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in out.items()}, grads


def assert_close_runs(a: tuple[dict, dict], b: tuple[dict, dict], rtol: float, atol: float) -> None:
    (out_a, grad_a), (out_b, grad_b) = a, b
    assert out_a.keys() == out_b.keys() and grad_a.keys() == grad_b.keys()
    for name in out_a:
        torch.testing.assert_close(out_a[name], out_b[name], rtol=rtol, atol=atol, msg=name)
    for name in grad_a:
        torch.testing.assert_close(grad_a[name], grad_b[name], rtol=rtol, atol=atol, msg=name)


# ----------------------------------------------------------------------------- (a) attention kernel
def test_sdpa_with_an_additive_bias_equals_the_softmax_written_out() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8, generator=g, dtype=torch.float64) for _ in range(3))
    bias = torch.randn(1, 3, 7, 7, generator=g, dtype=torch.float64)
    bias[..., -2:] = torch.finfo(torch.float64).min  # padded keys, as the model's mask writes them
    naive = torch.empty_like(q)
    for b in range(2):
        for h in range(3):
            logits = q[b, h] @ k[b, h].T / 8**0.5 + bias[0, h]
            naive[b, h] = torch.exp(logits - logits.max(-1, keepdim=True).values) @ v[b, h]
            naive[b, h] /= torch.exp(logits - logits.max(-1, keepdim=True).values).sum(-1, keepdim=True)
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    torch.testing.assert_close(attention_explicit(q, k, v, bias), naive, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sdpa, naive, rtol=1e-12, atol=1e-12)


def test_auto_is_explicit_when_training_off_cuda_and_sdpa_otherwise(monkeypatch) -> None:
    model = pico()
    assert {m.kernel for m in model.modules() if isinstance(m, Attention)} == {"auto"}
    batch = pretrain_batch(model)
    calls: list[str] = []
    sdpa_fn, explicit_fn = F.scaled_dot_product_attention, layers.attention_explicit
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append("sdpa") or sdpa_fn(*a, **k))
    monkeypatch.setattr(layers, "attention_explicit", lambda *a: calls.append("explicit") or explicit_fn(*a))
    args = batch["text_ids"], batch["text_mask"], batch["image"]
    model.encode_pair(*args)  # the learned relative-position bias needs a gradient: explicit
    assert calls and set(calls) == {"explicit"}
    calls.clear()
    with torch.no_grad():  # evaluation and gram collection: sdpa's fused kernel takes the mask
        model.encode_pair(*args)
    assert calls and set(calls) == {"sdpa"}


def test_the_sdpa_and_explicit_kernels_give_the_same_step() -> None:
    model = pico()
    batch = pretrain_batch(model)
    sdpa = losses_and_grads(PretrainModule(model, PretrainConfig(10, 0), SpeedOptions(attention="sdpa")), batch)
    assert {m.kernel for m in model.modules() if isinstance(m, Attention)} == {"sdpa"}
    module = PretrainModule(model, PretrainConfig(10, 0), SpeedOptions(attention="explicit"))
    assert {m.kernel for m in model.modules() if isinstance(m, Attention)} == {"explicit"}
    explicit = losses_and_grads(module, batch)
    assert_close_runs(sdpa, explicit, rtol=1e-4, atol=1e-6)
    assert not torch.equal(sdpa[0]["loss"], torch.zeros(()))  # a real loss, not an empty comparison
    with pytest.raises(TrainConfigError, match="attention kernel 'flash'"):
        SpeedOptions(attention="flash").apply(model)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- (b) compiled blocks
def pair_forward_backward(model: VLModel, batch: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """The image+text encoder (both halves below F, the fused sequence above it), forward and backward."""
    model.zero_grad()
    hidden = model.encode_pair(batch["text_ids"], batch["text_mask"], batch["image"])
    (hidden * torch.linspace(-1, 1, hidden.shape[-1])).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {"hidden": hidden.detach()}, grads


def test_compiled_blocks_give_the_eager_step_and_keep_the_state_dict() -> None:
    eager_model, compiled_model = pico(), pico()
    keys = list(compiled_model.state_dict())
    batch = pretrain_batch(eager_model)
    eager = pair_forward_backward(eager_model, batch)
    torch._dynamo.reset()
    SpeedOptions(compile_blocks=True, compile_backend="aot_eager").apply(compiled_model)
    assert all(block._compiled_call_impl is not None for block in compiled_model.transformer.blocks)
    compiled = pair_forward_backward(compiled_model, batch)
    assert sum(n.startswith("transformer.blocks.") for n in compiled[1]) > 40  # the blocks' gradients compared
    assert_close_runs(eager, compiled, rtol=1e-5, atol=1e-6)
    assert list(compiled_model.state_dict()) == keys  # no _orig_mod. segment: checkpoints read the same
    torch._dynamo.reset()


# ----------------------------------------------------------------------------- (b') text padding
@pytest.mark.parametrize("sharing", ["modality_specific", "shared"])
@pytest.mark.parametrize("drop_path_mode", ["per_modality", "per_sample"])
def test_skipping_pad_rows_gives_the_padded_step(sharing: str, drop_path_mode: str) -> None:
    torch.manual_seed(0)
    # Rate 0.5: stochastic depth drops branches of some samples, so its flags must reach the packed rows.
    model = create_model("pico", sharing, Heads.pretraining(), drop_path=0.5, drop_path_mode=drop_path_mode)
    batch = pretrain_batch(model)
    runs = {}
    for mode in ("compute", "skip"):
        module = PretrainModule(model, PretrainConfig(10, 0), SpeedOptions(text_padding=mode))
        assert model.text_padding == mode
        torch.manual_seed(5)  # the same stochastic-depth and dropout draws in both modes
        runs[mode] = losses_and_grads(module, batch)
    assert_close_runs(runs["compute"], runs["skip"], rtol=1e-5, atol=1e-6)
    assert runs["skip"][0]["loss"] > 0


def test_skipping_pad_rows_runs_the_token_wise_layers_on_real_tokens_only() -> None:
    model = pico()
    batch = pretrain_batch(model)
    rows: list[int] = []
    fc1 = model.transformer.blocks[0].mlp.expert(Modality.L).fc1
    handle = fc1.register_forward_pre_hook(
        lambda module, args: rows.append(args[0].reshape(-1, args[0].shape[-1]).shape[0])
    )
    try:
        for mode in ("compute", "skip"):
            set_text_padding(model, mode)
            model.encode_text(batch["text_ids"], batch["text_mask"])
    finally:
        handle.remove()
    assert rows == [BATCH * TEXT, int(batch["text_mask"].sum())] and rows[1] < rows[0]


def test_auto_skips_padding_where_reads_are_free_and_not_with_compiled_blocks(monkeypatch) -> None:
    model = pico()
    batch = pretrain_batch(model)
    rows: list[int] = []
    fc1 = model.transformer.blocks[0].mlp.expert(Modality.L).fc1
    fc1.register_forward_pre_hook(lambda module, args: rows.append(args[0].reshape(-1, args[0].shape[-1]).shape[0]))
    SpeedOptions().apply(model)
    assert model.text_padding == "auto"
    model.encode_text(batch["text_ids"], batch["text_mask"])
    monkeypatch.setattr(device, "STALLING_DEVICE_TYPES", {"cpu"})  # the CUDA path: no row selection
    model.encode_text(batch["text_ids"], batch["text_mask"])
    assert rows == [int(batch["text_mask"].sum()), BATCH * TEXT]
    with pytest.raises(TrainConfigError, match="text_padding skip"):
        SpeedOptions(compile_blocks=True, compile_backend="aot_eager", text_padding="skip").apply(pico())
    with pytest.raises(TrainConfigError, match="text padding 'drop'"):
        SpeedOptions(text_padding="drop").apply(model)  # type: ignore[arg-type]


def test_gram_collection_sees_the_padded_batch_and_restores_the_mode() -> None:
    model = pico()
    set_text_padding(model, "skip")
    with GramCollector(model):
        assert model.text_padding == "compute"  # the attention hook needs the padded [B, N, D] batch
    assert model.text_padding == "skip"


# ----------------------------------------------------------------------------- (c) AdamW implementations
def train_steps(impl: str, steps: int = 4) -> dict[str, torch.Tensor]:
    """``steps`` AdamW steps of a pico model's parameter groups (decayed and not) on seeded random gradients."""
    model = pico(Heads(mlm=True, itm=True, itc=True, itc_vl=True))
    optimizer = build_optimizer(model, OptimConfig(lr=1e-2, weight_decay=0.1), impl)  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(3)
    for _ in range(steps):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=g)
        optimizer.step()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_fused_and_foreach_adamw_follow_the_per_parameter_loop() -> None:
    reference = train_steps("for_loop")
    start = {n: p.detach() for n, p in pico(Heads(mlm=True, itm=True, itc=True, itc_vl=True)).named_parameters()}
    moved = sum(float((reference[n] - start[n]).abs().max()) for n in start)
    assert moved > 1e-3  # the steps moved the weights: the comparison below is not of untouched tensors
    for impl in ("fused", "foreach"):
        params = train_steps(impl)
        for name, value in reference.items():
            torch.testing.assert_close(params[name], value, rtol=1e-5, atol=1e-6, msg=f"{impl} {name}")


def test_auto_is_fused_on_cuda_and_foreach_elsewhere() -> None:
    assert optimizer_flags("auto", torch.device("cuda")) == {"fused": True}
    assert optimizer_flags("auto", torch.device("cpu")) == {"foreach": True}  # the demo's optimiser, unchanged
    assert optimizer_flags("for_loop", torch.device("cuda")) == {"foreach": False}
    # fp16 AMP: Lightning's scaler unscales (and clips) the gradients itself, which a fused AdamW refuses.
    assert optimizer_flags("auto", torch.device("cuda"), loss_scaled=True) == {"foreach": True}
    module = PretrainModule(pico(), PretrainConfig(10, 0))
    assert not loss_scaled(module)  # no Trainer
    module._trainer = SimpleNamespace(precision="16-mixed")  # type: ignore[assignment]
    assert loss_scaled(module)
    module._trainer = SimpleNamespace(precision="bf16-mixed")  # type: ignore[assignment]
    assert not loss_scaled(module)
    model = pico()
    defaults = build_optimizer(model, OptimConfig()).defaults
    assert (defaults["foreach"], defaults["fused"]) == (True, None)
    with pytest.raises(TrainConfigError, match="choose from"):
        build_optimizer(model, OptimConfig(), "apex")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- (d) no host reads in the step
HOST_READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__")
# On the CPU the step reads values back in three places, where a read costs nothing: the hard-negative
# sampler checks its inputs eagerly, the MLM head keeps only the masked rows, and skipping text padding
# checks that every text's token 0 is real. On CUDA (a device whose reads stall) none reads: the test below
# runs that path on the CPU.
KNOWN_READS = {
    "vlmerge/objectives/itm.py:_check",
    "vlmerge/pretrain/step.py:masked_rows",
    "vlmerge/model/model.py:first_rows",
}


@contextmanager
def host_reads() -> Iterator[list[str]]:
    """Every read of a tensor's value into Python (a device sync on CUDA) inside the block, as the
    ``path:function`` of the project code that made it."""
    originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}
    reads: list[str] = []

    def recording(name: str) -> Any:
        def read(self: torch.Tensor, *args: Any) -> Any:
            frames = [f for f in traceback.extract_stack()[:-1] if "/vlmerge/" in f.filename]
            where = frames[-1] if frames else traceback.extract_stack()[-2]
            reads.append(f"vlmerge/{where.filename.rpartition('/vlmerge/')[2]}:{where.name}")
            return originals[name](self, *args)

        return read

    try:
        for name in HOST_READS:
            setattr(torch.Tensor, name, recording(name))
        yield reads
    finally:
        for name, method in originals.items():
            setattr(torch.Tensor, name, method)


def test_the_guard_sees_a_host_read() -> None:
    sim = torch.randn(3, 3)
    with host_reads() as reads:
        sample_hard_negatives(sim, sim.T, torch.arange(3), torch.Generator().manual_seed(0))
    assert set(reads) == {"vlmerge/objectives/itm.py:_check"}  # the guard finds reads and names their place


def test_the_pretraining_step_reads_nothing_back_and_logs_the_same_values(monkeypatch) -> None:
    model = pico()
    batch = pretrain_batch(model)
    module = PretrainModule(model, PretrainConfig(10, 0))
    logged: dict[str, torch.Tensor] = {}
    monkeypatch.setattr(module, "log", lambda name, value, **kw: logged.__setitem__(name, value))
    torch.manual_seed(5)
    with host_reads() as reads:
        loss = module.training_step(batch, 0)
    assert set(reads) <= KNOWN_READS, reads
    torch.manual_seed(5)
    expected = module.losses(batch, module.step_generator(Stream.ITM, 0, stage=0))
    assert set(logged) == {f"train/{k}" for k in expected}
    for name, value in expected.items():
        assert isinstance(logged[f"train/{name}"], torch.Tensor)
        torch.testing.assert_close(logged[f"train/{name}"], value.detach(), rtol=0, atol=0, msg=name)
    torch.testing.assert_close(loss.detach(), expected["loss"].detach(), rtol=0, atol=0)


def test_on_a_stalling_device_the_step_reads_nothing_and_gives_the_same_losses(monkeypatch) -> None:
    model = pico()
    batch = pretrain_batch(model)
    module = PretrainModule(model, PretrainConfig(10, 0))
    torch.manual_seed(5)
    eager = module.losses(batch, module.step_generator(Stream.ITM, 0, stage=0))
    monkeypatch.setattr(device, "STALLING_DEVICE_TYPES", {"cpu"})
    torch.manual_seed(5)
    with host_reads() as reads:
        stalling = module.losses(batch, module.step_generator(Stream.ITM, 0, stage=0))
    assert reads == []
    assert set(stalling) == set(eager)
    for name, value in eager.items():  # MLM over every position vs the masked rows alone: rounding apart
        torch.testing.assert_close(stalling[name], value, rtol=1e-6, atol=1e-6, msg=name)
    with pytest.raises(RuntimeError, match="similarities contain NaN"):  # the checks run on the device
        sample_hard_negatives(torch.full((3, 3), float("nan")), torch.zeros(3, 3), torch.arange(3))


def test_the_mlm_head_on_masked_rows_equals_the_head_on_every_position() -> None:
    model = pico()
    batch = pretrain_batch(model)
    labels = batch["mlm_labels"]
    assert (labels != IGNORE_INDEX).any() and (labels == IGNORE_INDEX).any()
    hidden = model.encode_pair(batch["mlm_ids"], batch["text_mask"], batch["image"])[:, : labels.shape[1]]
    full = mlm_loss(model.mlm_score(hidden), labels)
    rows, row_labels = pretrain_step.masked_rows(hidden, labels)
    assert rows.shape[1] == int((labels != IGNORE_INDEX).sum())
    picked = mlm_loss(model.mlm_score(rows), row_labels)
    torch.testing.assert_close(picked.loss, full.loss, rtol=1e-6, atol=0)
    assert (picked.accuracy, picked.count) == (full.accuracy, full.count)
    none = torch.full_like(labels, IGNORE_INDEX)  # nothing masked: one ignored row, an exact 0 with a gradient
    rows, row_labels = pretrain_step.masked_rows(hidden, none)
    empty = mlm_loss(model.mlm_score(rows), row_labels)
    assert rows.shape[1] == 1 and float(empty.loss) == 0.0 and empty.loss.requires_grad


def test_single_rank_text_gather_is_the_batch_itself() -> None:
    ids, mask = torch.randint(5, 50, (3, 5)), torch.ones(3, 5, dtype=torch.long)
    out = pretrain_step.gather_texts(ids, mask)
    assert all(a is b for a, b in zip(out, (ids, mask, ids, mask)))


def test_the_vqa_step_reads_nothing_back() -> None:
    model = pico(Heads(vqa_answers=5))
    batch = pretrain_batch(model)
    batch["target"] = torch.zeros(BATCH, 5).index_fill_(1, torch.tensor([2]), 0.6)
    with host_reads() as reads:
        out = get_task("vqa").loss(model, batch)
    assert reads == []
    assert torch.isfinite(out["loss"]).all()


# ----------------------------------------------------------------------------- the recipe settings
def test_the_recipe_offers_the_library_choices_with_today_as_default() -> None:
    fields = TrainingRecipe.model_fields
    assert get_args(fields["attention_kernel"].annotation) == ATTENTION_KERNELS == get_args(AttentionKernel)
    assert get_args(fields["optimizer_impl"].annotation) == OPTIMIZER_IMPLS
    assert set(get_args(fields["text_padding"].annotation)) == set(TEXT_PADDINGS)
    defaults = SpeedOptions()
    names = ("attention_kernel", "compile_blocks", "optimizer_impl", "text_padding")
    assert tuple(fields[k].default for k in names) == (
        defaults.attention,
        defaults.compile_blocks,
        defaults.optimizer,
        defaults.text_padding,
    )
    assert all(fields[k].description for k in names)
    chosen = TrainingRecipe(
        attention_kernel="explicit", compile_blocks=True, optimizer_impl="fused", text_padding="compute"
    )
    assert SpeedOptions.from_recipe(chosen) == SpeedOptions("explicit", True, "inductor", "fused", "compute")
    assert SpeedOptions.from_recipe(TrainingRecipe()) == SpeedOptions()
