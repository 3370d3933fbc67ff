"""paired.py: the seed-and-question interval holds its 95% on simulated studies with a known Δ, a seed
effect and question noise; the pre-registered hierarchical bootstrap does not when seeds disagree.

The simulation is shaped like the toy-v5 runs: 2,000 held-out questions, base accuracy 65%, about 6% of
answers flipping between base and tuned model, true Δ -2.0 points. Every simulated study draws one base
answer per question (shared by its seeds, as in a real table), a per-question flip propensity (Gamma,
mean 1: some questions flip far more often than others, in every seed), and per seed a Δ_s = -2.0 + τ z.
Coverage = the share of studies whose interval holds -2.0.

Replicates: 2,000 studies per cell. A correct 95% interval then covers 95% ± 0.49 (binomial standard
error), so the accepted band [92%, 98%] is ±6 standard errors: a correct interval fails it with
probability < 1e-8, while one that ignores the seed spread covers ~55% at τ = 1.3 (measured below).

Wider cases (docs/experiments.md §1, "Coverage of the interval, wider"), each with k = 4 samples per
question drawn through uniform numbers shared by the base and tuned models and mostly by the seeds (the
evaluation seed's streams), so that most of a question's change is common to the seeds, as in the committed
summaries: sampled accuracy (fractional differences, toy-v5-shaped), the careful-opener share (decision-world-
shaped, each seed sharpening a per-question propensity), and seed effects τ·t(3) instead of τ·z. The truth
of each is computed (quadrature), not assumed. Each case has a broken interval that fails it: without the
seed term or with z for t where seeds disagree, without the question term where they do not. Measured with
20,000 studies a cell (`PYTHONPATH=. python tests/test_paired.py 20000`), the interval covers 96.0-97.7%
in every wider case: it does not under-cover, heavy tails included (it is conservative there, 96.5-97.7%,
within the [92%, 98%] band but nearer its top).
"""
import math

import numpy as np
import pytest
from scipy import integrate, special, stats

import paired

TRUE_DELTA = -0.02


def simulate(rng, studies, seeds, questions, tau, base=0.65, flips=0.06, shape=1.0, dist="normal"):
    """d[study, seed, question] (tuned - base correctness) for `studies` simulated tables; a smaller
    `shape` concentrates the flips on fewer questions (the same ones in every seed); `dist` draws the seed
    effects (`seed_noise`)."""
    correct = rng.random((studies, 1, questions)) < base
    propensity = rng.gamma(shape, 1 / shape, (studies, 1, questions))
    delta_s = TRUE_DELTA + tau * seed_noise(rng, (studies, seeds, 1), dist)
    # P(right -> wrong) and P(wrong -> right) so that the expected flips are `flips` and the mean change delta_s
    down = np.clip((flips - delta_s) / 2 / base * propensity, 0, 1)
    up = np.clip((flips + delta_s) / 2 / (1 - base) * propensity, 0, 1)
    u = rng.random((studies, seeds, questions))
    tuned = np.where(correct, u >= down, u < up)
    return tuned.astype(np.float32) - correct.astype(np.float32)


# ---- Wider cases: fractional per-question differences (sampled accuracy, the careful share) and heavy-tailed
# seed effects. Every model shares the base answers between seeds, as a real table does, and couples the tuned
# samples to the base ones through the same uniform numbers (the evaluation seed's streams, docs/method.md
# §6.1), so most of a question's change is common to the seeds, as in the committed summaries.

def seed_noise(rng, shape, dist):
    """Standardised seed effects: "normal", or "t3" (Student t, 3 degrees of freedom, scale 1: sd sqrt 3)."""
    return rng.standard_normal(shape) if dist == "normal" else rng.standard_t(3, shape)


