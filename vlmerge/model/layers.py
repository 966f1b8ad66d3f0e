"""Block sub-modules and input embeddings: BEiT attention, GELU MLP, LayerNorm, stochastic depth, an
expert set, BERT-style text embeddings and image patches; and the from-scratch initialisation.

Every block sub-module answers ``expert(modality)``: a shared one returns itself, an :class:`Experts`
set returns the modality's copy, so a block's forward reads the same for every sharing layout.
Neither embedding adds an absolute position: positions enter only through the relative position
bias (VLMo). Module and parameter names follow BERT/vl-merging so upstream weights import as is.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from vlmerge.model.layout import Modality


class Shared:
    """Mixin: one module serves every expert."""

    def expert(self, modality: Modality) -> nn.Module:
        return self  # type: ignore[return-value]


class Experts(nn.ModuleDict):
    """One copy of a sub-module per expert, keyed by modality value (``v``, ``l``, ``vl``)."""

    def expert(self, modality: Modality) -> nn.Module:
        if modality.value not in self:
            raise KeyError(f"no {modality.value!r} expert here (experts: {list(self.keys())})")
        return self[modality.value]


class LayerNorm(Shared, nn.LayerNorm):
    pass


# How an Attention computes softmax(q·kᵀ/√d + mask)·v: "sdpa" is F.scaled_dot_product_attention with the mask
# as an additive float attn_mask (on CUDA a fused memory-efficient or cuDNN kernel that takes the
# relative-position bias), "explicit" the three operations one by one (the reference the tests hold sdpa to).
# "auto" is sdpa, except off CUDA when the mask needs a gradient (training: the relative-position bias is
# learned): there sdpa falls back to its unfused path, which costs more than the explicit one (~6 % of a tiny
# pre-training step on the CPU).
AttentionKernel = Literal["auto", "sdpa", "explicit"]
ATTENTION_KERNELS: tuple[AttentionKernel, ...] = ("auto", "sdpa", "explicit")


class Attention(Shared, nn.Module):
    """BEiT attention (arXiv 2106.08254): ``qkv`` without bias plus learned q and v biases (k bias is 0).

    ``kernel`` (:data:`AttentionKernel`, set for a whole model by :func:`set_attention_kernel`) picks the
    softmax-attention computation; fp16 autocast always takes :func:`attention_fp32_logits`.
    """

    kernel: AttentionKernel = "auto"

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        """x: [B, N, D]; attn_mask: additive float [B or 1, H, N, N] (relative position + padding)."""
        b, n, d = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, N, D/H]
        out = self._attend(q, k, v, attn_mask, x.device.type)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))

    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor, device_type: str
    ) -> torch.Tensor:
        """softmax(q·kᵀ/√d + attn_mask)·v by :attr:`kernel`; q, k, v: [B, H, N, D/H]."""
        if fp16_autocast(device_type):
            return attention_fp32_logits(q, k, v, attn_mask)
        if self.kernel == "explicit" or (
            self.kernel == "auto" and device_type != "cuda" and attn_mask.requires_grad and torch.is_grad_enabled()
        ):
            return attention_explicit(q, k, v, attn_mask)
        # A float mask keeps fused SDPA kernels available on CUDA; it must match the query dtype.
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask.to(q.dtype))

    def forward_first(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor,
        packed: tuple[torch.Tensor, torch.Tensor, torch.Size] | None = None,
    ) -> torch.Tensor:
        """The output at each sample's first token alone: keys and values from every token, the query,
        the attention row and the output projection of token 0 only. x: [B, N, D], or with ``packed`` =
        (rows, first, shape) the real rows [R, D] of a flat [B·N] sequence of ``shape`` with ``first`` [B]
        the packed row of each sample's token 0. → [B, D]."""
        d = x.shape[-1]
        head = d // self.num_heads
        kv = F.linear(x, self.qkv.weight[d:], torch.cat([torch.zeros_like(self.v_bias), self.v_bias]))
        if packed is None:
            b, n = x.shape[:2]
            q = F.linear(x[:, 0], self.qkv.weight[:d], self.q_bias)
        else:
            rows, first, (b, n, _) = packed
            q = F.linear(x.index_select(0, first), self.qkv.weight[:d], self.q_bias)
            kv = kv.new_zeros(b * n, 2 * d).index_copy(0, rows, kv)
        k, v = kv.reshape(b, n, 2, self.num_heads, head).permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, N, D/H]
        q = q.reshape(b, self.num_heads, 1, head)
        out = self._attend(q, k, v, attn_mask[:, :, :1], x.device.type)  # [B, H, 1, D/H]
        return self.proj(out.reshape(b, d))

    def forward_packed(
        self, x: torch.Tensor, rows: torch.Tensor, shape: torch.Size, attn_mask: torch.Tensor
    ) -> torch.Tensor:
        """The same attention on the real tokens alone: x [R, D] holds rows ``rows`` of the flat [B·N]
        sequence of ``shape`` (B, N, D). Queries, keys and values are scattered into the padded layout for
        the attention product (padded keys stay masked by ``attn_mask``) and the output is read back at
        ``rows``, so the projections never touch a pad row. → [R, D]."""
        b, n, d = shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias)
        padded = (
            qkv.new_zeros(b * n, 3 * d).index_copy(0, rows, qkv).reshape(b, n, 3, self.num_heads, d // self.num_heads)
        )
        q, k, v = padded.permute(2, 0, 3, 1, 4).unbind(0)
        out = self._attend(q, k, v, attn_mask, x.device.type)
        return self.proj(out.transpose(1, 2).reshape(b * n, d).index_select(0, rows))


def fp16_autocast(device_type: str) -> bool:
    """Whether autocast to float16 is on for ``device_type`` (fp16 AMP, ``precision: "16"``)."""
    return torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.float16


def set_attention_kernel(model: nn.Module, kernel: AttentionKernel) -> int:
    """Set ``kernel`` on every :class:`Attention` of ``model``; returns how many were set."""
    if kernel not in ATTENTION_KERNELS:
        raise ValueError(f"attention kernel {kernel!r}: choose from {ATTENTION_KERNELS}")
    modules = [m for m in model.modules() if isinstance(m, Attention)]
    for module in modules:
        module.kernel = kernel
    return len(modules)


def attention_explicit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """softmax(q·kᵀ/√d + bias)·v written out, in the inputs' dtype. q, k, v: [B, H, N, D/H]; bias: additive
    [B or 1, H, N, N]. → [B, H, N, D/H]."""
    logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1) + bias.to(q.dtype)
    return logits.softmax(dim=-1) @ v


