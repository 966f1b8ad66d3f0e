"""Relative position bias: the row layout of the shared table and the index matrices into it.

One learned table ``[num_rows, num_layers * num_heads]`` (VLMo, arXiv 2111.02358) serves every
expert; layer i reads columns ``i*H:(i+1)*H``. Rows, for a G×G patch grid and text length T:

* ``[0, (2G-1)²)``: image patch → patch offsets, BEiT's 2-D layout (arXiv 2106.08254);
* the next 3: image CLS → patch, patch → image CLS, CLS → CLS (BEiT);
* one text → image row and one image → text row;
* ``2T`` text rows: 1-D offsets ``j - i`` between non-CLS tokens, then the 3 text CLS rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class RelPosLayout:
    grid: int
    max_text_len: int

    @property
    def image_rows(self) -> int:
        return (2 * self.grid - 1) ** 2 + 3

    @property
    def text_to_image(self) -> int:
        return self.image_rows

    @property
    def image_to_text(self) -> int:
        return self.image_rows + 1

    @property
    def text_start(self) -> int:
        return self.image_rows + 2

    @property
    def num_rows(self) -> int:
        return self.text_start + 2 * self.max_text_len


def _with_cls(inner: torch.Tensor, first: int) -> torch.Tensor:
    """Put ``inner`` [n, n] behind a CLS row and column using rows first (CLS→x), +1 (x→CLS), +2 (CLS→CLS)."""
    n = inner.shape[0] + 1
    index = torch.empty(n, n, dtype=torch.long, device=inner.device)
    index[1:, 1:] = inner
    index[0, :] = first
    index[:, 0] = first + 1
    index[0, 0] = first + 2
    return index


def image_index(grid: int) -> torch.Tensor:
    """[G²+1, G²+1] table rows for image tokens (CLS first), as BEiT builds them."""
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    coords = torch.stack([rows.flatten(), cols.flatten()])  # [2, G²]
    delta = coords[:, :, None] - coords[:, None, :] + (grid - 1)  # query minus key, shifted to >= 0
    return _with_cls(delta[0] * (2 * grid - 1) + delta[1], (2 * grid - 1) ** 2)


def text_index(layout: RelPosLayout) -> torch.Tensor:
    """[T, T] table rows for text tokens at the maximal length; slice [:t, :t] for shorter text."""
    pos = torch.arange(layout.max_text_len - 1)
    offsets = pos[None, :] - pos[:, None] + (layout.max_text_len - 2)  # key minus query, in [0, 2T-4]
    return _with_cls(layout.text_start + offsets, layout.text_start + 2 * layout.max_text_len - 3)


def joint_index(text: torch.Tensor, image: torch.Tensor, layout: RelPosLayout) -> torch.Tensor:
    """[t+G²+1, t+G²+1] rows for the fused sequence [text; image], from the two blocks above."""
    t, n = text.shape[0], image.shape[0]
    top = torch.cat([text, text.new_full((t, n), layout.text_to_image)], dim=1)
    bottom = torch.cat([image.new_full((n, t), layout.image_to_text), image], dim=1)
    return torch.cat([top, bottom], dim=0)


def resize_image_table(table: torch.Tensor, old_grid: int, new_grid: int) -> torch.Tensor:
    """Bicubically resample the (2G-1)² image-offset rows of ``table`` [rows, C]; other rows are kept."""
    if old_grid == new_grid:
        return table.clone()
    old, new = 2 * old_grid - 1, 2 * new_grid - 1
    image, rest = table[: old * old], table[old * old :]
    grid = image.T.reshape(1, -1, old, old).float()  # one channel per (layer, head) column
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    return torch.cat([grid[0].reshape(-1, new * new).T.to(table.dtype), rest], dim=0)
