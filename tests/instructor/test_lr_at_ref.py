"""Instructor tests of train.lr_at: the reference's whole schedules, every step, for the constant and the cosine
schedule over several warmup ratios, run lengths and peaks the public tests do not pin down. (The grid leaves
out the (ratio, length) pairs where ratio * length in floating point lands above an integer it equals exactly,
e.g. 0.07 * 100 = 7.000000000000001: there ceil's answer is float noise, not the contract.)
Fixture: fixtures/lr_at.npz, every schedule's rates concatenated."""
import math
from fractions import Fraction

import numpy as np

import instructor_util  # first: puts the code under test on sys.path

import train

RATIOS = [0.0, 0.01, 0.03, 0.1, 0.2, 0.25, 0.5, 0.9, 1.0]
LENGTHS = [1, 2, 3, 4, 7, 10, 33, 64, 100, 101]
PEAKS = {"constant": 1e-5, "cosine": 3e-4}


def clean(ratio, total):
    """ceil(ratio * total) in floats equals it in exact decimal arithmetic (no float noise at the boundary)."""
    return math.ceil(ratio * total) == math.ceil(Fraction(str(ratio)) * total)


def cases(schedule):
    return [(schedule, r, n) for r in RATIOS for n in LENGTHS if clean(r, n)]


def config(schedule, ratio):
    return train.TrainConfig(lr=PEAKS[schedule], epochs=1, batch_size=1, micro_batch_size=1, warmup_ratio=ratio,
                             schedule=schedule)


def schedule_of(schedule, ratio, total):
    tc = config(schedule, ratio)
    return [float(train.lr_at(s, total, tc)) for s in range(total)]


def rates(schedule):
    return np.array([x for c in cases(schedule) for x in schedule_of(*c)], dtype=np.float64)


def make():
    return {s: rates(s) for s in PEAKS}


def compare(schedule):
    got, want = rates(schedule), instructor_util.load("lr_at")[schedule]
    assert len(got) == len(want), f"{schedule}: the fixture is out of date (python tests/instructor/make_fixtures.py)"
    start = 0
    for _, ratio, total in cases(schedule):
        a, b = got[start:start + total], want[start:start + total]
        if not np.allclose(a, b, rtol=1e-9, atol=1e-15):
            s = int(np.flatnonzero(~np.isclose(a, b, rtol=1e-9, atol=1e-15))[0])
            raise AssertionError(f"{schedule}, warmup_ratio {ratio}, {total} steps, peak {PEAKS[schedule]}: step {s} "
                                 f"gets {a[s]:.6g}, the reference's {b[s]:.6g} (whole schedule: {list(b[:12])}...)")
        start += total


def test_constant_schedules_match_the_reference():
    """Linear warmup over max(1, ceil(ratio * total)) steps, the peak on the last one, then the peak, unchanged."""
    compare("constant")


def test_cosine_schedules_match_the_reference():
    """The same warmup, then the cosine from the peak towards 10% of it."""
    compare("cosine")
