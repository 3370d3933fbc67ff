"""data.show_example and scripts/show_example.py: the supervised tokens of a training example, marked."""
import json
import re
import subprocess
import sys

import pytest

from conftest import ROOT
from data import IGNORE, Tokenizer, show_example
from upft import PREFIX_INSTRUCTION, make_example
from util_tok import make_tokenizer_dir


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
    assert "[.][\\n\n][The]" in full  # a newline token stays visible, and the layout keeps the line break


def test_colour_and_unmarked_first_token(tok):
    ex = {"input_ids": [5, 6, 7, 8], "labels": [5, IGNORE, 7, 8]}  # label 0 is never a target (shift)
    out = show_example(tok, ex, color=True)
    assert out.startswith("training example: 4 tokens, 2 supervised, on a coloured background\n")
    assert out.count("\x1b[30;42m") == 1 and out.count("\x1b[30;46m") == 1  # tokens 7 and 8
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out.split("\n", 1)[1])
    assert plain == tok.decode([5, 6, 7, 8]) and "[" not in plain


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
    prefix, full = p.stdout.split("\n\n", 1)
    assert prefix.startswith("prefix example:") and ", 5 supervised," in prefix.splitlines()[0]
    assert PREFIX_INSTRUCTION in prefix and PREFIX_INSTRUCTION not in full
    assert prefix.rstrip().endswith("[<|im_end|>]") and full.startswith("full example:")
    # the full example supervises the same sampled answer, so it starts with the prefix's 4 tokens
    assert full.split("<|im_start|>assistant\n", 1)[1].startswith(prefix.split("<|im_start|>assistant\n", 1)[1][:-len("[<|im_end|>]")])
