"""Objectives on one process, against naive references: explicit loops over the batch computing
each log-softmax (or log-sigmoid) term by hand, and small hand-worked examples."""

from __future__ import annotations

import math

import pytest
import torch

from vlmerge.objectives import (
    ObjectiveInputError,
    contrastive_loss,
    itc_loss,
    itm_labels,
    itm_loss,
    mlm_loss,
    nlvr2_loss,
    retrieval_loss,
    sample_hard_negatives,
    vqa_loss,
    vqa_score,
    vqa_targets,
)


def naive_log_softmax_at(row: torch.Tensor, index: int) -> torch.Tensor:
    """log softmax(row)[index] as written on paper: row[index] - log(sum_j exp(row[j]))."""
    return row[index] - torch.log(sum(torch.exp(row[j]) for j in range(len(row))))


def naive_contrastive(
    image: torch.Tensor, text: torch.Tensor, log_scale: torch.Tensor
) -> tuple[torch.Tensor, float, float]:
    """Symmetric InfoNCE with one Python loop per direction; returns (loss, i2t_acc, t2i_acc)."""
    batch = len(image)
    scale = torch.clamp(torch.exp(log_scale), max=100.0)
    unit_image = [image[i] / torch.sqrt((image[i] ** 2).sum()) for i in range(batch)]
    unit_text = [text[i] / torch.sqrt((text[i] ** 2).sum()) for i in range(batch)]
    total, hits_i2t, hits_t2i = 0.0, 0, 0
    for i in range(batch):
        i2t = torch.stack([scale * (unit_image[i] * unit_text[j]).sum() for j in range(batch)])
        t2i = torch.stack([scale * (unit_text[i] * unit_image[j]).sum() for j in range(batch)])
        total = total - naive_log_softmax_at(i2t, i) - naive_log_softmax_at(t2i, i)
        hits_i2t += int(max(range(batch), key=lambda j: i2t[j].item()) == i)
        hits_t2i += int(max(range(batch), key=lambda j: t2i[j].item()) == i)
    return total / (2 * batch), hits_i2t / batch, hits_t2i / batch


