"""Contract of upft.make_example: the prefix example (prompt + instruction, first L token ids, EOS) and
the full example (plain prompt, whole trace, EOS only if it finished), labels aligned with input_ids and
IGNORE on the prompt, max_len, and the `instruction` / `eos` parameters the controls switch off (they
change the prefix example only). Built with a real (tiny) ChatML tokenizer."""
import pytest

import upft
from data import IGNORE, chat_prompt
from helpers import tokenizer

Q = "What is 2 + 3?"
ANSWER = "First, we compute the sum. Then we check the result. Therefore the final answer is \\boxed{5}."
L = 8


def response():
    tok = tokenizer()
    return tok, tok.encode(ANSWER)


def supervised(ex):
    return [t for t in ex["labels"] if t != IGNORE]


def check_aligned(ex, n_prompt):
    ids, labels = ex["input_ids"], ex["labels"]
    assert len(ids) == len(labels), f"input_ids and labels must have the same length ({len(ids)} vs {len(labels)})"
    assert labels[:n_prompt] == [IGNORE] * n_prompt, "every prompt token must be labelled IGNORE (-100)"
    assert labels[n_prompt:] == ids[n_prompt:], \
        "labels must be ALIGNED with input_ids (labels[t] == input_ids[t]; the loss does the shift)"


def test_prefix_example_is_prompt_with_instruction_l_tokens_and_eos():
    tok, resp = response()
    ex = upft.make_example(tok, Q, resp, "prefix", L)
    prompt = chat_prompt(tok, Q, upft.PREFIX_INSTRUCTION)
    assert ex["kind"] == "prefix"
    assert ex["input_ids"][:len(prompt)] == prompt, \
        "the prompt must be chat_prompt(tok, question, PREFIX_INSTRUCTION): the instruction in the user turn"
    assert supervised(ex) == resp[:L] + [tok.eos_id], \
        f"supervised tokens must be the first L = {L} response token ids, then EOS ({tok.eos_id}); got {supervised(ex)}"
    assert ex["input_ids"] == prompt + resp[:L] + [tok.eos_id]
    check_aligned(ex, len(prompt))


def test_prefix_instruction_goes_into_the_user_turn():
    tok, resp = response()
    text = tok.decode(upft.make_example(tok, Q, resp, "prefix", L)["input_ids"])
    assert Q + upft.PREFIX_INSTRUCTION + "<|im_end|>" in text, \
        "the prefix instruction is appended to the question, inside the user turn"
    assert text.endswith("<|im_start|>assistant\n" + tok.decode(resp[:L]) + "<|im_end|>")


def test_prefix_counts_model_tokens_not_characters_or_words():
    tok, resp = response()
    for n in (1, 3, 5, 12):
        ex = upft.make_example(tok, Q, resp, "prefix", n)
        assert supervised(ex) == resp[:n] + [tok.eos_id], f"L = {n}: the first {n} token ids, then EOS"
    # a sampled answer need not be the canonical tokenisation of its text: one token per character
    chars = [tok.encode(c)[0] for c in "First, we compute"]
    ex = upft.make_example(tok, Q, chars, "prefix", 5)
    assert supervised(ex) == chars[:5] + [tok.eos_id], \
        "use the sampled token ids as they are (no decode and re-encode)"


def test_short_sample_keeps_all_its_tokens_then_eos():
    tok, resp = response()
    ex = upft.make_example(tok, Q, resp[:3], "prefix", L)
    assert supervised(ex) == resp[:3] + [tok.eos_id], "a sample shorter than L: all of it, then EOS"


def test_full_example_is_plain_prompt_whole_trace_and_eos():
    tok, resp = response()
    ex = upft.make_example(tok, Q, resp, "full", L)
    prompt = chat_prompt(tok, Q)
    assert ex["kind"] == "full"
    assert upft.PREFIX_INSTRUCTION not in tok.decode(ex["input_ids"]), "no instruction on full-trace examples"
    assert ex["input_ids"] == prompt + resp + [tok.eos_id], "full: chat_prompt(tok, question) + whole response + EOS"
    assert supervised(ex) == resp + [tok.eos_id], "every answer token and the EOS are supervised (L is not used)"
    check_aligned(ex, len(prompt))


