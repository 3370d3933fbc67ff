"""Instructor tests of problem upft_rollouts: upft.upft_rollouts over 12 questions with a fixed fake sampler
(upft.generate_answers swapped out: no model decodes), for two splits, num_samples 1 and 4, prefixes on and
off, and upft.prefix_vote on seeded random sample sets, against the reference's saved outputs."""
import instructor_util  # noqa: F401  (first: the code under test on sys.path)

import random

import pytest

import upft

QUESTIONS = [f"question {k}" for k in range(12)]
SPLITS = {"every4": [k % 4 == 1 for k in range(12)], "mixed": [k in (0, 5, 6, 11) for k in range(12)]}
CASES = [(split, n, pre) for split in SPLITS for n, pre in ((1, True), (4, True), (4, False))]
L, BUDGET = 3, 8
MODEL, TOK = object(), object()


def trace(question, j):
    """Sample j of a question, without a budget: 1..12 tokens; its first 4 tokens take one of 3 forms (samples 1
    and 2 share theirs, so with 4 samples the vote often overturns sample 0)."""
    k = int(question.split()[-1])
    form = [k % 3, (k + 1) % 3, (k + 1) % 3, k % 2][j % 4]
    n = 1 + (7 * k + 5 * j) % 12
    return [(k + form * (t + 1)) % 11 + 1 if t < 4 else (k * j + t) % 11 + 1 for t in range(n)]


class FakeSampler:
    def __init__(self):
        self.requests = {}

    def __call__(self, model, tok, questions, max_new_tokens, *, n=1, batch_size=64, prefixes=None, progress=True,
                 **sampling):
        for q in questions:
            self.requests.setdefault(q, []).append([max_new_tokens, n])
        return [[trace(q, j)[:max_new_tokens] for j in range(n)] for q in questions]


def name(split, n, pre):
    return f"{split} n={n} prefixes={pre}"


def compute(split, n, pre):
    fake = FakeSampler()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(upft, "generate_answers", fake)
        rollouts, sampled = upft.upft_rollouts(MODEL, TOK, QUESTIONS, SPLITS[split], L, n, max_new_tokens=BUDGET,
                                               seed=3, batch_size=8, prefixes=pre, temperature=0.6, progress=False)
    return {"rollouts": [dict(r) for r in rollouts], "sampled": sampled, "requests": fake.requests}


def vote_cases():
    """30 seeded sample sets (1..6 samples of 0..5 tokens over 3 ids, so prefixes collide and tie) and an L."""
    rng = random.Random(0)
    out = []
    for _ in range(30):
        samples = [[rng.randint(1, 3) for _ in range(rng.randint(0, 5))] for _ in range(rng.randint(1, 6))]
        out.append([samples, rng.randint(1, 4)])
    return out


def make():
    votes = [[s, L_, *upft.prefix_vote(s, L_)] for s, L_ in vote_cases()]
    return {"cases": {name(*c): compute(*c) for c in CASES}, "votes": votes}


def test_rollouts_match_the_reference():
    want = instructor_util.load("upft_rollouts")["cases"]
    for case in CASES:
        got, ref = compute(*case)["rollouts"], want[name(*case)]["rollouts"]
        assert len(got) == len(ref), f"{name(*case)}: {len(got)} rollouts, the reference has {len(ref)}"
        for g, r in zip(got, ref):
            plain = lambda d: {k: v for k, v in d.items() if k != "agreement"}  # noqa: E731
            assert plain(g) == plain(r), f"{name(*case)}: rollout {g}, the reference's is {r}"
            agree = ("agreement" in g) == ("agreement" in r) and g.get("agreement") == pytest.approx(r.get("agreement"))
            assert agree, f"{name(*case)}, question {r['index']}: agreement {g.get('agreement')}, " \
                          f"expected {r.get('agreement')}"


def test_tokens_sampled_match_the_reference():
    want = instructor_util.load("upft_rollouts")["cases"]
    for case in CASES:
        got = compute(*case)["sampled"]
        assert got == want[name(*case)]["sampled"], \
            f"{name(*case)}: {got} tokens sampled, the reference counts {want[name(*case)]['sampled']}"


def test_what_each_question_is_sampled_with_matches_the_reference():
    want = instructor_util.load("upft_rollouts")["cases"]
    for case in CASES:
        got = {q: sorted(r) for q, r in compute(*case)["requests"].items() if r}
        ref = {q: sorted(r) for q, r in want[name(*case)]["requests"].items()}
        assert got == ref, f"{name(*case)}: {{question: [[budget, n]]}} {got}, the reference's {ref}"


def test_prefix_votes_match_the_reference():
    for samples, L_, winner, agreement in instructor_util.load("upft_rollouts")["votes"]:
        got = upft.prefix_vote(samples, L_)
        assert got[0] == winner and got[1] == pytest.approx(agreement), \
            f"prefix_vote({samples}, {L_}) = {got}, the reference's ({winner}, {agreement})"