def features(seed: int, batch: int = 6, dim: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    # Texts correlated with their images, so accuracies are neither 0 nor 1.
    text = image + 1.5 * torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    return image, text


# ---------------------------------------------------------------- contrastive (ITC, retrieval)


@pytest.mark.parametrize("log_scale", [0.0, math.log(1 / 0.07)])
def test_contrastive_value_and_gradients_match_naive(log_scale: float) -> None:
    image, text = features(seed=0)
    scale = torch.tensor(log_scale, dtype=torch.float64)
    args = [t.clone().requires_grad_() for t in (image, text, scale)]
    naive_args = [a.detach().clone().requires_grad_() for a in args]
    out = contrastive_loss(*args)
    expected, i2t_acc, t2i_acc = naive_contrastive(*naive_args)
    out.loss.backward()
    expected.backward()
    torch.testing.assert_close(out.loss, expected)
    for got, want in zip(args, naive_args):
        torch.testing.assert_close(got.grad, want.grad)
    assert out.i2t_acc.item() == pytest.approx(i2t_acc)
    assert out.t2i_acc.item() == pytest.approx(t2i_acc)
    assert 0 < i2t_acc < 1
    assert out.logits_per_image.shape == out.logits_per_text.shape == (6, 6)
    torch.testing.assert_close(out.logits_per_text, out.logits_per_image.T)
    assert out.targets.tolist() == list(range(6))


def test_contrastive_hand_worked_orthonormal_pairs() -> None:
    # Two matching orthonormal pairs at scale 1: each row has logits (1, 0), so every term is
    # -log(e / (e + 1)) = log(1 + 1/e). Features are scaled by 3 to show they are normalised.
    image = 3 * torch.eye(2, dtype=torch.float64)
    out = contrastive_loss(image, image.clone(), torch.tensor(0.0, dtype=torch.float64))
    assert out.loss.item() == pytest.approx(math.log(1 + math.exp(-1)))
    assert out.i2t_acc.item() == out.t2i_acc.item() == 1.0


def test_contrastive_scale_is_capped_at_100() -> None:
    image, text = features(seed=1)
    log_scale = torch.tensor(math.log(1000.0), dtype=torch.float64, requires_grad=True)
    out = contrastive_loss(image, text, log_scale)
    capped = contrastive_loss(image, text, torch.tensor(math.log(100.0), dtype=torch.float64))
    torch.testing.assert_close(out.loss, capped.loss)
    out.loss.backward()
    assert log_scale.grad.item() == 0.0


def test_contrastive_scale_cap_is_configurable_and_none_removes_it() -> None:
    image, text = features(seed=1)
    log_scale = torch.tensor(math.log(1000.0), dtype=torch.float64, requires_grad=True)
    free = contrastive_loss(image, text, log_scale, max_logit_scale=None)  # upstream: the clamp commented out
    unclamped = contrastive_loss(image, text, torch.tensor(math.log(1000.0), dtype=torch.float64), max_logit_scale=1e9)
    torch.testing.assert_close(free.loss, unclamped.loss)
    assert not torch.allclose(free.loss, contrastive_loss(image, text, log_scale).loss)
    free.loss.backward()
    assert log_scale.grad.item() != 0.0
    capped = contrastive_loss(image, text, log_scale, max_logit_scale=10.0)
    torch.testing.assert_close(capped.loss, contrastive_loss(image, text, torch.tensor(math.log(10.0)).double()).loss)


def test_upstream_gather_is_the_exact_loss_on_one_process() -> None:
    image, text = features(seed=3)
    for gather in ("exact", "upstream"):
        leaves = image.clone().requires_grad_(), text.clone().requires_grad_()
        out = contrastive_loss(*leaves, torch.tensor(0.5, dtype=torch.float64), gather=gather)  # type: ignore[arg-type]
        out.loss.backward()
        if gather == "exact":
            reference, grads = out, [leaf.grad for leaf in leaves]
        else:
            torch.testing.assert_close(out.loss, reference.loss)
            torch.testing.assert_close(out.logits_per_text, reference.logits_per_text)
            for leaf, grad in zip(leaves, grads, strict=True):
                torch.testing.assert_close(leaf.grad, grad)
    with pytest.raises(ObjectiveInputError, match="gather"):
        contrastive_loss(image, text, torch.tensor(0.0), gather="approximate")  # type: ignore[arg-type]


def test_itc_loss_is_mean_of_two_terms_and_retrieval_reuses_contrastive() -> None:
    image, text = features(seed=2)
    scale = torch.tensor(1.0, dtype=torch.float64)
    term_a = contrastive_loss(image, text, scale)
    term_b = contrastive_loss(image, text.flip(0), scale)
    assert itc_loss(term_a, term_b).item() == pytest.approx((term_a.loss.item() + term_b.loss.item()) / 2)
    torch.testing.assert_close(retrieval_loss(image, text, scale).loss, term_a.loss)


def test_contrastive_rejects_mismatched_shapes() -> None:
    with pytest.raises(ObjectiveInputError, match="contrastive"):
        contrastive_loss(torch.randn(4, 3), torch.randn(5, 3), torch.tensor(0.0))
    with pytest.raises(ObjectiveInputError, match="scalar"):
        contrastive_loss(torch.randn(4, 3), torch.randn(4, 3), torch.zeros(2))


# ---------------------------------------------------------------- MLM


def test_mlm_matches_naive() -> None:
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 7, 11, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 11, (3, 7), generator=gen)
    labels[torch.rand(3, 7, generator=gen) < 0.6] = -100
    labels[0, 0] = logits[0, 0].argmax()  # at least one hit and one masked token
    out = mlm_loss(logits, labels)
    terms, hits = [], 0
    for b in range(3):
        for t in range(7):
            if labels[b, t] != -100:
                terms.append(-naive_log_softmax_at(logits[b, t], int(labels[b, t])))
                hits += int(max(range(11), key=lambda v: logits[b, t, v].item()) == labels[b, t])
    assert out.count.item() == len(terms)
    assert out.loss.item() == pytest.approx(sum(terms).item() / len(terms))
    assert out.accuracy.item() == pytest.approx(hits / len(terms))


def test_mlm_without_masked_tokens_is_zero_with_gradient() -> None:
    logits = torch.randn(2, 4, 9, requires_grad=True)
    out = mlm_loss(logits, torch.full((2, 4), -100))
    out.loss.backward()
    assert out.loss.item() == 0.0 and out.accuracy.item() == 0.0 and out.count.item() == 0
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_mlm_rejects_mismatched_shapes() -> None:
    with pytest.raises(ObjectiveInputError, match="mlm"):
        mlm_loss(torch.randn(2, 4, 9), torch.zeros(2, 5, dtype=torch.long))