def test_unfinished_full_trace_gets_no_eos():
    tok, resp = response()
    ex = upft.make_example(tok, Q, resp, "full", L, finished=False)
    assert supervised(ex) == resp, "a trace that hit the sampling budget must not teach stopping (no EOS)"
    ex = upft.make_example(tok, Q, resp, "prefix", L, finished=False)
    assert supervised(ex) == resp[:L] + [tok.eos_id], "`finished` concerns full traces only: a prefix always ends in EOS"


def test_max_len():
    tok, resp = response()
    n = len(chat_prompt(tok, Q, upft.PREFIX_INSTRUCTION))
    assert upft.make_example(tok, Q, resp, "prefix", L, max_len=n) is None, \
        "max_len = prompt length: no answer token fits, so no example (None)"
    assert upft.make_example(tok, Q, resp, "prefix", L, max_len=n - 5) is None
    ex = upft.make_example(tok, Q, resp, "prefix", L, max_len=n + 3)
    assert ex is not None and len(ex["input_ids"]) == len(ex["labels"]) == n + 3, \
        f"max_len = prompt + 3: the example is cut to {n + 3} tokens"
    assert supervised(ex) == resp[:3], "cut from the right, without forcing an EOS in"
    ex = upft.make_example(tok, Q, resp, "prefix", L, max_len=n + L + 1)
    assert supervised(ex) == resp[:L] + [tok.eos_id], "a max_len that fits everything changes nothing"
    m = len(chat_prompt(tok, Q))
    ex = upft.make_example(tok, Q, resp, "full", L, max_len=m + 10)
    assert ex["input_ids"] == chat_prompt(tok, Q) + resp[:10] and supervised(ex) == resp[:10], \
        "a long full trace is cut at max_len, no EOS forced"


def test_instruction_parameter_is_the_prefix_instruction():
    tok, resp = response()
    ex = upft.make_example(tok, Q, resp, "prefix", L, instruction="")
    assert ex["input_ids"] == chat_prompt(tok, Q) + resp[:L] + [tok.eos_id], \
        "instruction='' (the --no-instruction control): the plain prompt chat_prompt(tok, question)"
    check_aligned(ex, len(chat_prompt(tok, Q)))
    own = " Begin with the first step only."
    ex = upft.make_example(tok, Q, resp, "prefix", L, instruction=own)
    prompt = chat_prompt(tok, Q, own)
    assert ex["input_ids"] == prompt + resp[:L] + [tok.eos_id], \
        "the prompt is chat_prompt(tok, question, instruction): use the `instruction` argument"
    text = tok.decode(ex["input_ids"])
    assert Q + own + "<|im_end|>" in text and upft.PREFIX_INSTRUCTION not in text, \
        "the instruction given is appended to the question inside the user turn, instead of PREFIX_INSTRUCTION"
    check_aligned(ex, len(prompt))


def test_eos_false_supervises_exactly_l_tokens():
    tok, resp = response()
    prompt = chat_prompt(tok, Q, upft.PREFIX_INSTRUCTION)
    ex = upft.make_example(tok, Q, resp, "prefix", L, eos=False)
    assert supervised(ex) == resp[:L], \
        f"eos=False (the --no-eos control): exactly the first L = {L} tokens, no EOS; got {supervised(ex)}"
    assert ex["input_ids"] == prompt + resp[:L]
    check_aligned(ex, len(prompt))
    assert supervised(upft.make_example(tok, Q, resp[:3], "prefix", L, eos=False)) == resp[:3], \
        "eos=False and a sample shorter than L: all of it, no EOS"


def test_full_example_ignores_instruction_and_eos():
    tok, resp = response()
    for finished in (True, False):
        plain = upft.make_example(tok, Q, resp, "full", L, finished=finished)
        for kw in ({"instruction": ""}, {"instruction": " Begin with the first step only."}, {"eos": False},
                   {"instruction": "", "eos": False}):
            assert upft.make_example(tok, Q, resp, "full", L, finished=finished, **kw) == plain, \
                f"{kw} concern the prefix example only: a full example (finished={finished}) must not change"


def test_unknown_kind_is_an_error():
    tok, resp = response()
    with pytest.raises(ValueError):
        upft.make_example(tok, Q, resp, "middle", L)
