"""Instructor tests of grader.extract_answer (with its helper _last_boxed, called only through extract_answer):
the reference's answers for responses the public tests do not pin down, each under dataset None, "gsm8k" and
"math" (only "gsm8k" switches the last-number fallback and the first number of a `####` line on; "math" reads
like None). Fixture: fixtures/extract_answer.json, the responses and the three answer lists."""
import instructor_util  # first: puts the code under test on sys.path

import grader

DATASETS = [None, "gsm8k", "math"]
BOXES = [
    "The answer is \\boxed{42}.",
    "We get $\\boxed{\\dfrac{3}{4}}$ in the end.",
    "so \\boxed{\\frac{\\sqrt{2}}{2}} is the value",
    "\\boxed{(1, 2)} and then \\boxed{[3, 4)}",
    "Final: \\boxed{ x^{2}+1 }",
    "\\boxed{\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}}",
    "\\fbox{7}",
    "first \\boxed{1}, then \\fbox{\\frac{1}{3}}, finally \\boxed{\\{a, b\\}}",
    "\\fbox{2} then \\boxed{9} then \\fbox{10}",
    "a box \\boxed{12} then text {with} braces } after",
    "Answer: \\boxed  {5}.",
    "Answer: $\\boxed 17$ and more",
    "Answer: \\boxed 3\nnext line 8",
    "\\boxed{3} but the final one is cut off \\boxed{\\frac{1}{",
    "the last box is empty: \\boxed{2} \\boxed{ }",
    "\\boxed{\\text{Evelyn}}",
    "\\boxed{10\\%} of 200 is 20",
    "\\boxed{1,000}",
    "\\boxed{-3.5} degrees, 12 of them",
]
THINK = [
    "<think>I guess \\boxed{2}.</think>\nSo the answer is \\boxed{3}.",
    "<think>2 + 2 = 4, so \\boxed{4}</think>",
    "<think>2 + 2 = 4</think>\nThe answer is 4.",
    "<think>first</think> \\boxed{5} <think>again</think> \\boxed{6}",
    "<think>a \\boxed{1}</think> b \\boxed{7} </think> the end, 9 apples",
    "<think>no closing tag, \\boxed{8}",
    "</think>#### 11",
    "<think>#### 5</think> we are done",
]
MARKS = [
    "Natalia sold 48 + 24 = 72 clips.\n#### 72",
    "#### 1,234",
    "#### 1,234,567.",
    "#### -7",
    "#### 3.50",
    "####12",
    "#### $1,000",
    "#### 18 dollars and 20 cents",
    "#### 5\nsome text\n#### 7",
    "#### \nThe total is 9 apples.",
    "The answer is 4.\n#### four",
]
NUMBERS = [
    "She has 3 apples and buys 4 more, so 7.",
    "The total is 1,234 dollars.",
    "It costs $12.50, then -3 is the change",
    "Big: 1,234,567 and small: 0.25",
    "no numbers at all here",
    "x = 2, y = 3, so x + y = 5, thus 5 it is.",
    "",
    None,
]
RESPONSES = BOXES + THINK + MARKS + NUMBERS


def answers(responses):
    return {str(d): [grader.extract_answer(r, d) for r in responses] for d in DATASETS}


def make():
    return {"responses": RESPONSES, "answers": answers(RESPONSES)}


def compare(group, what):
    saved = instructor_util.load("extract_answer")
    got = answers(group)
    assert saved["responses"] == RESPONSES, "the fixture is out of date (python tests/instructor/make_fixtures.py)"
    i = RESPONSES.index(group[0])
    wrong = [f"extract_answer({r!r}, dataset={d!r}) = {got[str(d)][j]!r}, the reference's "
             f"{saved['answers'][str(d)][i + j]!r}"
             for d in DATASETS for j, r in enumerate(group) if got[str(d)][j] != saved["answers"][str(d)][i + j]]
    assert not wrong, f"{what}: {len(wrong)} of {3 * len(group)} answers differ from the reference's, e.g. " + \
                      "; ".join(wrong[:3])


def test_boxes_match_the_reference():
    """The last \\boxed{} / \\fbox{}, nested braces counted, spaces before the brace, `\\boxed 5`, cut-off and
    empty last boxes (then the later rules, never an earlier box)."""
    compare(BOXES, "boxes")


def test_think_matches_the_reference():
    """Only what follows the LAST </think> is read."""
    compare(THINK, "</think>")


def test_gsm8k_marks_and_numbers_match_the_reference():
    """`####` lines (the last one; commas of a plain number dropped; with gsm8k, its first number), then for
    gsm8k only the last number of the text; None elsewhere."""
    compare(MARKS + NUMBERS, "#### lines and numbers")
