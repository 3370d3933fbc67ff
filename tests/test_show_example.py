"""scripts/show_example.py (show_example): the supervised tokens of a training example, marked."""
import json
import re
import subprocess
import sys

import pytest

from conftest import ROOT
from data import IGNORE, Tokenizer, load_rows
from grader import extract_answer, is_equiv
from upft import PREFIX_INSTRUCTION, make_example
from util_tok import make_tokenizer_dir

sys.path.insert(0, str(ROOT / "scripts"))
import show_example as script  # noqa: E402  (scripts/show_example.py)

show_example = script.show_example

VERDICT = re.compile(r"the sampled answer: (.+) \(gold (.+): (right|wrong)\)")


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return Tokenizer.from_pretrained(make_tokenizer_dir(tmp_path_factory.mktemp("tok")))


def test_brackets_mark_each_supervised_token(tok):
    resp = tok.encode("First, we compute the sum.\nThen we check.")
    ex = make_example(tok, "What is 2 + 3?", resp, "prefix", 4)
    out = show_example(tok, ex, color=False)
    head, body = out.split("\n", 1)
    assert head == f"prefix example: {len(ex['input_ids'])} tokens, 5 supervised, each [in brackets]"
    pieces = "".join(f"[{tok.decode([i])}]" for i in resp[:4])
    assert body.endswith("What is 2 + 3?" + PREFIX_INSTRUCTION + "<|im_end|>\n<|im_start|>assistant\n" + pieces
                         + "[<|im_end|>]")
    assert "\x1b[" not in out
    full = show_example(tok, make_example(tok, "What is 2 + 3?", resp, "full", 4), color=False)
    assert "[.][\\n]\n[The]" in full  # a newline token stays visible, closes on its line, then the line breaks
    assert "\\n\n" not in full


def test_colour_closes_a_newline_token_before_the_line_break(tok):
    resp = tok.encode("First, we compute the sum.\nThen we check.")
    out = show_example(tok, make_example(tok, "What is 2 + 3?", resp, "full", 4), color=True)
    assert "\\n\x1b[0m\n" in out and "\\n\n" not in out
    for line in out.splitlines():  # no coloured background runs on past the end of a line
        assert line.count("\x1b[30;4") <= line.count("\x1b[0m"), repr(line)


def test_colour_and_unmarked_first_token(tok):
    ex = {"input_ids": [5, 6, 7, 8], "labels": [5, IGNORE, 7, 8]}  # label 0 is never a target (shift)
    out = show_example(tok, ex, color=True)
    assert out.startswith("training example: 4 tokens, 2 supervised, on a coloured background\n")
    assert out.count("\x1b[30;42m") == 1 and out.count("\x1b[30;46m") == 1  # tokens 7 and 8
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out.split("\n", 1)[1])
    assert plain == tok.decode([5, 6, 7, 8]) and "[" not in plain


def test_verdict_grades_the_sample(tok):
    boxed = tok.encode("so it is \\boxed{5}.")
    assert script.verdict(tok, boxed, "5") == "the sampled answer: 5 (gold 5: right)"
    assert script.verdict(tok, boxed, "14") == "the sampled answer: 5 (gold 14: wrong)"
    assert script.verdict(tok, tok.encode("no box, 5"), "5") == "the sampled answer: none found (gold 5: wrong)"
    assert script.verdict(tok, tok.encode("so 2 + 3 = 5."), "5", "gsm8k") == "the sampled answer: 5 (gold 5: right)"
    assert script.verdict(tok, boxed, None) == "the sampled answer: 5 (no gold answer given)"


def test_cli_reads_a_run(tok, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    resp = tok.encode("First, we compute the sum.")
    exs = [make_example(tok, "q1?", resp, "full", 8), make_example(tok, "q2?", resp, "prefix", 3)]
    (run / "train_examples.jsonl").write_text("".join(json.dumps(e) + "\n" for e in exs))
    (run / "args.json").write_text(json.dumps({"model_dir": str(tok.source_dir)}))
    cmd = [sys.executable, str(ROOT / "scripts" / "show_example.py"), "--run", str(run), "--no-color"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    first, second = p.stdout.split("\n\n", 1)
    assert first.startswith("prefix example:") and "4 supervised" in first
    assert second.startswith("full example:")
    p = subprocess.run(cmd + ["--index", "5"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.startswith("error:") and "2 examples" in p.stderr


def test_cli_samples_from_the_toy_world():
    cmd = [sys.executable, str(ROOT / "scripts" / "show_example.py"), "--prefix-len", "4", "--index", "2", "--no-color"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    prefix, full, last = p.stdout.split("\n\n")
    assert prefix.startswith("prefix example:") and ", 5 supervised," in prefix.splitlines()[0]
    assert PREFIX_INSTRUCTION in prefix and PREFIX_INSTRUCTION not in full
    assert prefix.rstrip().endswith("[<|im_end|>]") and full.startswith("full example:")
    # the full example supervises the same sampled answer, so it starts with the prefix's 4 tokens
    assert full.split("<|im_start|>assistant\n", 1)[1].startswith(prefix.split("<|im_start|>assistant\n", 1)[1][:-len("[<|im_end|>]")])
    # the last line grades the sample against toy training question 2's gold answer, as eval.py would
    answer, gold, word = VERDICT.fullmatch(last.strip()).groups()
    assert gold == load_rows(ROOT / "assets" / "toy" / "train.jsonl")[2]["gold"]
    sample = re.sub(r"\[([^\]]*)\]", r"\1", full.split("<|im_start|>assistant\n", 1)[1]).replace("\\n", "")
    assert answer == extract_answer(sample) and word == ("right" if is_equiv(answer, gold) else "wrong")
