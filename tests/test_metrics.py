"""Metrics against naive references and hand-worked cases: VQA accuracy and score, recall@k, accuracy."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from tests.builders import naive_question_accuracy
from vlmerge.metrics import (
    accuracy,
    chance_recall,
    chance_retrieval_recall,
    humans_agreeing,
    leave_one_out_accuracy,
    majority_class,
    mean_recall,
    question_accuracy,
    retrieval_recall,
    vqa_accuracy,
    vqa_score,
)
from vlmerge.objectives import vqa_score as batch_vqa_score

# --- VQA ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("agreeing", "expected"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_leave_one_out_accuracy_by_hand(agreeing: int, expected: float) -> None:
    # 2 of 10: leaving out one of the two → 1/3 (2 subsets), any other → 2/3 (8 subsets): (2/3 + 16/3) / 10 = 0.6
    humans = ["red"] * agreeing + ["blue"] * (10 - agreeing)
    assert question_accuracy("red", humans) == pytest.approx(expected)
    assert leave_one_out_accuracy(agreeing) == pytest.approx(expected)


def test_vqa_accuracy_normalises_prediction_and_humans() -> None:
    cases = [
        ("Two", ["2"] * 3 + ["3"] * 7, 0.9),  # number word → digit
        ("yes.", ["yes"] * 10, 1.0),  # trailing period dropped
        ("the dog", ["dog", "a dog", "Dog"] + ["cat"] * 7, 0.9),  # articles and case
        ("dont", ["don't", "don't"] + ["no"] * 8, 0.6),  # contraction gets its apostrophe
        ("black/white", ["black white"] + ["x"] * 9, 0.3),
    ]  # slash between words becomes a space
    for prediction, humans, expected in cases:
        assert question_accuracy(prediction, humans) == pytest.approx(expected), prediction
    predictions, answers = zip(*[(p, h) for p, h, _ in cases])
    assert vqa_accuracy(list(predictions), list(answers)) == pytest.approx(sum(e for *_, e in cases) / len(cases))


def test_vqa_accuracy_matches_the_naive_loop_on_random_answers() -> None:
    rng = random.Random(0)
    vocabulary = ["yes", "no", "2", "two", "red", "Red.", "the cat", "cat"]
    predictions = [rng.choice(vocabulary) for _ in range(300)]
    answers = [[rng.choice(vocabulary) for _ in range(rng.choice([3, 9, 10]))] for _ in range(300)]
    naive = sum(naive_question_accuracy(p, a) for p, a in zip(predictions, answers)) / len(predictions)
    assert vqa_accuracy(predictions, answers) == pytest.approx(naive, abs=1e-12)
    with pytest.raises(ValueError):
        vqa_accuracy(["yes"], [])
    with pytest.raises(ValueError):
        question_accuracy("yes", [])


def test_vqa_score_agrees_with_the_tensor_objective_and_the_soft_score_table() -> None:
    rng = random.Random(1)
    labels = [rng.sample(range(6), rng.randint(0, 3)) for _ in range(50)]
    scores = [[rng.choice([0.3, 0.6, 0.9, 1.0]) for _ in row] for row in labels]
    predictions = [rng.randrange(6) for _ in range(50)]
    targets = torch.zeros(50, 6)
    for i, (row, row_scores) in enumerate(zip(labels, scores)):
        targets[i, row] = torch.tensor(row_scores)
    logits = torch.nn.functional.one_hot(torch.tensor(predictions), 6).float()
    assert vqa_score(predictions, labels, scores) == pytest.approx(float(batch_vqa_score(logits, targets)) / 50)
    # The soft score of an answer given by n humans is its leave-one-out accuracy with 10 humans.
    for score in (0.0, 0.3, 0.6, 0.9, 1.0):
        assert leave_one_out_accuracy(humans_agreeing(score)) == pytest.approx(score)
    with pytest.raises(ValueError):
        humans_agreeing(0.5)


# --- retrieval ----------------------------------------------------------------------------------------


def naive_recall(sims: list[list[float]], text_to_image: list[int], ks=(1, 5, 10)) -> dict[str, float]:
    """Full sorts with ties ordered negatives-first, then the position of the first positive."""
    n_images, n_texts = len(sims), len(text_to_image)
    ir = []
    for t, image in enumerate(text_to_image):
        order = sorted(range(n_images), key=lambda j: (-sims[j][t], j == image))
        ir.append(order.index(image))
    tr = []
    for i in range(n_images):
        if i not in text_to_image:
            continue
        order = sorted(range(n_texts), key=lambda t: (-sims[i][t], text_to_image[t] == i))
        tr.append(next(pos for pos, t in enumerate(order) if text_to_image[t] == i))
    out = {f"ir_r{k}": sum(r < k for r in ir) / len(ir) for k in ks}
    return out | {f"tr_r{k}": sum(r < k for r in tr) / len(tr) for k in ks}


def test_recall_by_hand_with_ties_counted_against_the_positive() -> None:
    # images 0, 1, 2; texts 0, 1 of image 0, text 2 of image 1; image 2 has no text.
    sims = torch.tensor([[0.9, 0.1, 0.5], [0.9, 0.2, 0.5], [0.3, 0.2, 0.4]])
    text_to_image = torch.tensor([0, 0, 1])
    out = retrieval_recall(sims, text_to_image, ks=(1, 2))
    # text→image ranks: text 0: image 1 ties image 0 → 1; text 1: images 1, 2 score ≥ 0.1 → 2;
    # text 2: image 0 ties → 1
    assert out["ir_r1"] == 0.0 and out["ir_r2"] == pytest.approx(2 / 3)
    # image→text (images 0 and 1 only): image 0's best text scores 0.9, nothing else above → 0;
    # image 1's text scores 0.5 below text 0 (0.9) → 1
    assert out["tr_r1"] == 0.5 and out["tr_r2"] == 1.0
    constant = retrieval_recall(torch.zeros(4, 4), torch.arange(4), ks=(1, 3, 4))
    assert constant == {"ir_r1": 0.0, "ir_r3": 0.0, "ir_r4": 1.0, "tr_r1": 0.0, "tr_r3": 0.0, "tr_r4": 1.0}


def test_recall_matches_the_naive_sort_on_random_scores_with_ties() -> None:
    generator = torch.Generator().manual_seed(0)
    for n_images, n_texts in ((7, 30), (12, 12), (3, 40)):
        sims = (torch.rand(n_images, n_texts, generator=generator) * 4).round() / 4  # many ties
        text_to_image = torch.randint(n_images, (n_texts,), generator=generator)
        out = retrieval_recall(sims, text_to_image)
        assert out == pytest.approx(naive_recall(sims.tolist(), text_to_image.tolist()))
        # order of candidates does not matter
        perm_i, perm_t = torch.randperm(n_images, generator=generator), torch.randperm(n_texts, generator=generator)
        inverse = torch.argsort(perm_i)
        assert retrieval_recall(sims[perm_i][:, perm_t], inverse[text_to_image[perm_t]]) == pytest.approx(out)
    assert mean_recall({"ir_r1": 0.2, "tr_r1": 0.4, "other": 9.0}) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="NaN"):
        retrieval_recall(torch.full((2, 2), float("nan")), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="outside"):
        retrieval_recall(torch.zeros(2, 2), torch.tensor([0, 2]))


def test_chance_recall_counts_random_top_k_sets() -> None:
    for n, p, k in ((6, 1, 2), (7, 2, 3), (8, 3, 1), (5, 2, 4), (4, 1, 9)):
        subsets = list(itertools.combinations(range(n), min(k, n)))
        brute = sum(any(c < p for c in s) for s in subsets) / len(subsets)
        assert chance_recall(k, n, p) == pytest.approx(brute), (n, p, k)
    assert chance_recall(5, 1000) == pytest.approx(0.005)
    chance = chance_retrieval_recall([0, 0, 1, 1, 1, 2], 4, ks=(1,))  # image 3 has no text
    assert chance["ir_r1"] == pytest.approx(1 / 4)
    assert chance["tr_r1"] == pytest.approx((2 / 6 + 3 / 6 + 1 / 6) / 3)


# --- accuracy -----------------------------------------------------------------------------------------


def test_accuracy_and_majority_class() -> None:
    assert accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5
    assert majority_class([0, 1, 1, 0, 1]) == 1 and majority_class([1, 0]) == 0  # tie → smaller label
    with pytest.raises(ValueError):
        accuracy([1], [1, 0])
    with pytest.raises(ValueError):
        majority_class([])
