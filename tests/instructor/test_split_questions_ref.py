"""Instructor tests of upft.split_questions: the exact split (which questions get a full trace) of the reference,
for a grid of (n, p, seed) the public tests do not pin down, and p outside [0, 1] refused. Fixture:
fixtures/split_questions.json, one string of 0/1 per case ("1" = full trace) or "UpftError"."""
import instructor_util  # first: puts the code under test on sys.path

import upft
from data import UpftError

NS = [0, 1, 2, 3, 4, 5, 7, 10, 17, 33, 64, 101]
PS = [0.0, 0.05, 0.1, 0.125, 0.2, 0.25, 0.29, 0.3, 0.5, 0.75, 0.9, 1.0]
SEEDS = [0, 1, 7, 2025]
LARGE = [(1000, 0.1, s) for s in (0, 3)] + [(500, 0.3, 11)]   # the paper's p on a data set of realistic size
BAD = [(10, p, 0) for p in (-0.1, -1e-9, 1.0 + 1e-9, 1.5, 10.0)] + [(0, -0.5, 0), (0, 2.0, 3)]


def key(n, p, seed):
    return f"n={n} p={p!r} seed={seed}"


def bits(n, p, seed):
    """The split as a 0/1 string, or the name of the refusal (UpftError only: any other error propagates)."""
    try:
        got = upft.split_questions(n, p, seed)
    except UpftError:
        return "UpftError"
    assert isinstance(got, list) and len(got) == n and all(isinstance(f, bool) for f in got), \
        f"split_questions({n}, {p}, {seed}) must return a list of {n} bools, got {got!r}"[:300]
    return "".join("1" if f else "0" for f in got)


def grid():
    return [(n, p, s) for n in NS for p in PS for s in SEEDS]


def make():
    return {"grid": {key(*c): bits(*c) for c in grid()}, "large": {key(*c): bits(*c) for c in LARGE},
            "bad": {key(*c): bits(*c) for c in BAD}}


def compare(cases, saved, what):
    wrong = []
    for c in cases:
        got, want = bits(*c), saved[key(*c)]
        if got != want:
            wrong.append(f"{key(*c)}: got {got[:40]}, the reference's {want[:40]}")
    assert not wrong, f"{what}: {len(wrong)} of {len(cases)} splits differ from the reference's, e.g. " + \
                      "; ".join(wrong[:3])


def test_splits_match_the_reference_on_a_grid():
    """432 (n, p, seed): the same round(p * n) questions, chosen by the same seeded permutation (a
    torch.Generator seeded with `seed`, its randperm(n)'s first k positions)."""
    compare(grid(), instructor_util.load("split_questions")["grid"], "grid of (n, p, seed)")


def test_large_splits_match_the_reference():
    compare(LARGE, instructor_util.load("split_questions")["large"], "n = 500 and 1000")


def test_p_outside_the_unit_interval_is_refused():
    compare(BAD, instructor_util.load("split_questions")["bad"], "p outside [0, 1] (UpftError, even for n = 0)")
