"""Instructor tests of upft.make_example: the reference's examples, token for token, over a grid the public tests
do not pin down: both kinds, L from 1 to past the sample's end, samples that are not the canonical tokenisation
of their text, an empty sample, finished and unfinished traces, the instruction "" / custom / default, eos off,
and max_len around each prompt's length. Built with the tiny ChatML tokenizer of tests/exercises/helpers.py.
Fixture: fixtures/make_example.npz, every case's input_ids and labels concatenated (length -1: None)."""
import numpy as np

import instructor_util  # first: puts the code under test on sys.path

import upft
from data import chat_prompt
from helpers import tokenizer

QUESTIONS = ["What is 2 + 3?", "Natalia sold clips to 48 of her friends in April.\nHow many in May?"]
ANSWER = "First, we compute the sum. Then we check the result. Therefore the final answer is \\boxed{72}."
OWN = " Begin with the first step only."
PROMPTS = [("default", {}), ("none", {"instruction": ""}), ("own", {"instruction": OWN})]
PROBE = "hello world, the quick brown fox"


def samples(tok):
    """Sampled answers: the canonical tokenisation, one token per character (a sample need not be canonical),
    3 tokens, seeded ids from the whole ordinary vocabulary, and an empty sample."""
    ids = tok.encode(ANSWER)
    chars = [tok.encode(c)[0] for c in "Then we check the result, twice."]
    rnd = [int(x) for x in np.random.default_rng(5).integers(0, 230, 20)]
    return {"canonical": ids, "chars": chars, "short": ids[:3], "random": rnd, "empty": []}


def prefix_cases(tok):
    out = []
    for q in range(len(QUESTIONS)):
        for name in ("canonical", "chars", "short", "random", "empty"):
            for L in (1, 2, 5, 8, 30):
                for p, kw in PROMPTS:
                    for eos in (True, False):
                        if p == "own" and not eos:
                            continue
                        out.append(dict(q=q, sample=name, kind="prefix", prefix_len=L, eos=eos, **kw))
    return out


def full_cases(tok):
    out = []
    for q in range(len(QUESTIONS)):
        for name in ("canonical", "chars", "random"):
            for finished in (True, False):
                for L, kw in ((8, {}), (1, {"instruction": ""}), (3, {"eos": False}),
                              (100, {"instruction": OWN, "eos": False})):
                    out.append(dict(q=q, sample=name, kind="full", prefix_len=L, finished=finished, **kw))
        out.append(dict(q=q, sample="empty", kind="full", prefix_len=8, finished=True))
    return out


def max_len_cases(tok):
    """max_len from below the prompt's length to past the whole example, for both kinds."""
    out = []
    for q in range(len(QUESTIONS)):
        for kind, kw, finished in (("prefix", {}, True), ("prefix", {"eos": False}, True),
                                   ("prefix", {"instruction": ""}, True), ("full", {}, True), ("full", {}, False)):
            n = len(chat_prompt(tok, QUESTIONS[q], kw.get("instruction", upft.PREFIX_INSTRUCTION)
                                if kind == "prefix" else ""))
            for d in (-7, -1, 0, 1, 2, 7, 8, 9, 10, 38, 39, 40, 41, 500):
                out.append(dict(q=q, sample="canonical", kind=kind, prefix_len=8, finished=finished,
                                max_len=n + d, **kw))
    return out


GROUPS = {"prefix": prefix_cases, "full": full_cases, "max_len": max_len_cases}


def run(tok, case):
    c = dict(case)
    q, sample = QUESTIONS[c.pop("q")], samples(tok)[c.pop("sample")]
    kind, L = c.pop("kind"), c.pop("prefix_len")
    ex = upft.make_example(tok, q, list(sample), kind, L, **c)
    if ex is None:
        return None
    assert set(ex) >= {"kind", "input_ids", "labels"} and ex["kind"] == kind, \
        f"make_example must return a dict with 'kind' ({kind!r}), 'input_ids' and 'labels', got {ex!r}"[:300]
    return [int(t) for t in ex["input_ids"]], [int(t) for t in ex["labels"]]


def outputs(group):
    tok = tokenizer()
    got = [run(tok, c) for c in GROUPS[group](tok)]
    lengths = np.array([-1 if g is None else len(g[0]) for g in got], dtype=np.int16)
    ids = np.array([t for g in got if g for t in g[0]], dtype=np.int16)
    labels = np.array([t for g in got if g for t in g[1]], dtype=np.int16)
    return lengths, ids, labels


def probe():
    tok = tokenizer()
    return np.array(chat_prompt(tok, PROBE, OWN) + tok.encode(ANSWER) + [tok.eos_id, tok.pad_id], dtype=np.int16)


def make():
    out = {"probe": probe()}
    for group in GROUPS:
        out[f"{group}_lengths"], out[f"{group}_ids"], out[f"{group}_labels"] = outputs(group)
    return out


def compare(group):
    lengths, ids, labels = outputs(group)
    saved = instructor_util.load("make_example")
    assert np.array_equal(probe(), saved["probe"]), \
        "the test tokenizer encodes differently from the one the fixture was made with (another `tokenizers`?): " \
        "regenerate the fixtures with the reference (python tests/instructor/make_fixtures.py make_example)"
    cases = GROUPS[group](tokenizer())
    want_len = saved[f"{group}_lengths"]
    assert len(want_len) == len(cases), f"{group}: the fixture is out of date (make_fixtures.py make_example)"
    ends = np.cumsum(np.maximum(want_len, 0))
    wrong = []
    for i, case in enumerate(cases):
        if lengths[i] != want_len[i]:
            wrong.append(f"{case}: length {lengths[i]}, the reference's {want_len[i]} (-1 = None)")
    if not wrong:
        for i, case in enumerate(cases):
            a, b = ends[i] - max(want_len[i], 0), ends[i]
            for what, got, want in (("input_ids", ids, saved[f"{group}_ids"]), ("labels", labels,
                                                                                  saved[f"{group}_labels"])):
                if not np.array_equal(got[a:b], want[a:b]):
                    k = int(np.flatnonzero(got[a:b] != want[a:b])[0])
                    wrong.append(f"{case}: {what}[{k}] = {got[a + k]}, the reference's {want[a + k]}")
                    break
    assert not wrong, f"{group}: {len(wrong)} of {len(cases)} examples differ from the reference's, e.g. " + \
                      "; ".join(wrong[:2])


def test_prefix_examples_match_the_reference():
    """L = 1 .. 30 (past a short sample's end), canonical and non-canonical samples, an empty one, the three
    instructions and eos on/off: chat_prompt(question, instruction) + the first L ids (+ EOS)."""
    compare("prefix")


def test_full_examples_match_the_reference():
    """Finished / unfinished traces; prefix_len, instruction and eos must change nothing."""
    compare("full")


def test_max_len_cuts_match_the_reference():
    """max_len below, at and past the prompt's length: None while the prompt fills max_len, else a plain cut."""
    compare("max_len")
