"""Contract of grader.extract_answer: after the last </think>, the LAST \\boxed{} (nested braces counted),
else a `####` line, else (GSM8K only) the last number; None otherwise."""
import grader


def check(text, want, dataset=None):
    got = grader.extract_answer(text, dataset)
    assert got == want, f"extract_answer({text!r}, dataset={dataset!r}) should be {want!r}, got {got!r}"


def test_last_box_wins():
    check("Try \\boxed{3}. Wait, that is wrong; so the answer is \\boxed{5}.", "5")
    check("\\boxed{1} \\boxed{2} \\boxed{3}", "3")
    check("First \\boxed{7}, then \\fbox{8}", "8")
    check("\\fbox{8} and finally \\boxed{9}", "9")


def test_nested_braces():
    check("So $x = \\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}")
    check("\\boxed{x^{2} + \\sqrt{y_{1}}} and more text } here", "x^{2} + \\sqrt{y_{1}}")
    check("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}")


def test_box_forms():
    check("The answer is \\boxed { 12 }.", "12")
    check("The answer is $\\boxed 5$.", "5")
    check("no box here", None)
    check("cut off inside \\boxed{12", None)
    check("empty \\boxed{}", None)
    check("", None)
    check(None, None)


def test_only_after_the_last_think():
    check("<think>maybe \\boxed{3}</think> The answer is \\boxed{4}.", "4")
    check("<think>so \\boxed{3}\n</think>\nI am not sure.", None)
    check("<think>\\boxed{1}</think> \\boxed{2} </think> \\boxed{6}", "6")
    check("<think>\\boxed{1}</think> draft: \\boxed{2} </think> no answer", None)


def test_gsm8k_marks_and_numbers():
    check("5 + 5 = 10\n#### 1,000", "1000")
    check("#### 42.", "42")
    check("#### 18 dollars", "18", "gsm8k")
    check("#### 18 dollars", "18 dollars")
    check("#### 3\nbut in the end \\boxed{4}", "4")
    check("She has 3 apples and buys 4, so 1,207 in total, not 12.", "12", "gsm8k")
    check("She has 3 apples and buys 4, so 7 in total.", "7", "gsm8k")
    check("She has 3 apples and buys 4, so 7 in total.", None)
