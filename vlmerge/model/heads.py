"""Output heads on top of the backbone, one module per head, named as in vl-merging.

Which heads a model carries is a :class:`Heads` value, so a checkpoint holds (and its sidecar
records) exactly the heads that were trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from vlmerge.model.errors import ModelConfigError


@dataclass(frozen=True)
class Heads:
    """Heads present besides the pooler. ``vqa_answers`` = 0 means no VQA head."""

    mlm: bool = False
    itm: bool = False
    itc: bool = False  # itc_text_proj, itc_image_proj, logit_scale
    itc_vl: bool = False  # itc_vl_text_proj, itc_vl_image_proj, logit_vl_scale
    vqa_answers: int = 0
    nlvr2: bool = False

    @classmethod
    def pretraining(cls) -> Heads:
        """MLM + ITM + both contrastive pairs (docs/objectives.md)."""
        return cls(mlm=True, itm=True, itc=True, itc_vl=True)


class Pooler(nn.Module):
    """tanh(Linear(token 0)), BERT's pooler."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [B, N, D] → [B, D]."""
        return torch.tanh(self.dense(hidden[:, 0]))


class MLMHead(nn.Module):
    """dense → GELU → LayerNorm(1e-12) → vocabulary logits; decoder untied, with its own bias."""

    def __init__(self, dim: int, vocab_size: int) -> None:
        super().__init__()
        self.transform = nn.Sequential()
        self.transform.add_module("dense", nn.Linear(dim, dim))
        self.transform.add_module("act", nn.GELU())
        self.transform.add_module("LayerNorm", nn.LayerNorm(dim, eps=1e-12))
        self.decoder = nn.Linear(dim, vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [..., D] → [..., vocab]."""
        return self.decoder(self.transform(hidden)) + self.bias


class ITMHead(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, 2)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """pooled: [B, D] → match / no-match logits [B, 2]."""
        return self.fc(pooled)


class ContrastiveProjection(nn.Module):
    """Bias-free D → D projection of a [CLS] state (upstream ``IFMHead``); callers L2-normalise."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, dim, bias=False)

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        return self.fc(cls)


def classifier(in_dim: int, hidden: int, out: int) -> nn.Sequential:
    """Linear → LayerNorm → GELU → Linear (ViLT's VQA and NLVR2 classifiers; keys ``0``, ``1``, ``3``)."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, out))


def present_heads(model: nn.Module) -> Heads:
    """The heads ``model`` carries, read from its attributes."""
    vqa = getattr(model, "vqa_classifier", None)
    return Heads(
        mlm=hasattr(model, "mlm_score"),
        itm=hasattr(model, "itm_score"),
        itc=hasattr(model, "itc_text_proj"),
        itc_vl=hasattr(model, "itc_vl_text_proj"),
        vqa_answers=vqa[-1].out_features if vqa is not None else 0,
        nlvr2=hasattr(model, "nlvr2_classifier"),
    )


def missing_heads(wanted: Heads, have: Heads, dim: int, vocab_size: int) -> dict[str, nn.Module | nn.Parameter]:
    """Attribute name → new, uninitialised module (or temperature) for each head in ``wanted`` not in ``have``."""
    if wanted.vqa_answers and have.vqa_answers not in (0, wanted.vqa_answers):
        raise ModelConfigError(f"model has a VQA head of {have.vqa_answers} answers, not {wanted.vqa_answers}")
    new: dict[str, nn.Module | nn.Parameter] = {}
    if wanted.mlm and not have.mlm:
        new["mlm_score"] = MLMHead(dim, vocab_size)
    if wanted.itm and not have.itm:
        new["itm_score"] = ITMHead(dim)
    for want, present, prefix, scale in (
        (wanted.itc, have.itc, "itc", "logit_scale"),
        (wanted.itc_vl, have.itc_vl, "itc_vl", "logit_vl_scale"),
    ):
        if want and not present:
            new[f"{prefix}_text_proj"] = ContrastiveProjection(dim)
            new[f"{prefix}_image_proj"] = ContrastiveProjection(dim)
            # CLIP's initial temperature 0.07; shape [1], not a scalar: FSDP refuses 0-d parameters.
            new[scale] = nn.Parameter(torch.full((1,), math.log(1 / 0.07)))
    if wanted.vqa_answers and not have.vqa_answers:
        new["vqa_classifier"] = classifier(dim, 2 * dim, wanted.vqa_answers)
    if wanted.nlvr2 and not have.nlvr2:
        new["nlvr2_classifier"] = classifier(2 * dim, 2 * dim, 2)
    return new