# ---------------------------------------------------------------- ITM and hard negatives


def test_itm_labels_and_loss_match_naive() -> None:
    assert itm_labels(2).tolist() == [1, 1, 0, 0, 0, 0]
    logits = torch.tensor(
        [[0.0, 2.0], [1.0, -1.0], [3.0, 0.5], [-0.5, 0.0], [-2.0, 1.0], [1.0, 0.0]], dtype=torch.float64
    )
    labels = itm_labels(2)
    out = itm_loss(logits, labels)
    expected = -sum(naive_log_softmax_at(logits[i], int(labels[i])) for i in range(6)) / 6
    assert out.loss.item() == pytest.approx(expected.item())
    assert out.accuracy.item() == pytest.approx(3 / 6)  # rows 0, 2 and 5 are right


def test_hard_negatives_never_return_the_positive() -> None:
    gen = torch.Generator().manual_seed(4)
    batch, n_all = 16, 48
    positive = torch.arange(batch) + 32  # as on rank 2 of 3
    for _ in range(200):
        sim_i2t = 100 * torch.randn(batch, n_all, generator=gen).tanh()
        sim_t2i = 100 * torch.randn(batch, n_all, generator=gen).tanh()
        sim_i2t[torch.arange(batch), positive] = 100.0  # a dominant positive, as after training
        negatives = sample_hard_negatives(sim_i2t, sim_t2i, positive, generator=gen)
        assert not (negatives.neg_text_for_image == positive).any()
        assert not (negatives.neg_image_for_text == positive).any()


def test_hard_negatives_follow_upstream_distribution() -> None:
    # Upstream draws from softmax(row) with the positive zeroed, renormalised by multinomial.
    row = [1.0, 0.5, 3.0, -1.0, 0.0]
    positive, draws = 2, 20000
    exps = [math.exp(v) for v in row]
    kept = [e if j != positive else 0.0 for j, e in enumerate(exps)]
    expected = [k / sum(kept) for k in kept]
    sims = torch.tensor(row).repeat(draws, 1)
    index = torch.full((draws,), positive)
    negatives = sample_hard_negatives(sims, sims, index, generator=torch.Generator().manual_seed(5))
    for drawn in negatives:
        counts = torch.bincount(drawn, minlength=len(row)).tolist()
        assert counts[positive] == 0
        chi2 = sum((counts[j] - draws * p) ** 2 / (draws * p) for j, p in enumerate(expected) if p > 0)
        assert chi2 < 16.27  # chi-square, 3 degrees of freedom, p = 0.001


def test_hard_negatives_survive_a_positive_that_takes_all_float32_mass() -> None:
    # exp(-200) underflows in float32: softmax-then-zero would leave an all-zero row here.
    row = torch.tensor([100.0, -100.0, -100.0, -100.0])
    assert torch.softmax(row, 0)[1:].sum() == 0
    sims = row.repeat(4000, 1)
    positive = torch.zeros(4000, dtype=torch.long)
    drawn = sample_hard_negatives(sims, sims, positive, generator=torch.Generator().manual_seed(6))
    counts = torch.bincount(drawn.neg_text_for_image, minlength=4).tolist()
    assert counts[0] == 0
    assert all(abs(c - 4000 / 3) < 150 for c in counts[1:])


def test_hard_negatives_exclude_the_positive_index_not_duplicates() -> None:
    # Columns 0 and 1 are the same caption: column 1 is a legitimate (and likely) negative.
    row = torch.tensor([5.0, 5.0, -5.0])
    sims = row.repeat(500, 1)
    positive = torch.zeros(500, dtype=torch.long)
    drawn = sample_hard_negatives(sims, sims, positive, generator=torch.Generator().manual_seed(7))
    assert (drawn.neg_text_for_image != 0).all()
    assert (drawn.neg_text_for_image == 1).sum() > 450