def simulate_sampled(rng, studies, seeds, tau, dist="normal", questions=2000, k=4, a=0.345, b=0.228,
                     flips=0.09, shared=0.9):
    """Sampled accuracy, toy-v5-shaped: d[study, seed, question] = share of k tuned samples right minus share of
    k base samples right (fractional, in [-1, 1]). A question's difficulty p ~ Beta(a, b) (mean 60.2%, 24% of
    questions never right in 4: the base model's 0-4 histogram of toy-v5) and its flip propensity (Gamma, mean
    1) are shared by the seeds; each sample flips right -> wrong or wrong -> right as in `simulate`, with the
    seed's Δ_s = TRUE_DELTA + tau * noise, through a uniform number that the seeds share with probability
    `shared` (calibrated to toy-v5 UPFT's: per-question sd of the shared change 0.17, residual 0.077, 25% of
    questions changed)."""
    p = rng.beta(a, b, (studies, 1, questions, 1)).astype(np.float32)
    base = a / (a + b)
    correct = rng.random((studies, 1, questions, k), np.float32) < p
    propensity = rng.gamma(1.0, 1.0, (studies, 1, questions, 1))
    delta_s = TRUE_DELTA + tau * seed_noise(rng, (studies, seeds, 1, 1), dist)
    down = np.clip((flips - delta_s) / 2 / base * propensity, 0, 1).astype(np.float32)
    up = np.clip((flips + delta_s) / 2 / (1 - base) * propensity, 0, 1).astype(np.float32)
    full = (studies, seeds, questions, k)
    u = np.where(rng.random(full, np.float32) < shared, rng.random((studies, 1, questions, k), np.float32),
                 rng.random(full, np.float32))
    tuned = np.where(correct, u >= down, u < up)
    return tuned.mean(-1, dtype=np.float32) - correct.mean(-1, dtype=np.float32)


def flip_truth(tau, dist="normal", base=0.65, flips=0.06, shape=1.0):
    """The true Δ of the flip models (`simulate`, `simulate_sampled`: base = their mean base accuracy): the mean
    over seed effects of the expected change, exact where the flip probabilities are clipped to [0, 1]
    (E min(1, c X) for X ~ Gamma(shape, mean 1) in closed form); TRUE_DELTA where nothing is clipped."""
    def emin(c):
        if c <= 0:
            return 0.0
        return c * stats.gamma.cdf(1 / c, shape + 1, scale=1 / shape) + stats.gamma.sf(1 / c, shape, scale=1 / shape)

    def change(delta):
        return -base * emin((flips - delta) / 2 / base) + (1 - base) * emin((flips + delta) / 2 / (1 - base))
    if tau == 0:
        return change(TRUE_DELTA)
    pdf = stats.norm.pdf if dist == "normal" else stats.t(3).pdf
    return integrate.quad(lambda z: change(TRUE_DELTA + tau * z) * pdf(z), -np.inf, np.inf, limit=200)[0]


SAMPLED_BASE = 0.345 / (0.345 + 0.228)  # simulate_sampled's mean base accuracy


def in_chunks(simulator, rng, studies, *args, chunk=250, **kw):
    """simulator(rng, studies, ...) drawn `chunk` studies at a time (memory: k samples of every question)."""
    return np.concatenate([simulator(rng, min(chunk, studies - i), *args, **kw) for i in range(0, studies, chunk)])


SHARE_BETA = (117.7, 51.4)  # the decision world's base careful share: Beta-binomial fit of its 0-4 histogram
SHARE_LAMBDA, SHARE_SLOPE = 1.261, 0.1563  # mean change +4.3 points (UPFT's); d(change)/d(lambda) there


def sharpen(p, lam):
    """p^lam / (p^lam + (1 - p)^lam): lam > 1 moves a propensity towards its majority side."""
    return special.expit(lam * special.logit(p))


