"""Settings every training stage shares (pre-training and fine-tuning): one definition, one default each.

Pydantic only, no torch: the workflow validates them when the DAG is built. The stages' own settings
(:mod:`vlmerge.pretrain.config`, :mod:`vlmerge.finetune.config`) extend :class:`TrainingRecipe`, and their
one-run settings add :class:`Geometry`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Literal

from pydantic import Field

from vlmerge.runtime.settings import Settings


class TrainingRecipe(Settings):
    """Optimiser, precision, data loading and logging of a training run."""

    seed: int = Field(0, ge=0, description="seed of fresh weights, the data order, masks and dropout")
    augment: bool = Field(
        True,
        description="random crop, flip and RandAugment of training images "
        "(false: plain resize, for captions a crop or flip would falsify)",
    )
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay of the weight matrices")
    grad_clip: float | None = Field(None, gt=0, description="clip the gradient norm to this value (null: no clipping)")
    precision: Literal["auto", "32", "bf16", "16"] = Field(
        "auto",
        description="auto: bf16 on CUDA, 32 on CPU; 16: fp16 AMP with a loss scaler and attention logits in "
        "fp32, as upstream (CUDA only)",
    )
    strategy: Literal["ddp", "fsdp"] = Field("ddp", description="data parallel, or sharded data parallel (CUDA)")
    num_workers: int = Field(2, ge=0, description="data loading processes per device")
    val_batches: int = Field(0, ge=0, description="batches per validation (and side) (0: the whole split)")
    log_every: int = Field(50, ge=1, description="steps between logged training metrics")
    # How the step runs, not what it computes: each is checked against its eager reference in the tests.
    attention_kernel: Literal["auto", "sdpa", "explicit"] = Field(
        "auto",
        description="attention: sdpa (scaled_dot_product_attention with the relative-position bias as an additive "
        "float mask: a fused kernel on CUDA), explicit (softmax of q.k + bias written out) or auto (sdpa, but "
        "explicit when training off CUDA, where sdpa cannot fuse a mask that needs a gradient)",
    )
    compile_blocks: bool = Field(
        False, description="torch.compile each transformer block (inductor); weights and checkpoints unchanged"
    )
    text_padding: Literal["auto", "skip", "compute"] = Field(
        "auto",
        description="text pad tokens: skip (norms, projections and MLP on the real tokens alone; the attention "
        "product stays padded), compute (every position of the padded batch) or auto (skip off CUDA, compute on "
        "CUDA, where skipping reads the mask back to the host each forward, and with compile_blocks)",
    )
    optimizer_impl: Literal["auto", "fused", "foreach", "for_loop"] = Field(
        "auto",
        description="AdamW implementation: auto (fused on CUDA unless precision 16, whose loss scaler clips "
        "unscaled gradients; foreach otherwise), fused, foreach or for_loop",
    )


class Geometry(Settings):
    """Processes of one run (the rule passes them from its resources, which a profile may set)."""

    devices: int = Field(1, ge=1, description="devices (processes) per node")
    nodes: int = Field(1, ge=1, description="nodes, each running `devices` processes")


def add_run_arguments(parser: argparse.ArgumentParser, out: str, work_dir: str) -> None:
    """The paths and switches every training stage takes besides its settings: the tables and tokenizer it
    reads, the weights it writes (``out``) and where it keeps resumable state (``work_dir``)."""
    parser.add_argument("--arrow", required=True, type=Path, help="folder of the ViLT arrow tables")
    parser.add_argument("--tokenizer", required=True, type=Path, help="tokenizer folder (or vocab.txt)")
    parser.add_argument("--out", required=True, type=Path, help=out)
    parser.add_argument("--work-dir", required=True, type=Path, help=work_dir)
    parser.add_argument(
        "--restart-stale-work-dir",
        action="store_true",
        help="move a work directory of another run aside and start afresh (default: an error)",
    )
    parser.add_argument("--verbose", action="store_true")