def test_hard_negatives_are_deterministic_under_a_seeded_generator() -> None:
    sims = torch.randn(32, 32, generator=torch.Generator().manual_seed(8))
    positive = torch.arange(32)
    first = sample_hard_negatives(sims, sims.T.contiguous(), positive, generator=torch.Generator().manual_seed(9))
    again = sample_hard_negatives(sims, sims.T.contiguous(), positive, generator=torch.Generator().manual_seed(9))
    other = sample_hard_negatives(sims, sims.T.contiguous(), positive, generator=torch.Generator().manual_seed(10))
    assert torch.equal(first.neg_text_for_image, again.neg_text_for_image)
    assert torch.equal(first.neg_image_for_text, again.neg_image_for_text)
    assert not torch.equal(first.neg_text_for_image, other.neg_text_for_image)


@pytest.mark.parametrize(
    ("sim", "positive", "message"),
    [
        (torch.zeros(3, 1), torch.zeros(3, dtype=torch.long), "at least 2"),
        (torch.zeros(3, 4), torch.tensor([0, 1, 4]), "positive_index"),
        (torch.zeros(3, 4), torch.zeros(2, dtype=torch.long), "expected"),
        (torch.tensor([[0.0, float("nan")]]), torch.zeros(1, dtype=torch.long), "NaN"),
    ],
)
def test_hard_negatives_reject_bad_input(sim: torch.Tensor, positive: torch.Tensor, message: str) -> None:
    with pytest.raises(ObjectiveInputError, match=message):
        sample_hard_negatives(sim, sim, positive)


# ---------------------------------------------------------------- VQA


def test_vqa_targets_hand_worked() -> None:
    targets = vqa_targets([[2, 0], [], [3]], [[0.6, 1.0], [], [0.3]], num_answers=4)
    assert targets.tolist() == [[1.0, 0.0, 0.6000000238418579, 0.0], [0.0] * 4, [0.0, 0.0, 0.0, 0.30000001192092896]]
    assert targets.dtype == torch.float32


@pytest.mark.parametrize(
    ("labels", "scores", "message"),
    [
        ([[0]], [[1.0], [0.3]], "1 label lists but 2"),
        ([[0, 1]], [[1.0]], "row 0 has 2 labels but 1"),
        ([[4]], [[1.0]], "outside \\[0, 4\\)"),
        ([[1, 1]], [[0.3, 0.6]], "repeats"),
        ([[1]], [[1.5]], "score outside"),
    ],
)
def test_vqa_targets_reject_bad_rows(labels: list[list[int]], scores: list[list[float]], message: str) -> None:
    with pytest.raises(ObjectiveInputError, match=message):
        vqa_targets(labels, scores, num_answers=4)


def test_vqa_loss_matches_naive_formula() -> None:
    gen = torch.Generator().manual_seed(11)
    logits = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    targets = vqa_targets([[0, 4], [2], []], [[0.9, 0.3], [1.0], []], 5).double()
    total = 0.0
    for b in range(3):
        for a in range(5):
            p = 1 / (1 + math.exp(-logits[b, a].item()))
            t = targets[b, a].item()
            total += -(t * math.log(p) + (1 - t) * math.log(1 - p))
    # mean over the 15 entries times 5 answers = sum over answers, mean over the 3 questions
    assert vqa_loss(logits, targets).item() == pytest.approx(total / 15 * 5)


def test_vqa_score_hand_worked() -> None:
    targets = torch.tensor([[0.3, 1.0, 0.0], [0.0, 0.6, 0.9], [0.0, 0.0, 0.0]])
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 5.0], [1.0, 0.0, 0.0]])
    assert vqa_score(logits, targets).item() == pytest.approx(0.3 + 0.9 + 0.0)
    with pytest.raises(ObjectiveInputError, match="vqa"):
        vqa_loss(logits, targets[:, :2])


# ---------------------------------------------------------------- NLVR2


def test_nlvr2_loss_matches_naive() -> None:
    logits = torch.tensor([[0.2, -0.4], [1.5, 2.5], [-1.0, 0.3], [0.7, 0.1]], dtype=torch.float64)
    labels = torch.tensor([1, 1, 0, 0])
    out = nlvr2_loss(logits, labels)
    terms = []
    for i in range(4):
        row = logits[i].tolist()
        terms.append(-math.log(math.exp(row[labels[i]]) / sum(math.exp(v) for v in row)))
    assert out.loss.item() == pytest.approx(sum(terms) / 4)
    assert out.accuracy.item() == pytest.approx(2 / 4)  # rows 1 and 3
    with pytest.raises(ObjectiveInputError, match="nlvr2"):
        nlvr2_loss(logits, labels[:3])