def simulate_share(rng, studies, seeds, tau, dist="normal", questions=1000, k=4, shared=0.99):
    """The careful-opener share, decision-world-shaped: d[study, seed, question] = share of k tuned samples that
    open carefully minus share of k base samples. A question's propensity π ~ Beta(SHARE_BETA) (mean 69.6%);
    a seed sharpens it, π_s = sharpen(π, λ_s), λ_s = SHARE_LAMBDA + tau / SHARE_SLOPE * noise (a seed spread of
    about tau in share points); a tuned sample opens carefully when its uniform number is below π_s, the base
    sample's number with probability `shared` (calibrated to the decision world's UPFT: per-question sd of the
    shared change 0.097, residual 0.036, 16% of questions changed)."""
    pi = rng.beta(*SHARE_BETA, (studies, 1, questions, 1))
    lam = SHARE_LAMBDA + tau / SHARE_SLOPE * seed_noise(rng, (studies, seeds, 1, 1), dist)
    u0, full = rng.random((studies, 1, questions, k), np.float32), (studies, seeds, questions, k)
    u = np.where(rng.random(full, np.float32) < shared, u0, rng.random(full, np.float32))
    pi, pi_s = pi.astype(np.float32), sharpen(pi, lam).astype(np.float32)
    return (u < pi_s).mean(-1, dtype=np.float32) - (u0 < pi).mean(-1, dtype=np.float32)


def share_truth(tau, dist="normal", n=4000):
    """E over seed effects and propensities of sharpen(π, λ_s) - π (quantile midpoints of the Beta; quadrature
    over the seed effect)."""
    p = stats.beta.ppf((np.arange(n) + 0.5) / n, *SHARE_BETA)

    def change(lam):
        return float(np.mean(sharpen(p, lam) - p))
    if tau == 0:
        return change(SHARE_LAMBDA)
    pdf = stats.norm.pdf if dist == "normal" else stats.t(3).pdf
    return integrate.quad(lambda z: change(SHARE_LAMBDA + tau / SHARE_SLOPE * z) * pdf(z), -np.inf, np.inf,
                          limit=200)[0]


def broken(d, seed_term=True, question_term=True, quantile=paired.t975):
    """seed_question_interval with a part removed or its t quantiles swapped (quantile=lambda df: Z975): the
    intervals each case must be able to reject."""
    d = np.asarray(d, dtype=np.float64)
    S, Q = d.shape
    per_seed, per_question, delta = d.mean(1), d.mean(0), d.mean()
    resid = d - per_seed[:, None] - per_question[None, :] + delta
    shared = max(0.0, per_question.var(ddof=1) - (resid ** 2).sum() / ((S - 1) * (Q - 1)) / S)
    half = math.sqrt(seed_term * quantile(S - 1) ** 2 * per_seed.var(ddof=1) / S
                     + question_term * quantile(Q - 1) ** 2 * shared / Q)
    return paired.Interval(delta, delta - half, delta + half, S)


def coverage(interval, d, truth=TRUE_DELTA):
    hits = [(iv.low <= truth <= iv.high) for iv in map(interval, d)]
    return float(np.mean(hits))


def without_seed_term(d):
    """The same interval with the seed component removed: one pooled question-level interval."""
    d = np.asarray(d, dtype=np.float64)
    pooled = d.mean(0)
    half = paired.t975(d.shape[1] - 1) * pooled.std(ddof=1) / np.sqrt(d.shape[1])
    return paired.Interval(d.mean(), d.mean() - half, d.mean() + half, d.shape[0])


@pytest.mark.parametrize("tau_points", [0.0, 0.8, 1.3])
def test_coverage_with_three_seeds(tau_points):
    d = simulate(np.random.default_rng(int(10 * tau_points)), 2000, 3, 2000, tau_points / 100)
    c = coverage(paired.seed_question_interval, d)
    assert 0.92 <= c <= 0.98, f"coverage {c:.3f} at tau {tau_points} points"
    if tau_points >= 0.8:  # the seed component is what holds it there
        assert coverage(without_seed_term, d) < 0.85


def the_breaks_fail(d, truth, tau_points):
    """What makes a case able to fail: with a seed spread, the interval without its seed term and the one with
    z in place of t under-cover; without one, the interval without its question term does (the questions'
    change is mostly common to the seeds, so the per-seed Δs agree more than the question set allows)."""
    if tau_points > 0:
        assert coverage(lambda x: broken(x, seed_term=False), d, truth) < 0.85
        assert coverage(lambda x: broken(x, quantile=lambda df: paired.Z975), d, truth) < 0.92
    else:
        assert coverage(lambda x: broken(x, question_term=False), d, truth) < 0.85