def attention_fp32_logits(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Softmax attention with the logits, the additive bias and the softmax in float32 (BEiT/VLMo under fp16).

    q, k, v: [B, H, N, D/H]; bias: [B or 1, H, N, N] (relative position + padding, float32). The query is
    scaled in its own dtype, ``q·kᵀ + bias`` and the softmax run in float32 outside autocast, and the
    weights return to v's dtype for the product with v, as upstream. → [B, H, N, D/H].
    """
    q = q * q.shape[-1] ** -0.5
    with torch.autocast(q.device.type, enabled=False):
        logits = q.float() @ k.float().transpose(-2, -1) + bias.float()
        weights = logits.softmax(dim=-1).to(v.dtype)
        return weights @ v


class Mlp(Shared, nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth (arXiv 1603.09382): drop a sample's residual branch with probability p.

    ``keep`` (from :meth:`draw`) applies a draw made beforehand, so that two inputs of the same samples
    (the text and image halves of a pair) keep or drop the branch together.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def draw(self, like: torch.Tensor) -> torch.Tensor:
        """0/1 keep flags [B, 1, …, 1] for a batch shaped like ``like`` [B, …]."""
        return like.new_empty((like.shape[0],) + (1,) * (like.ndim - 1)).bernoulli_(1 - self.p)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        if not self.training:
            return x
        if keep is None:
            keep = self.draw(x)
        return x * keep / (1 - self.p)


class TextEmbeddings(nn.Module):
    """word + token-type embedding → LayerNorm(1e-12) → dropout (BERT, arXiv 1810.04805)."""

    def __init__(self, vocab_size: int, dim: int, dropout: float) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, dim)
        self.token_type_embeddings = nn.Embedding(2, dim)
        self.LayerNorm = nn.LayerNorm(dim, eps=1e-12)
        self.dropout = nn.Dropout(dropout)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: [B, T] token ids → [B, T, D] (every token is BERT segment 0)."""
        x = self.word_embeddings(ids) + self.token_type_embeddings.weight[0]
        return self.dropout(self.LayerNorm(x))


class PatchEmbed(nn.Module):
    """Non-overlapping patch × patch convolution (ViT, arXiv 2010.11929)."""

    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: [B, 3, H, W] → [B, (H/p)·(W/p), D], patches in row-major order."""
        return self.proj(images).flatten(2).transpose(1, 2)


def init_module(module: nn.Module, std: float = 0.02) -> None:
    """Linear: truncated normal (``std``, 0.02 upstream), zero bias; Embedding: normal (``std``);
    LayerNorm: 1 and 0."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@torch.no_grad()
def rescale_residual_branches(blocks: nn.ModuleList) -> None:
    """Divide block i's output projections by sqrt(2(i+1)) so deep residual sums start small.

    BEiT rescales ``attn.proj`` and ``mlp.fc2``; vl-merging's ``_rescale`` also matches ``mlp.fc1``,
    and we reproduce vl-merging.
    """
    for i, block in enumerate(blocks):
        for name, param in block.named_parameters():
            if name.endswith(("proj.weight", "fc1.weight", "fc2.weight")):
                param.div_(math.sqrt(2 * (i + 1)))
