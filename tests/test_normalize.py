"""VQA answer normalisation against cases worked by hand through the official vqaEval.py rules."""

import pytest

from vlmerge.metrics import normalize_answer

CASES = [
    # number words → digits, case folded first
    ("Two", "2"),
    ("none", "0"),
    ("Ten dogs", "10 dogs"),
    # articles dropped
    ("A dog", "dog"),
    ("an apple on the table", "apple on table"),
    # contractions gain their apostrophe; the capitalised keys ("Im") can never match after lower-casing
    ("dont", "don't"),
    ("isnt", "isn't"),
    ("Im", "im"),
    # periods: removed unless a digit follows
    ("yes.", "yes"),
    ("2.5", "2.5"),
    ("3.14.", "3.14"),
    ("mr. smith", "mr smith"),
    # punctuation without an adjacent space separates words ...
    ("black/white", "black white"),
    ("red,blue", "red blue"),
    ("T-shirt", "t shirt"),
    ("(yes)", "yes"),
    ("what's up?", "what's up"),
    # ... with an adjacent space it is deleted ...
    ("black / white", "black white"),
    ("hello, world", "hello world"),
    ("ten, eleven", "10 eleven"),
    # ... and a digit,digit comma anywhere deletes all punctuation without inserting spaces
    ("1,000", "1000"),
    ("1,000 red/blue", "1000 redblue"),
    # newline and tab become spaces, ends are stripped
    ("\tYes!\n", "yes"),
    ("", ""),
]


@pytest.mark.parametrize(("raw", "expected"), CASES)
def test_official_cases(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


def test_period_removal_is_capped_at_32_like_the_official_script() -> None:
    # vqaEval passes re.UNICODE (= 32) as the count of periodStrip.sub: only 32 of 40 periods go.
    assert normalize_answer("." * 40) == "." * 8


def test_idempotent_on_normalised_answers() -> None:
    for raw, expected in CASES:
        assert normalize_answer(expected) == expected, raw
