"""Metrics against naive references and hand-worked cases: VQA accuracy (the official script's rule) and
score, recall@k, accuracy."""

from __future__ import annotations

import itertools
import json
import random
import re
from pathlib import Path

import pytest
import torch

from tests.builders import naive_question_accuracy
from vlmerge.metrics import (
    ACCURACY_MODES,
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
from vlmerge.tasks import vqa_eval
from vlmerge.tasks.vqa_eval import read_human_answers

# --- VQA ----------------------------------------------------------------------------------------------


# The official script (GT-Vision-Lab/VQA vqaEval.py after a013f00), re-written from its code for the
# tests, independent of vlmerge.metrics: answer dicts with ids, mutated in place, ``item != gtAnsDatum``.
_SCRIPT_PUNCT = list(';/[]"{}()=+\\_-><@`,?!')  # in the script's order
_SCRIPT_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_SCRIPT_COMMA = re.compile(r"(\d)(\,)(\d)")
_SCRIPT_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5"}
_SCRIPT_NUMBERS |= {"six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_SCRIPT_CONTRACTIONS = {"dont": "don't", "isnt": "isn't"}  # the only ones the answer pool below can reach


def _script_punctuation(in_text: str) -> str:
    out_text = in_text
    for p in _SCRIPT_PUNCT:
        if (p + " " in in_text or " " + p in in_text) or (re.search(_SCRIPT_COMMA, in_text) is not None):
            out_text = out_text.replace(p, "")
        else:
            out_text = out_text.replace(p, " ")
    return _SCRIPT_PERIOD.sub("", out_text, re.UNICODE)  # the script's count=32 slip, kept


def _script_digit_article(in_text: str) -> str:
    out_text = []
    for word in in_text.lower().split():
        word = _SCRIPT_NUMBERS.setdefault(word, word)
        if word not in ("a", "an", "the"):
            out_text.append(word)
    return " ".join(_SCRIPT_CONTRACTIONS.get(w, w) for w in out_text)


def script_question_accuracy(prediction: str, humans: list[str]) -> float:
    gts = {"answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(humans)]}
    for ans_dic in gts["answers"]:
        ans_dic["answer"] = ans_dic["answer"].replace("\n", " ").replace("\t", " ").strip()
    res_ans = prediction.replace("\n", " ").replace("\t", " ").strip()
    gt_answers = [ans["answer"] for ans in gts["answers"]]
    if len(set(gt_answers)) > 1:
        for ans_dic in gts["answers"]:
            ans_dic["answer"] = _script_punctuation(ans_dic["answer"])
            ans_dic["answer"] = _script_digit_article(ans_dic["answer"])
        res_ans = _script_punctuation(res_ans)
        res_ans = _script_digit_article(res_ans)
    gt_acc = []
    for gt_ans_datum in gts["answers"]:
        other_gt_ans = [item for item in gts["answers"] if item != gt_ans_datum]
        matching_ans = [item for item in other_gt_ans if item["answer"] == res_ans]
        gt_acc.append(min(1, float(len(matching_ans)) / 3))
    return float(sum(gt_acc)) / len(gt_acc)


@pytest.mark.parametrize(("agreeing", "expected"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_leave_one_out_accuracy_by_hand(agreeing: int, expected: float) -> None:
    # 2 of 10: leaving out one of the two → 1/3 (2 subsets), any other → 2/3 (8 subsets): (2/3 + 16/3) / 10 = 0.6
    # 3 of 10: (3 × 2/3 + 7 × 1) / 10 = 0.9; 4 or more: every subset keeps ≥ 3 → 1.0
    humans = ["red"] * agreeing + ["blue"] * (10 - agreeing)
    assert question_accuracy("red", humans) == pytest.approx(expected)
    assert question_accuracy("red", humans, mode="always_normalize") == pytest.approx(expected)
    assert leave_one_out_accuracy(agreeing) == pytest.approx(expected)


# (prediction, humans, official, always-normalised), each worked through the script by hand.
ALL_AGREE = [
    ("yes", ["yes"] * 10, 1.0, 1.0),  # identical raw strings: compared raw, match
    ("Yes", ["yes"] * 10, 0.0, 1.0),  # no lower-casing when the humans agree
    ("yes", ["yes."] * 10, 0.0, 1.0),  # nor punctuation removal
    ("yes.", ["yes."] * 10, 1.0, 1.0),
    ("2", ["two"] * 10, 0.0, 1.0),  # nor number words
    ("dog", ["a dog"] * 10, 0.0, 1.0),  # nor articles
    ("yes", ["Yes"] * 10, 0.0, 1.0),
    # newline/tab → space and stripping come first, so these humans all agree on "yes" ...
    ("yes", ["yes\n"] * 4 + [" yes"] * 3 + ["\tyes "] * 3, 1.0, 1.0),
    ("\n yes\t", ["yes"] * 10, 1.0, 1.0),  # ... the prediction is stripped too ...
    ("Yes", ["yes\n"] * 4 + [" yes"] * 6, 0.0, 1.0),  # ... and, agreeing, they are not lower-cased
    ("black white", ["black\twhite"] * 10, 1.0, 1.0),  # an inner tab becomes a space
    ("black/white", ["black white"] * 10, 0.0, 1.0),
]
DISAGREE = [
    # humans differ (even if only in case): both sides get the full normalisation
    ("YES", ["Yes"] * 5 + ["yes"] * 5, 1.0, 1.0),
    ("2", ["two", "2", "Two", "two"] + ["three"] * 6, 1.0, 1.0),  # 4 match after normalising → 1.0
    ("dog", ["a dog", "dog", "The dog"] + ["cat"] * 7, 0.9, 0.9),  # 3 → 0.9
    ("Two", ["two", "2."] + ["3"] * 8, 0.6, 0.6),  # 2 → 0.6 ("2." loses its period)
    ("dog", ["a dog"] + ["cat"] * 9, 0.3, 0.3),  # 1 → 0.3
    ("bird", ["dog"] * 5 + ["cat"] * 5, 0.0, 0.0),  # 0 → 0.0
    ("dont", ["don't", "don't"] + ["no"] * 8, 0.6, 0.6),  # contraction gets its apostrophe
    ("black/white", ["black white"] + ["x"] * 9, 0.3, 0.3),  # slash between words → space
    ("yes", ["yes."] * 9 + ["no"], 1.0, 1.0),  # 9 "yes." normalised → 9 matches
]


@pytest.mark.parametrize(("prediction", "humans", "official", "normalised"), ALL_AGREE + DISAGREE)
def test_question_accuracy_by_hand(prediction: str, humans: list[str], official: float, normalised: float) -> None:
    assert question_accuracy(prediction, humans) == pytest.approx(official)
    assert question_accuracy(prediction, humans, mode="official") == pytest.approx(official)
    assert question_accuracy(prediction, humans, mode="always_normalize") == pytest.approx(normalised)
    assert script_question_accuracy(prediction, humans) == pytest.approx(official)  # the reference agrees
    assert naive_question_accuracy(prediction, humans) == pytest.approx(normalised)


def test_vqa_accuracy_is_the_unrounded_mean_over_questions() -> None:
    cases = ALL_AGREE + DISAGREE
    predictions, answers = [p for p, *_ in cases], [h for _, h, *_ in cases]
    official = sum(o for *_, o, _ in cases) / len(cases)
    normalised = sum(n for *_, n in cases) / len(cases)
    assert vqa_accuracy(predictions, answers) == pytest.approx(official, abs=1e-12)
    assert vqa_accuracy(predictions, answers, mode="always_normalize") == pytest.approx(normalised, abs=1e-12)
    assert vqa_accuracy(["a", "b", "c"], [["a"] * 10, ["b"] * 10, ["x"] * 10]) == 2 / 3  # not 66.67
    assert ACCURACY_MODES == ("official", "always_normalize")
    with pytest.raises(ValueError, match="mode"):
        question_accuracy("yes", ["yes"], mode="lenient")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        vqa_accuracy(["yes"], [])
    with pytest.raises(ValueError):
        vqa_accuracy([], [])
    with pytest.raises(ValueError):
        question_accuracy("yes", [])


POOL = ["yes", "Yes", "yes.", "YES", " yes", "yes\n", "\tyes", "no", "No.", "no!", "2", "two", "Two", "2."]
POOL += ["a dog", "dog", "the dog", "Dog", "dont", "don't", "black/white", "black white", "black\twhite", "1,000"]
POOL += ["1000", "2.5", "(yes)", "isnt", "one", "red", "Red.", "red ", "none", "0"]


def random_question(rng: random.Random) -> tuple[str, list[str]]:
    n = rng.choice([10, 10, 10, 9, 3, 1])
    kind = rng.random()
    if kind < 0.35:  # all humans give one string (sometimes with whitespace variants of it)
        answer = rng.choice(POOL)
        humans = [rng.choice([answer, f" {answer}", f"{answer}\n", f"\t{answer} "]) for _ in range(n)]
        if rng.random() < 0.5:
            humans = [answer] * n
    elif kind < 0.7:  # two or three answers
        few = rng.sample(POOL, rng.randint(2, 3))
        humans = [rng.choice(few) for _ in range(n)]
    else:
        humans = [rng.choice(POOL) for _ in range(n)]
    prediction = rng.choice(POOL + humans)  # often one of this question's own answers
    return prediction, humans


def test_vqa_accuracy_matches_the_script_on_random_questions() -> None:
    rng = random.Random(0)
    questions = [random_question(rng) for _ in range(3000)]
    differ = 0
    for prediction, humans in questions:
        official = question_accuracy(prediction, humans)
        assert official == pytest.approx(script_question_accuracy(prediction, humans), abs=1e-12), (prediction, humans)
        normalised = question_accuracy(prediction, humans, mode="always_normalize")
        assert normalised == pytest.approx(naive_question_accuracy(prediction, humans), abs=1e-12)
        assert official <= normalised + 1e-12
        differ += official != pytest.approx(normalised)
    assert differ > 50  # the random sets do exercise the all-agree rule
    predictions, answers = [p for p, _ in questions], [h for _, h in questions]
    script = sum(script_question_accuracy(p, h) for p, h in questions) / len(questions)
    assert vqa_accuracy(predictions, answers) == pytest.approx(script, abs=1e-12)


def test_the_evaluate_stage_scores_the_raw_human_answers(tmp_path: Path) -> None:
    # The annotation file's answers reach the metric unnormalised, so the all-agree rule applies there.
    humans = {1: ["Yes"] * 10, 2: ["yes"] * 10, 3: ["Yes"] * 5 + ["yes"] * 5, 4: ["two"] * 10}
    path = tmp_path / "annotations.json"
    records = [
        {"question_id": q, "answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(h)]}
        for q, h in humans.items()
    ]
    path.write_text(json.dumps({"annotations": records}))
    read = read_human_answers(path)
    assert read == humans
    answers, ids = ["yes", "yes", "yes", "2"], [1, 2, 3, 4]
    # official: 0 + 1 + 1 + 0; from the soft scores (normalised counts): 1 + 1 + 1 + 1
    assert vqa_eval._accuracy(answers, [1.0] * 4, ids, read) == pytest.approx(0.5)
    assert vqa_eval._accuracy(answers, [1.0] * 4, ids, None) == pytest.approx(1.0)


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