@pytest.mark.parametrize("tau_points", [0.0, 1.3])
def test_coverage_of_sampled_accuracy(tau_points):
    """Fractional differences: k = 4 samples per question, difficulty and flip propensity shared by the seeds."""
    d = in_chunks(simulate_sampled, np.random.default_rng(20 + int(10 * tau_points)), 2000, 3, tau_points / 100)
    truth = flip_truth(tau_points / 100, base=SAMPLED_BASE, flips=0.09)
    c = coverage(paired.seed_question_interval, d, truth)
    assert 0.92 <= c <= 0.98, f"coverage {c:.3f} at tau {tau_points} points"
    the_breaks_fail(d, truth, tau_points)


@pytest.mark.parametrize("tau_points", [0.0, 1.3])
def test_coverage_of_share_differences(tau_points):
    """The careful share, base vs tuned: k = 4 samples per question, a propensity in [0, 1] per question that
    each seed sharpens by its own amount."""
    d = in_chunks(simulate_share, np.random.default_rng(40 + int(10 * tau_points)), 2000, 3, tau_points / 100)
    truth = share_truth(tau_points / 100)
    c = coverage(paired.seed_question_interval, d, truth)
    assert 0.92 <= c <= 0.98, f"coverage {c:.3f} at tau {tau_points} points"
    the_breaks_fail(d, truth, tau_points)


@pytest.mark.parametrize("model", ["greedy", "sampled", "share"])
def test_coverage_with_heavy_tailed_seed_effects(model):
    """Seed effects tau * t(3) (scale 1.3 points, the normal cases' tau; sd 2.25 points), 3 seeds. The truth
    moves off -2.0 where the greedy model's flip probabilities clip at 0 (flip_truth accounts for it)."""
    rng, tau = np.random.default_rng(60 + len(model)), 0.013
    if model == "greedy":
        d, truth = in_chunks(simulate, rng, 2000, 3, 2000, tau, dist="t3"), flip_truth(tau, "t3")
    elif model == "sampled":
        d = in_chunks(simulate_sampled, rng, 2000, 3, tau, dist="t3")
        truth = flip_truth(tau, "t3", base=SAMPLED_BASE, flips=0.09)
    else:
        d, truth = in_chunks(simulate_share, rng, 2000, 3, tau, dist="t3"), share_truth(tau, "t3")
    c = coverage(paired.seed_question_interval, d, truth)
    assert 0.92 <= c <= 0.98, f"coverage {c:.3f}, {model}, t(3) seed effects"
    the_breaks_fail(d, truth, 1.3)


def test_the_preregistered_bootstrap_undercovers_when_seeds_disagree():
    # why the tables changed: at a UPFT-like seed spread the bootstrap's "95%" covers well under 95%
    d = simulate(np.random.default_rng(7), 300, 3, 2000, 0.013)
    c = coverage(lambda x: paired.hierarchical_bootstrap(x, draws=400), d)
    assert c < 0.92, c
    assert coverage(paired.seed_question_interval, d) > c


def test_a_t_interval_over_seeds_alone_misses_what_the_seeds_share():
    """Why the question component is there: when the same questions flip in every seed, the per-seed Δs
    agree more than the question set allows, and a t-interval over them under-covers."""
    d = simulate(np.random.default_rng(11), 2000, 3, 2000, 0.0, shape=0.2)

    def t_over_seeds(x):
        per_seed = x.mean(1)
        half = paired.t975(2) * per_seed.std(ddof=1) / np.sqrt(3)
        return paired.Interval(per_seed.mean(), per_seed.mean() - half, per_seed.mean() + half, 3)
    assert coverage(t_over_seeds, d) < 0.92
    assert coverage(paired.seed_question_interval, d) >= 0.95


def test_two_seeds_and_one_seed():
    d = simulate(np.random.default_rng(3), 2000, 2, 2000, 0.013)
    assert 0.92 <= coverage(paired.seed_question_interval, d) <= 0.99  # t with 1 degree of freedom: wide
    one = paired.seed_question_interval(d[0, :1])
    assert one.seeds == 1 and paired.verdict(one) == "not assessable"
    assert paired.verdict(one, across_seeds=False) in {"helps", "hurts", "no effect", "inconclusive"}
    # one seed: exactly that seed's question-level t-interval
    x = d[0, 0].astype(np.float64)
    half = stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
    assert one.low == pytest.approx(x.mean() - half) and one.high == pytest.approx(x.mean() + half)


