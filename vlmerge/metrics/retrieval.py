"""Image–text retrieval Recall@K in both directions, and the recall of random ranking.

Ties are broken against the positive: a candidate that scores exactly as high as the (best)
positive counts as ranked above it. The result therefore depends neither on the order of the
candidates nor on how a sort orders equal keys, and a model that scores everything alike gets
no credit (ViLT's ``topk`` left ties to the kernel).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the data converters import this package for normalize_answer; torch costs them 2 s
    import torch

KS = (1, 5, 10)
_ROWS_PER_CHUNK = 1024  # bounds the [images, texts] boolean temporaries


def _check(sims: torch.Tensor, text_to_image: torch.Tensor) -> None:
    if sims.ndim != 2 or text_to_image.shape != (sims.shape[1],):
        raise ValueError(
            f"expected sims [n_images, n_texts] and text_to_image [n_texts], "
            f"got {tuple(sims.shape)} and {tuple(text_to_image.shape)}"
        )
    if sims.shape[1] and (text_to_image.min() < 0 or text_to_image.max() >= sims.shape[0]):
        raise ValueError(f"text_to_image holds image indices outside [0, {sims.shape[0]})")
    if sims.isnan().any():
        raise ValueError("similarities contain NaN")


def text_to_image_ranks(sims: torch.Tensor, text_to_image: torch.Tensor) -> torch.Tensor:
    """0-based rank of each text's image among all images: [n_texts] = #other images scoring >= it."""
    positive = sims.gather(0, text_to_image[None, :])  # [1, n_texts]
    return (sims >= positive).sum(dim=0) - 1


def image_to_text_ranks(sims: torch.Tensor, text_to_image: torch.Tensor) -> torch.Tensor:
    """0-based rank of each image's best text: [n_images] = #texts of other images scoring >= it.

    Images without any text get rank -1 (they have nothing to retrieve).
    """
    import torch

    ranks = []
    for start in range(0, sims.shape[0], _ROWS_PER_CHUNK):
        rows = sims[start : start + _ROWS_PER_CHUNK]
        images = torch.arange(start, start + rows.shape[0], device=sims.device)
        positive = text_to_image[None, :] == images[:, None]  # [chunk, n_texts]
        best = rows.masked_fill(~positive, -math.inf).amax(dim=1, keepdim=True)
        rank = ((rows >= best) & ~positive).sum(dim=1)
        ranks.append(torch.where(positive.any(dim=1), rank, -1))
    return torch.cat(ranks)


def retrieval_recall(sims: torch.Tensor, text_to_image: torch.Tensor, ks: Sequence[int] = KS) -> dict[str, float]:
    """Recall@k: ``ir_r{k}`` (text → image: the text's image is within the top k images) and
    ``tr_r{k}`` (image → text: one of the image's texts is within the top k texts).

    sims: [n_images, n_texts] scores, higher = more similar; text_to_image: [n_texts] int64, the
    image of each text. ``tr`` averages over the images that have at least one text.
    """
    _check(sims, text_to_image)
    ir = text_to_image_ranks(sims, text_to_image)
    tr = image_to_text_ranks(sims, text_to_image)
    tr = tr[tr >= 0]
    if ir.numel() == 0 or tr.numel() == 0:
        raise ValueError("retrieval needs at least one text and one image with a text")
    out = {f"ir_r{k}": float((ir < k).double().mean()) for k in ks}
    return out | {f"tr_r{k}": float((tr < k).double().mean()) for k in ks}


def mean_recall(recalls: dict[str, float]) -> float:
    """Mean of every ``ir_r*`` and ``tr_r*`` value (the usual "rsum" divided by its term count)."""
    values = [v for k, v in recalls.items() if k.startswith(("ir_r", "tr_r"))]
    if not values:
        raise ValueError(f"no recall values in {sorted(recalls)}")
    return sum(values) / len(values)


def chance_recall(k: int, candidates: int, positives: int = 1) -> float:
    """Probability that a uniformly random ranking of ``candidates`` puts one of ``positives`` in the top k.

    1 - C(n - p, k) / C(n, k); k / n for a single positive.
    """
    if not 1 <= positives <= candidates or k < 1:
        raise ValueError(f"chance recall of k={k} with {positives} positives among {candidates}")
    if k > candidates - positives:  # fewer negatives than slots: a positive always makes the top k
        return 1.0
    return 1.0 - math.comb(candidates - positives, k) / math.comb(candidates, k)


def chance_retrieval_recall(text_to_image: Sequence[int], num_images: int, ks: Sequence[int] = KS) -> dict[str, float]:
    """The keys of :func:`retrieval_recall` for random rankings of the same images and texts."""
    texts_per_image = [0] * num_images
    for image in text_to_image:
        texts_per_image[int(image)] += 1
    with_text = [p for p in texts_per_image if p > 0]
    if not with_text:
        raise ValueError("retrieval needs at least one text")
    out = {f"ir_r{k}": chance_recall(k, num_images) for k in ks}
    n_texts = len(text_to_image)
    return out | {f"tr_r{k}": sum(chance_recall(k, n_texts, p) for p in with_text) / len(with_text) for k in ks}
