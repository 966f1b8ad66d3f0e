"""Input embeddings: BERT-style text embeddings without absolute positions, and image patches.

Neither adds an absolute position embedding: positions enter only through the relative position
bias (VLMo). Module and parameter names follow BERT/vl-merging so upstream weights import as is.
"""

from __future__ import annotations

import torch
from torch import nn


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
