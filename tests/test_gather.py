"""Cross-rank gathering and the distributed contrastive loss, with two real gloo processes on CPU.

The exact relation checked: with W ranks of B rows, rank r's loss L_r is the mean over its own
rows, so mean_r L_r = L, the one-process loss over the concatenated W*B rows. The gather sums
gradients over ranks, so rank r's feature gradient is W * dL/d(features_r); the temperature
(a per-rank parameter, not gathered) gets dL_r/ds on rank r, and mean_r dL_r/ds = dL/ds. DDP's
gradient averaging therefore yields exactly the one-process parameter gradients.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vlmerge.objectives import (
    all_gather_no_grad,
    all_gather_with_grad,
    contrastive_loss,
    rank,
    rank_offset,
    sample_hard_negatives,
    world_size,
)

WORLD, BATCH, DIM = 2, 4, 6


def fixed_inputs() -> tuple[torch.Tensor, torch.Tensor, float]:
    """The concatenated batch [WORLD * BATCH, DIM] of images and texts, and a log temperature."""
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(WORLD * BATCH, DIM, generator=gen, dtype=torch.float64)
    text = image + torch.randn(WORLD * BATCH, DIM, generator=gen, dtype=torch.float64)
    return image, text, math.log(5.0)


def worker(rank_id: int, store: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank_id, world_size=WORLD)
    try:
        image, text, log_scale = fixed_inputs()
        rows = slice(rank_id * BATCH, (rank_id + 1) * BATCH)
        local_image = image[rows].clone().requires_grad_()
        local_text = text[rows].clone().requires_grad_()
        scale = torch.tensor(log_scale, dtype=torch.float64, requires_grad=True)
        out = contrastive_loss(local_image, local_text, scale)
        out.loss.backward()

        # The released code's gather (no gradient through other ranks' rows), on fresh leaves.
        up_image = image[rows].clone().requires_grad_()
        up_text = text[rows].clone().requires_grad_()
        up_scale = torch.tensor(log_scale, dtype=torch.float64, requires_grad=True)
        upstream = contrastive_loss(up_image, up_text, up_scale, gather="upstream")
        upstream.loss.backward()

        # The gather itself: rank order, and the backward sum of every rank's upstream gradient.
        x = torch.full((2, 3), float(rank_id), requires_grad=True)
        weights = torch.arange(WORLD * 2 * 3, dtype=torch.float32).reshape(WORLD * 2, 3)
        gathered = all_gather_with_grad(x)
        (gathered * weights).sum().backward()

        negatives = sample_hard_negatives(
            out.logits_per_image, out.logits_per_text, out.targets, generator=torch.Generator().manual_seed(rank_id)
        )
        torch.save(
            {
                "world_size": world_size(),
                "rank": rank(),
                "offset": rank_offset(BATCH),
                "loss": out.loss.detach(),
                "image_grad": local_image.grad,
                "text_grad": local_text.grad,
                "scale_grad": scale.grad,
                "i2t_acc": out.i2t_acc,
                "t2i_acc": out.t2i_acc,
                "logits_per_image": out.logits_per_image.detach(),
                "targets": out.targets,
                "gathered": gathered.detach(),
                "gather_grad": x.grad,
                "no_grad": all_gather_no_grad(torch.tensor([rank_id * 10, rank_id * 10 + 1])),
                "negatives": torch.stack(tuple(negatives)),
                "upstream_loss": upstream.loss.detach(),
                "upstream_image_grad": up_image.grad,
                "upstream_text_grad": up_text.grad,
                "upstream_scale_grad": up_scale.grad,
                "upstream_logits_per_image": upstream.logits_per_image.detach(),
                "upstream_logits_per_text": upstream.logits_per_text.detach(),
                "upstream_targets": upstream.targets,
            },
            Path(out_dir) / f"rank{rank_id}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_single_process_helpers_are_identities() -> None:
    assert not dist.is_initialized()
    x = torch.randn(3, 2)
    assert all_gather_with_grad(x) is x
    assert all_gather_no_grad(x) is x
    assert (world_size(), rank(), rank_offset(7)) == (1, 0, 0)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """What each of the two spawned ranks computed (one spawn for the whole module)."""
    out_dir = tmp_path_factory.mktemp("gather")
    mp.spawn(worker, args=(str(out_dir / "store"), str(out_dir)), nprocs=WORLD, join=True)
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD)]


def test_two_ranks_match_one_process_over_the_concatenated_batch(ranks: list[dict]) -> None:

    image, text, log_scale = fixed_inputs()
    image.requires_grad_()
    text.requires_grad_()
    scale = torch.tensor(log_scale, dtype=torch.float64, requires_grad=True)
    single = contrastive_loss(image, text, scale)
    single.loss.backward()

    torch.testing.assert_close(sum(r["loss"] for r in ranks) / WORLD, single.loss.detach())
    torch.testing.assert_close(sum(r["scale_grad"] for r in ranks) / WORLD, scale.grad)
    torch.testing.assert_close(sum(r["i2t_acc"] for r in ranks) / WORLD, single.i2t_acc)
    torch.testing.assert_close(sum(r["t2i_acc"] for r in ranks) / WORLD, single.t2i_acc)
    for r, result in enumerate(ranks):
        rows = slice(r * BATCH, (r + 1) * BATCH)
        assert (result["world_size"], result["rank"], result["offset"]) == (WORLD, r, r * BATCH)
        torch.testing.assert_close(result["image_grad"], WORLD * image.grad[rows])
        torch.testing.assert_close(result["text_grad"], WORLD * text.grad[rows])
        torch.testing.assert_close(result["logits_per_image"], single.logits_per_image[rows].detach())
        assert result["targets"].tolist() == list(range(r * BATCH, (r + 1) * BATCH))
        assert not (result["negatives"] == result["targets"]).any()


def test_gather_order_and_gradient_sum(ranks: list[dict]) -> None:
    weights = torch.arange(WORLD * 2 * 3, dtype=torch.float32).reshape(WORLD * 2, 3)
    for r, result in enumerate(ranks):
        assert result["gathered"].tolist() == [[0.0] * 3] * 2 + [[1.0] * 3] * 2
        # Every rank's loss touches every slice with the same weights: rank r's slice gets W copies.
        torch.testing.assert_close(result["gather_grad"], WORLD * weights[2 * r : 2 * r + 2])
        assert result["no_grad"].tolist() == [0, 1, 10, 11]


def test_upstream_gather_gives_the_full_loss_and_one_world_th_of_the_gradient(ranks: list[dict]) -> None:
    """itc_gather=upstream: each rank's loss is the full-batch loss L (= the mean of the exact mode's per-rank
    losses), and its feature gradient is dL/d(features_r) = the exact mode's / W; so after DDP's averaging the
    encoders get dL/dθ / W. The temperature gets dL/ds on every rank, whose average equals the exact mode's."""
    exact_mean_loss = sum(r["loss"] for r in ranks) / WORLD
    exact_mean_scale_grad = sum(r["scale_grad"] for r in ranks) / WORLD
    for result in ranks:
        torch.testing.assert_close(result["upstream_loss"], exact_mean_loss)
        torch.testing.assert_close(result["upstream_image_grad"], result["image_grad"] / WORLD)
        torch.testing.assert_close(result["upstream_text_grad"], result["text_grad"] / WORLD)
        torch.testing.assert_close(result["upstream_scale_grad"], exact_mean_scale_grad)
        torch.testing.assert_close(result["upstream_logits_per_image"], result["logits_per_image"])
        assert torch.equal(result["upstream_targets"], result["targets"])
    # DDP averages the per-rank gradients of a parameter fed by both ranks' features: the same ratio holds.
    exact = sum(r["image_grad"].sum(0) for r in ranks) / WORLD
    upstream = sum(r["upstream_image_grad"].sum(0) for r in ranks) / WORLD
    torch.testing.assert_close(upstream, exact / WORLD)
