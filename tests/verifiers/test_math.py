"""Math answer checking: a table of cases, the extraction rules, adversarial input in the pool."""
import time

import pytest

from repirl_jax.verifiers import check_math, check_math_batch, extract_answer, verify_math_batch

CASES = [  # (response, gold, expected)
    ("\\boxed{5}", "5", True),
    ("so x = \\boxed{x=5}", "5", True),
    ("\\boxed{\\frac{1}{2}}", "0.5", True),
    ("\\boxed{0.5}", "\\frac{1}{2}", True),
    ("\\boxed{\\frac12}", "\\frac{1}{2}", True),
    ("\\boxed{1/2}", "\\frac{1}{2}", True),
    ("\\boxed{1,000}", "1000", True),
    ("\\boxed{1000}", "1,000", True),
    ("\\boxed{-3}", "-3", True),
    ("\\boxed{-3.0}", "-3", True),
    ("\\boxed{3}", "-3", False),
    ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", True),
    ("\\boxed{(1, 2)}", "(1,2)", True),
    ("\\boxed{(2, 1)}", "(1,2)", False),
    ("\\boxed{\\{2, 1\\}}", "\\{1,2\\}", True),
    ("\\boxed{(x+1)^2}", "x^2+2x+1", True),
    ("\\boxed{x^2+1}", "x^2+2x+1", False),
    ("\\boxed{\\text{3}}", "3", True),
    ("\\boxed{10\\%}", "10", True),
    ("\\boxed{\\dfrac{3}{4}}", "0.75", True),
    ("\\boxed{\\pi}", "\\pi", True),
    ("\\boxed{2\\pi}", "\\pi", False),
    ("\\boxed{\\sqrt{2}/2}", "\\frac{\\sqrt{2}}{2}", True),
    ("\\boxed{4} wait no \\boxed{5}", "5", True),  # the last box counts
    ("\\boxed{5} hmm, actually \\boxed{4}", "5", False),
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt3}{2}", True),  # nested braces
    ("Natalia sold 48 + 24 = 72 clips.\n#### 72", "72", True),  # GSM8K form
    ("#### 1,234", "1234", True),
    ("#### 71", "72", False),
    ("Adding them up, the answer is 42.", "42", True),
    ("The answer is $\\frac{2}{3}$.", "\\frac{2}{3}", True),
    ("the answer is: 7", "7", True),
    ("I think it might be 5", "5", False),  # no final-answer marker
    ("", "5", False),
    ("\\boxed{}", "5", False),
    ("\\boxed{5", "5", False),  # unbalanced: no box
    ("\\boxed{five}", "5", False),
    ("\\boxed{18 dollars}", "18", True),
    ("\\boxed{\\$18}", "18", True),
    ("\\boxed{18.00}", "18", True),
    ("\\boxed{\\frac{6}{8}}", "3/4", True),
    ("\\boxed{x=2, y=3}", "(2, 3)", True),  # a system's solution read as the tuple
    ("\\boxed{-\\frac{1}{3}}", "-1/3", True),
    ("\\boxed{\\infty}", "\\infty", True),
    ("\\boxed{3 \\cdot 4}", "12", True),
]


def test_table_has_enough_cases():
    assert len(CASES) >= 40


@pytest.mark.parametrize("response,gold,expected", CASES)
def test_check_math(response, gold, expected):
    assert check_math(response, gold) is expected


def test_extraction_rules():
    assert extract_answer("a \\boxed{1} b \\boxed{\\frac{a}{b}} c") == "\\frac{a}{b}"
    assert extract_answer("#### 3\n#### 4") == "4"
    assert extract_answer("\\boxed{2}\n#### 3") == "2"  # a box beats ####
    assert extract_answer("So the answer is 12.") == "12"
    assert extract_answer("nothing here") is None


def test_batch_equals_single_and_keeps_order():
    pairs = [(r, g) for r, g, _ in CASES]
    assert check_math_batch(pairs, timeout_s=10, workers=2) == [e for _, _, e in CASES]


def test_adversarial_answers_fail_within_the_timeout():
    hostile = [
        ("\\boxed{9^{9^{9^{9^{9}}}}}", "3"),  # power tower: sympy would try to evaluate it
        ("\\boxed{" + "(" * 5000 + "1" + ")" * 5000 + "}", "1"),  # 5,000 nested parentheses
        ("\\boxed{" + "1" * (1 << 20) + "}", "1"),  # a megabyte answer
        ("x" * (1 << 20), "1"),  # a megabyte of nothing
        ("\\boxed{" + "{" * 3000 + "}" * 3000 + "}", "1"),  # deep braces
    ]
    t0 = time.monotonic()
    verdicts = verify_math_batch(hostile + [("\\boxed{7}", "7")], timeout_s=3, workers=2)
    elapsed = time.monotonic() - t0
    assert [v.correct for v in verdicts] == [False] * len(hostile) + [True]
    assert all(v.reason for v in verdicts[:-1])
    # two workers, at most one 3 s timeout each in flight at once, plus worker respawns
    assert elapsed < 3 * len(hostile) / 2 + 3 + 5, elapsed