def test_interval_by_hand():
    # 3 seeds x 4 questions; the components computed the long way
    d = np.array([[1, 0, 0, -1], [1, 1, 0, 0], [0, 0, 0, -1]], dtype=float)
    iv = paired.seed_question_interval(d)
    per_seed = d.mean(1)
    per_question = d.mean(0)
    resid = sum((d[s, q] - per_seed[s] - per_question[q] + d.mean()) ** 2 for s in range(3) for q in range(4)) / 6
    shared = max(0.0, np.var(per_question, ddof=1) - resid / 3)
    half = np.sqrt(stats.t.ppf(0.975, 2) ** 2 * np.var(per_seed, ddof=1) / 3 + stats.t.ppf(0.975, 3) ** 2 * shared / 4)
    assert iv.delta == pytest.approx(1 / 12) and iv.high - iv.delta == pytest.approx(half)
    same = paired.seed_question_interval(np.zeros((3, 5)))
    assert same.low == same.high == 0.0


def test_t_quantiles():
    for df in [1, 2, 5, 29, 30, 31, 60, 1999, 10 ** 6]:
        assert paired.t975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=5e-6)


@pytest.mark.parametrize("low,high,rule", [(0.012, 0.03, "helps"), (0.011, 0.014, "helps"), (-0.03, -0.011, "hurts"),
                                           (-0.015, 0.015, "no effect"), (-0.01, 0.02, "inconclusive")])
def test_verdict_order(low, high, rule):
    assert paired.verdict(paired.Interval((low + high) / 2, low, high, 3)) == rule


def cases():
    """(name, simulator(rng, studies), truth) of every wider case, for the measurement below."""
    out = []
    for dist in ["normal", "t3"]:
        for tau in [0.0, 0.8, 1.3] if dist == "normal" else [0.8, 1.3]:
            t, tag = tau / 100, f"{dist} tau {tau}"
            if dist == "t3" or tau == 1.3:
                out.append((f"greedy, {tag}", lambda r, n, t=t, x=dist: simulate(r, n, 3, 2000, t, dist=x),
                            flip_truth(t, dist)))
            out.append((f"sampled, {tag}", lambda r, n, t=t, x=dist: simulate_sampled(r, n, 3, t, dist=x),
                        flip_truth(t, dist, base=SAMPLED_BASE, flips=0.09)))
            out.append((f"share, {tag}", lambda r, n, t=t, x=dist: simulate_share(r, n, 3, t, dist=x),
                        share_truth(t, dist)))
    return out


if __name__ == "__main__":  # PYTHONPATH=. python tests/test_paired.py [studies]: docs/experiments.md's coverage
    import sys
    studies = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    variants = {"interval": {}, "no seed term": {"seed_term": False},
                "z for t": {"quantile": lambda df: paired.Z975}, "no question term": {"question_term": False}}
    for i, (name, simulator, truth) in enumerate(cases()):
        rng, hits = np.random.default_rng(1000 + i), dict.fromkeys(variants, 0)
        for start in range(0, studies, 250):
            d = simulator(rng, min(250, studies - start))
            for key, kw in variants.items():
                hits[key] += sum(iv.low <= truth <= iv.high for iv in (broken(x, **kw) for x in d))
            if start == 0:  # broken() with nothing removed is paired.seed_question_interval
                assert all(broken(x).high == pytest.approx(paired.seed_question_interval(x).high) for x in d[:5])
        c = hits["interval"] / studies
        se = math.sqrt(c * (1 - c) / studies)
        print(f"{name}: truth {100 * truth:+.3f}, coverage {100 * c:.2f}% (SE {100 * se:.2f}); "
              + ", ".join(f"{k} {100 * v / studies:.1f}%" for k, v in hits.items() if k != "interval"), flush=True)
