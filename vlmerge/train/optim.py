"""AdamW with weight decay by parameter kind, per-prefix LR multipliers, warm-up + linear decay (docs/objectives.md).

Decay applies to the weight matrices of Linear, Conv and Embedding modules only. Everything else —
biases, every LayerNorm (per-expert ones included), ``q_bias``/``v_bias``, the relative position
table, the CLS token, the layer scales ``gamma_*`` and the logit scales — is not decayed. The choice
is made from the module that owns the parameter, not from its name: **upstream quirk** — matching
name substrings missed the per-expert LayerNorms (``norm1.v.weight``), which were then decayed.

``OptimConfig.decay_norm_and_scale`` reproduces that upstream rule instead (vilt_utils.py
``set_schedule``): every parameter is decayed unless its name contains one of
:data:`UPSTREAM_NO_DECAY`, so ``gamma_*``, the CLS token, the logit scales, the per-expert LayerNorm
weights and a head's LayerNorm held by index (``nlvr2_classifier.1.weight``) are decayed, while any
``*bias*`` (``q_bias``, the relative position bias table) is not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from vlmerge.model.layers import AttentionKernel, set_attention_kernel
from vlmerge.model.model import TextPadding, set_text_padding
from vlmerge.model.transformer import compile_blocks
from vlmerge.train.errors import TrainConfigError
from vlmerge.train.settings import TrainingRecipe

# AdamW's implementation: auto is fused on CUDA and foreach elsewhere; fused, foreach and for_loop force one.
OptimizerImpl = Literal["auto", "fused", "foreach", "for_loop"]
OPTIMIZER_IMPLS: tuple[OptimizerImpl, ...] = ("auto", "fused", "foreach", "for_loop")

DECAYED_MODULES = (nn.Linear, nn.modules.conv._ConvNd, nn.Embedding)
# Name segments that wrappers (FSDP, activation checkpointing) insert between a model's modules.
_WRAPPER_SEGMENTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
# Upstream's exemptions from weight decay: name substrings (vilt_utils.py, ``no_decay``).
UPSTREAM_NO_DECAY = (
    "bias",
    "LayerNorm.bias",
    "LayerNorm.weight",
    "norm.bias",
    "norm.weight",
    "norm1.bias",
    "norm1.weight",
    "norm2.bias",
    "norm2.weight",
)


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 2e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    lr_multipliers: tuple[tuple[str, float], ...] = ()  # (module prefix, factor), e.g. ("vqa_classifier", 10)
    # True: decay everything but names containing UPSTREAM_NO_DECAY (upstream's rule); False: by module kind.
    decay_norm_and_scale: bool = False


def _clean(name: str) -> str:
    for segment in _WRAPPER_SEGMENTS:
        name = name.replace(segment, "")
    return name


def _multiplier(name: str, multipliers: Mapping[str, float]) -> tuple[str, float]:
    """The longest prefix of ``multipliers`` that owns ``name`` (whole dotted segments), or ("", 1)."""
    owners = [p for p in multipliers if name == p or name.startswith(p + ".")]
    if not owners:
        return "", 1.0
    prefix = max(owners, key=len)
    return prefix, multipliers[prefix]


def parameter_groups(model: nn.Module, config: OptimConfig) -> list[dict]:
    """Each trainable parameter in exactly one group: {"params", "names", "lr", "weight_decay", "name"}.

    Groups are keyed by (decayed?, multiplier prefix) and listed in first-seen module order.
    """
    multipliers = dict(config.lr_multipliers)
    groups: dict[tuple[bool, str], dict] = {}
    seen: set[int] = set()
    used_prefixes: set[str] = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            name = _clean(f"{module_name}.{param_name}" if module_name else param_name)
            if config.decay_norm_and_scale:
                decay = not any(pattern in name for pattern in UPSTREAM_NO_DECAY)
            else:
                decay = isinstance(module, DECAYED_MODULES) and param_name == "weight"
            prefix, factor = _multiplier(name, multipliers)
            used_prefixes.add(prefix)
            group = groups.setdefault(
                (decay, prefix),
                {
                    "params": [],
                    "names": [],
                    "lr": config.lr * factor,
                    "weight_decay": config.weight_decay if decay else 0.0,
                    "name": ("decay" if decay else "no_decay") + (f"/{prefix}" if prefix else ""),
                },
            )
            group["params"].append(param)
            group["names"].append(name)
    unused = sorted(set(multipliers) - used_prefixes)
    if unused:
        raise TrainConfigError(f"learning-rate multiplier prefix(es) {unused} match no trainable parameter")
    return list(groups.values())


@dataclass(frozen=True)
class SpeedOptions:
    """How a training step runs, not what it computes (equal to the eager reference within float tolerance,
    ``tests/test_speed_options.py``); none of them enters a run's identity or a checkpoint.

    ``attention``: :data:`~vlmerge.model.layers.AttentionKernel`; ``compile_blocks``: ``torch.compile`` of
    each transformer block with ``compile_backend``; ``optimizer``: AdamW's :data:`OptimizerImpl`;
    ``text_padding``: :data:`~vlmerge.model.model.TextPadding`.
    """

    attention: AttentionKernel = "auto"
    compile_blocks: bool = False
    compile_backend: str = "inductor"
    optimizer: OptimizerImpl = "auto"
    text_padding: TextPadding = "auto"

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZER_IMPLS:
            raise TrainConfigError(f"optimizer implementation {self.optimizer!r}: choose from {OPTIMIZER_IMPLS}")

    @classmethod
    def from_recipe(cls, recipe: TrainingRecipe) -> SpeedOptions:
        """The options a stage's settings choose (``attention_kernel``, ``compile_blocks``, ``text_padding``,
        ``optimizer_impl``)."""
        return cls(
            attention=recipe.attention_kernel,
            compile_blocks=recipe.compile_blocks,
            text_padding=recipe.text_padding,
            optimizer=recipe.optimizer_impl,
        )

    def apply(self, model: nn.Module) -> None:
        """Set the attention kernel of every attention layer of ``model``, how it treats text padding (``auto``
        is ``compute`` with compiled blocks) and compile its transformer blocks (``model.transformer.blocks``)
        when asked; in place."""
        padding = self.text_padding
        if self.compile_blocks and padding != "compute":
            if padding == "skip":
                raise TrainConfigError(
                    "text_padding skip runs the blocks' token-wise layers outside their compiled forward: "
                    "choose compute (or auto) with compile_blocks"
                )
            padding = "compute"  # auto: compiled blocks see the padded batch, one shape per text length
        try:
            set_attention_kernel(model, self.attention)
            set_text_padding(model, padding)
        except ValueError as e:
            raise TrainConfigError(str(e)) from None
        if self.compile_blocks:
            compile_blocks(model.transformer.blocks, backend=self.compile_backend)  # type: ignore[union-attr,arg-type]


def loss_scaled(module: nn.Module) -> bool:
    """Whether ``module`` (a LightningModule) trains under a Trainer with fp16 AMP's loss scaler."""
    trainer = getattr(module, "_trainer", None)
    return trainer is not None and str(trainer.precision) == "16-mixed"


