"""Paired comparisons of a tuned model with its base model, over training seeds and held-out questions
(docs/method.md §6.1, docs/experiments.md §1.2).

d[s, q] = correct_tuned(s, q) - correct_base(q): greedy (-1, 0, 1) or sampled (the difference of the
shares of K correct answers). Δ is the mean of d over seeds and questions. Two 95% intervals:

- `seed_question_interval`, the one the tables decide by. Δ has two sources of noise: the training seed
  (its samples, its data order) and the finite question set. The per-seed Δs estimate the first (their
  spread also carries the question noise that is not shared between seeds); the questions' mean d over
  seeds estimates the second (what every seed shares). Each gets the t quantile of its own degrees of
  freedom (S - 1 and Q - 1), and the half-widths add in quadrature. Its coverage is measured on simulated
  data in tests/test_paired.py (92-98% for 3 seeds whatever the seed spread).
- `hierarchical_bootstrap`, the interval the toy-v5 study pre-registered: it resamples S seeds with
  replacement, which shrinks the seed variance by (S - 1) / S, to zero with one seed, so it under-covers
  when seeds disagree (tests/test_paired.py measures that too). Kept to show beside the corrected one.

With one seed there is no seed spread to measure: the interval is that seed's question-level interval,
and no across-seed verdict is given ("not assessable").
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Z975 = 1.959963984540054
# Student t, 97.5th percentile, degrees of freedom 1..30; beyond 30 the Cornish-Fisher expansion below
T975 = [12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139,
        2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963,
        2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272]


def t975(df: float) -> float:
    """The 97.5th percentile of Student's t with `df` degrees of freedom (df >= 1)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= 30:
        return T975[int(df) - 1]
    z, v = Z975, df  # Cornish-Fisher: within 1e-5 of the exact value from 30 degrees of freedom on
    return z + (z ** 3 + z) / (4 * v) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * v ** 2) + \
        (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * v ** 3)


@dataclass
class Interval:
    delta: float  # mean paired difference, accuracy units
    low: float
    high: float
    seeds: int

    def cell(self) -> str:
        """'+1.2 [+0.3, +2.0]' in points."""
        return f"{100 * self.delta:+.1f} [{100 * self.low:+.1f}, {100 * self.high:+.1f}]"


def seed_question_interval(d) -> Interval:
    """95% interval of Δ = mean(d) for d of shape (seeds, questions), paired per question (module doc)."""
    d = np.asarray(d, dtype=np.float64)
    if d.ndim != 2 or d.shape[1] < 2:
        raise ValueError(f"need d of shape (seeds, questions >= 2), got {d.shape}")
    S, Q = d.shape
    per_seed, per_question, delta = d.mean(1), d.mean(0), d.mean()
    if S == 1:  # one run: its question-level interval, nothing about other seeds
        half = t975(Q - 1) * d[0].std(ddof=1) / math.sqrt(Q)
        return Interval(delta, delta - half, delta + half, 1)
    # two-way (seed x question) decomposition: E[seed_var] = tau^2 + sigma_e^2 / Q,
    # E[question_var] = sigma_q^2 + sigma_e^2 / S, E[residual] = sigma_e^2
    seed_var = per_seed.var(ddof=1)
    resid = d - per_seed[:, None] - per_question[None, :] + delta
    residual = (resid ** 2).sum() / ((S - 1) * (Q - 1))
    shared_var = max(0.0, per_question.var(ddof=1) - residual / S)  # sigma_q^2: what every seed shares
    half = math.sqrt(t975(S - 1) ** 2 * seed_var / S + t975(Q - 1) ** 2 * shared_var / Q)
    return Interval(delta, delta - half, delta + half, S)


def hierarchical_bootstrap(d, draws: int = 4000, seed: int = 0) -> Interval:
    """The pre-registered interval of the toy-v5 study: seeds resampled with replacement, then questions
    (the same for every seed of a draw); the 2.5th and 97.5th percentiles of the draws' mean d."""
    d = np.asarray(d, dtype=np.float64)
    S, Q = d.shape
    rng = np.random.default_rng(seed)
    boot = np.empty(draws)
    for b in range(draws):
        boot[b] = d[rng.integers(0, S, S)][:, rng.integers(0, Q, Q)].mean()
    low, high = np.percentile(boot, [2.5, 97.5])
    return Interval(d.mean(), low, high, S)


def verdict(iv: Interval, across_seeds: bool = True) -> str:
    """The decision rule of docs/experiments.md §1, checked in this order: helps (interval above +1 point),
    hurts (below -1), no effect (within ±1.5), else inconclusive. The order matters: an interval inside
    [+1, +1.5] is "helps" (and inside [-1.5, -1] "hurts"), not "no effect". With `across_seeds` and one
    seed: "not assessable" (a verdict about the method needs more than one training run)."""
    if across_seeds and iv.seeds < 2:
        return "not assessable"
    if iv.low > 0.01:
        return "helps"
    if iv.high < -0.01:
        return "hurts"
    if -0.015 <= iv.low and iv.high <= 0.015:
        return "no effect"
    return "inconclusive"
