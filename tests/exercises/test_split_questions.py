"""Contract of upft.split_questions: exactly round(p * n) full-trace questions (p = the FULL fraction),
a random choice fixed by the seed alone, not the first ones in file order."""
import random

import pytest
import torch

import upft
from data import UpftError


def test_p_is_the_full_trace_fraction():
    for n, p in [(1000, 0.1), (10, 0.29), (7, 0.5), (40, 0.3), (3, 0.9)]:
        got = upft.split_questions(n, p, seed=0)
        assert isinstance(got, list) and len(got) == n, f"n={n}: expected a list of {n} bools"
        assert sum(got) == round(p * n), f"n={n}, p={p}: expected round(p * n) = {round(p * n)} full traces " \
                                         f"(True), got {sum(got)}"


def test_edges():
    assert upft.split_questions(10, 0.0, 0) == [False] * 10, "p = 0: no full traces"
    assert upft.split_questions(10, 1.0, 0) == [True] * 10, "p = 1: every question gets a full trace"
    assert upft.split_questions(0, 0.5, 0) == [], "no questions: an empty list"
    for p in (-0.1, 1.5):
        with pytest.raises(UpftError):
            upft.split_questions(10, p, 0)


def test_same_seed_same_split_whatever_the_global_rng():
    torch.manual_seed(123)
    random.seed(123)
    a = upft.split_questions(200, 0.25, seed=7)
    torch.manual_seed(456)
    torch.rand(10)
    random.seed(456)
    b = upft.split_questions(200, 0.25, seed=7)
    assert a == b, "the split must depend on (n, p, seed) only, not on the global random state"
    others = {tuple(upft.split_questions(200, 0.25, seed=s)) for s in range(5)}
    assert len(others) == 5, "different seeds must give different splits"


def test_random_not_file_order():
    got = upft.split_questions(1000, 0.1, seed=0)
    chosen = [i for i, f in enumerate(got) if f]
    assert chosen != list(range(100)), "the full-trace questions must be a random choice, not the first 100"
    assert chosen != list(range(900, 1000)), "the full-trace questions must be a random choice, not the last 100"
    assert min(chosen) < 500 <= max(chosen), "the choice must spread over the whole data set"
    # every question is equally likely: over 400 seeds each of 20 questions is chosen ~100 times
    counts = [0] * 20
    for s in range(400):
        for i, f in enumerate(upft.split_questions(20, 0.25, seed=s)):
            counts[i] += f
    assert min(counts) > 60 and max(counts) < 140, f"each question should be chosen ~100 times in 400 seeds: {counts}"