def optimizer_flags(impl: OptimizerImpl, device: torch.device, loss_scaled: bool = False) -> dict[str, bool]:
    """AdamW's ``fused``/``foreach`` keywords for ``impl`` with parameters on ``device``.

    auto: fused on CUDA (one kernel for every parameter) unless the loss is scaled (fp16 AMP: Lightning's
    scaler cannot unscale, hence clip, the gradients of an optimiser that unscales them itself); foreach
    otherwise, since PyTorch picks the multi-tensor implementation by default only on CUDA, and on CPU the
    per-parameter loop cost 0.18 s against 0.009 s per step for the tiny preset.
    """
    if impl == "auto":
        impl = "fused" if device.type == "cuda" and not loss_scaled else "foreach"
    if impl == "fused":
        return {"fused": True}
    return {"foreach": impl == "foreach"}


def build_optimizer(
    model: nn.Module, config: OptimConfig, impl: OptimizerImpl = "auto", loss_scaled: bool = False
) -> torch.optim.AdamW:
    """AdamW over :func:`parameter_groups` of ``model``, implemented as ``impl`` (:func:`optimizer_flags`,
    for the device of the model's first parameter; ``loss_scaled``: the run uses fp16 AMP's loss scaler)."""
    if impl not in OPTIMIZER_IMPLS:
        raise TrainConfigError(f"optimizer implementation {impl!r}: choose from {OPTIMIZER_IMPLS}")
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    return torch.optim.AdamW(
        parameter_groups(model, config),
        lr=config.lr,
        betas=config.betas,
        eps=config.eps,
        **optimizer_flags(impl, device, loss_scaled),
    )


def warmup_linear_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR factor after ``step`` optimizer steps: step/warmup up to 1, then linear to 0 at ``total_steps``."""
    if step < warmup_steps:
        return step / warmup_steps
    if step >= total_steps:
        return 0.0
    return (total_steps - step) / (total_steps - warmup_steps)


def warmup_linear_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> LambdaLR:
    """LambdaLR of :func:`warmup_linear_factor`, stepped once per optimizer step (ViLT/VLMo's schedule:
    transformers' polynomial decay with power 1 and end LR 0)."""
    if warmup_steps < 0 or total_steps < 1 or warmup_steps > total_steps:
        raise TrainConfigError(f"need 0 <= warmup ({warmup_steps}) <= total steps ({total_steps}) and total >= 1")
    return LambdaLR(optimizer, lambda step: warmup_linear_factor(step, warmup_steps, total_steps))
