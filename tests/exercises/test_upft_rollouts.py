"""Contract of problem upft_rollouts: upft.prefix_vote (the most frequent L-token prefix, ties to the prefix
drawn first, agreement = share of all samples) and upft.upft_rollouts (UPFT's self-generated data: one full
trace per D_f question, num_samples prefixes of only L tokens per D_p question and their vote, one rollout
per question sorted by index, the tokens sampled). upft.generate_answers is swapped for a fake sampler:
sample j of a question is its j-th trace below, cut at the token budget asked for; no model decodes."""
import pytest

import upft
from data import UpftError

MODEL, TOK = object(), object()   # stand-ins: upft_rollouts hands them to the sampler, nothing else reads them

# Each question's samples as they would be decoded without a budget (sample j of n: the j-th, cyclically).
TRACES = {
    "q0": [[10, 11, 12, 13, 14, 15, 16, 17]],                              # a long answer
    "q1": [[20, 21]],                                                      # stops after 2 tokens
    "q2": [[5, 6, 9, 9, 9, 9, 9], [3, 4, 4, 1], [3, 4, 4, 2, 2], [5, 0, 0]],  # 4 samples: [3, 4, 4] wins 2 of 4
    "q3": [[7], [7], [7, 8, 8, 8], [6, 6, 6, 6]],                           # 4 samples: [7] wins 2 of 4
    "q4": [[40, 41, 42, 43, 44, 45, 46, 47, 48], [49, 49]],                # longer than any budget below
    "q5": [[50, 51, 52]],                                                  # stops right after 3 tokens
}
QUESTIONS = list(TRACES)
FULL = [False, True, False, False, True, False]   # D_f = {1, 4}, D_p = {0, 2, 3, 5}
L, BUDGET = 3, 6


class FakeSampler:
    """Stands in for upft.generate_answers: per question, its n first samples (TRACES) cut at max_new_tokens.
    Records every call."""

    def __init__(self):
        self.calls = []

    def __call__(self, model, tok, questions, max_new_tokens, *, n=1, batch_size=64, prefixes=None, progress=True,
                 **sampling):
        assert model is MODEL and tok is TOK, "the model and the tokenizer are passed to generate_answers as given"
        self.calls.append(dict(questions=list(questions), max_new_tokens=max_new_tokens, n=n, batch_size=batch_size,
                               prefixes=prefixes, progress=progress, **sampling))
        return [[list(TRACES[q][j % len(TRACES[q])][:max_new_tokens]) for j in range(n)] for q in questions]

    def requests(self):
        """{question: [(token budget, samples), ...]} over every call."""
        out = {}
        for c in self.calls:
            for q in c["questions"]:
                out.setdefault(q, []).append((c["max_new_tokens"], c["n"]))
        return out


def rollouts(num_samples=1, prefixes=True, full=FULL, prefix_len=L, **kw):
    """(rollouts, tokens sampled, the fake sampler) of upft_rollouts over QUESTIONS."""
    fake = FakeSampler()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(upft, "generate_answers", fake)
        got = upft.upft_rollouts(MODEL, TOK, QUESTIONS, full, prefix_len, num_samples, max_new_tokens=BUDGET,
                                 prefixes=prefixes, **kw)
    assert isinstance(got, tuple) and len(got) == 2, f"expected (rollouts, tokens sampled), got {got!r}"
    return got[0], got[1], fake


def prefix(i, ids, finished, agreement=1.0):
    return {"index": i, "kind": "prefix", "response_ids": ids, "finished": finished, "agreement": agreement}


def full_trace(i, ids, finished):
    return {"index": i, "kind": "full", "response_ids": ids, "finished": finished}


# ----------------------------------------------------------------------------- prefix_vote (§3.3)
def test_majority_of_l_token_prefixes():
    winner, agreement = upft.prefix_vote([[1, 2, 3], [1, 2, 4], [5, 6, 7]], 2)
    assert winner == [1, 2] and isinstance(winner, list), f"expected [1, 2] (a list), got {winner!r}"
    assert agreement == pytest.approx(2 / 3), f"2 of 3 samples share [1, 2]: agreement 2/3, got {agreement}"


def test_only_the_first_l_tokens_vote():
    samples = [[4, 4, 9, 1], [8, 8, 8, 8], [4, 4, 0, 2], [8, 8, 8, 8], [4, 4, 3, 3]]
    assert upft.prefix_vote(samples, 2) == ([4, 4], pytest.approx(0.6)), \
        "with L = 2, three samples start [4, 4] (they differ later): [4, 4] wins with 3/5"
    assert upft.prefix_vote(samples, 3) == ([8, 8, 8], pytest.approx(0.4)), \
        "with L = 3, [8, 8, 8] is the only 3-token prefix drawn twice"
    assert upft.prefix_vote([[5, 1, 2, 3], [5, 1, 2, 9], [7, 0, 0, 0]], 1) == ([5], pytest.approx(2 / 3)), \
        "L = 1: the first token votes"


def test_ties_go_to_the_prefix_drawn_first_not_to_token_ids():
    assert upft.prefix_vote([[9, 9, 0], [1, 1, 0], [1, 1, 5], [9, 9, 2]], 2) == ([9, 9], 0.5), \
        "tie between [9, 9] (drawn first) and [1, 1]: the first drawn wins, whatever the ids"
    assert upft.prefix_vote([[1, 1, 0], [9, 9, 0], [9, 9, 5], [1, 1, 2]], 2) == ([1, 1], 0.5), \
        "tie between [1, 1] (drawn first) and [9, 9]: the first drawn wins"
    assert upft.prefix_vote([[5, 0], [3, 0], [7, 0], [7, 1], [3, 1], [5, 1]], 1)[0] == [5], \
        "three-way tie: the prefix of sample 0 wins"
    assert upft.prefix_vote([[2, 8], [6, 3], [4, 4]], 2) == ([2, 8], pytest.approx(1 / 3)), \
        "all different: the first sample wins with agreement 1/3"


def test_short_samples_are_their_own_prefixes():
    assert upft.prefix_vote([[7], [7], [7, 8]], 2) == ([7], pytest.approx(2 / 3)), \
        "a sample that stopped after 1 token has the prefix [7], which differs from [7, 8]"
    assert upft.prefix_vote([[3, 4]], 8) == ([3, 4], 1.0), "one sample shorter than L: itself, agreement 1"
    assert upft.prefix_vote([[3, 4, 5, 6]], 2) == ([3, 4], 1.0), "one sample: its L-token prefix, agreement 1"


def test_no_samples_is_an_error():
    with pytest.raises(ValueError):
        upft.prefix_vote([], 4)


# ----------------------------------------------------------------------------- upft_rollouts (§3.2)
def test_d_f_gets_one_full_trace_and_d_p_num_samples_prefixes():
    for num_samples in (1, 4):
        _, _, fake = rollouts(num_samples)
        got = fake.requests()
        want = {q: [(BUDGET, 1)] if f else [(L, num_samples)] for q, f in zip(QUESTIONS, FULL)}
        assert got == want, (f"num_samples={num_samples}: each D_f question (full[i] True) is sampled once, one "
                             f"full trace of max_new_tokens={BUDGET}; each D_p question once, {num_samples} samples "
                             f"of prefix_len={L} tokens. Expected {{question: [(budget, n)]}} {want}, got {got}")


def test_one_rollout_per_question_sorted_by_index():
    got, _, _ = rollouts(num_samples=1)
    want = [prefix(0, [10, 11, 12], False), full_trace(1, [20, 21], True), prefix(2, [5, 6, 9], False),
            prefix(3, [7], True), full_trace(4, [40, 41, 42, 43, 44, 45], False), prefix(5, [50, 51, 52], False)]
    assert [r.get("index") for r in got] == list(range(6)), \
        f"one rollout per question, sorted by index: expected indices 0..5, got {[r.get('index') for r in got]}"
    for g, w in zip(got, want):
        assert g == w, f"question {w['index']}: expected the rollout {w}, got {g}"


def test_one_sample_is_its_own_first_l_tokens():
    got, _, _ = rollouts(num_samples=1)
    prefixes = {r["index"]: (r["response_ids"], r["agreement"]) for r in got if r["kind"] == "prefix"}
    want = {0: ([10, 11, 12], 1.0), 2: ([5, 6, 9], 1.0), 3: ([7], 1.0), 5: ([50, 51, 52], 1.0)}
    assert prefixes == want, f"num_samples=1: each D_p question's one sample cut to L={L} tokens, agreement 1.0; " \
                             f"expected {{index: (response_ids, agreement)}} {want}, got {prefixes}"


def test_prefixes_are_voted_among_num_samples():
    got, _, _ = rollouts(num_samples=4)
    prefixes = {r["index"]: (r["response_ids"], r["agreement"]) for r in got if r["kind"] == "prefix"}
    want = {0: ([10, 11, 12], 1.0), 2: ([3, 4, 4], 0.5), 3: ([7], 0.5), 5: ([50, 51, 52], 1.0)}
    assert prefixes == want, (f"num_samples=4: the most frequent {L}-token prefix of each D_p question and its "
                              f"share of the 4 samples (question 2: [3, 4, 4] twice, not sample 0's [5, 6, 9]); "
                              f"expected {{index: (response_ids, agreement)}} {want}, got {prefixes}")
    fulls = [(r["index"], r["response_ids"]) for r in got if r["kind"] == "full"]
    assert fulls == [(1, [20, 21]), (4, [40, 41, 42, 43, 44, 45])], \
        f"the full traces do not change with num_samples (one sample each), got {fulls}"


def test_finished_says_the_sample_stopped_within_its_budget():
    for num_samples in (1, 4):
        got, _, _ = rollouts(num_samples)
        finished = {r["index"]: r["finished"] for r in got}
        want = {0: False, 1: True, 2: False, 3: True, 4: False, 5: False}
        assert finished == want, (f"num_samples={num_samples}: a prefix shorter than L={L} stopped (finished); "
                                  f"one of L tokens did not (question 5); a full trace shorter than "
                                  f"max_new_tokens={BUDGET} finished, one that hit it did not. Expected {want}, "
                                  f"got {finished}")


def test_tokens_sampled_count_the_stop_token():
    _, one, _ = rollouts(num_samples=1)
    assert one == 20, ("num_samples=1: tokens sampled = every decoded token, plus the stop token of each sample "
                       "shorter than its budget (L for prefixes, max_new_tokens for full traces): "
                       f"3 + (2 + 1) + 3 + (1 + 1) + 6 + 3 = 20, got {one}")
    _, four, _ = rollouts(num_samples=4)
    assert four == 55, ("num_samples=4: every one of the 4 prefix samples counts: 12 + 12 + (2 + 2 + 3 + 3) + 12 "
                        f"for D_p, 3 + 6 for the full traces: 55, got {four}")


def test_prefixes_false_samples_only_the_full_traces():
    got, sampled, fake = rollouts(num_samples=4, prefixes=False)
    want = [full_trace(1, [20, 21], True), full_trace(4, [40, 41, 42, 43, 44, 45], False)]
    assert got == want, f"prefixes=False: the same full traces and no prefix rollout; expected {want}, got {got}"
    assert sampled == 9, f"prefixes=False: only the full traces were sampled, 3 + 6 = 9 tokens, got {sampled}"
    asked = fake.requests()
    assert asked == {"q1": [(BUDGET, 1)], "q4": [(BUDGET, 1)]}, \
        f"prefixes=False: no D_p question is sampled at all, got requests {asked}"


def test_every_question_of_one_kind():
    got, sampled, _ = rollouts(num_samples=1, full=[True] * 6)
    assert [r["kind"] for r in got] == ["full"] * 6 and sampled == 6 + 3 + 6 + 2 + 6 + 4, \
        f"full all True: six full traces, 27 tokens sampled; got kinds {[r['kind'] for r in got]}, {sampled} tokens"
    got, sampled, _ = rollouts(num_samples=1, full=[False] * 6)
    assert [r["kind"] for r in got] == ["prefix"] * 6 and sampled == 3 + 3 + 3 + 2 + 3 + 3, \
        f"full all False: six prefixes, 17 tokens sampled; got kinds {[r['kind'] for r in got]}, {sampled} tokens"


def test_sampling_options_reach_the_sampler():
    _, _, fake = rollouts(num_samples=2, seed=17, batch_size=5, temperature=0.6, top_p=0.9, top_k=20, progress=False)
    assert fake.calls, "upft_rollouts must sample through upft.generate_answers"
    for c in fake.calls:
        got = {k: c.get(k) for k in ("seed", "batch_size", "temperature", "top_p", "top_k")}
        want = dict(seed=17, batch_size=5, temperature=0.6, top_p=0.9, top_k=20)
        assert got == want, f"every call of generate_answers gets seed, batch_size and the sampling options: " \
                            f"expected {want}, got {got}"
        assert not c["progress"], f"progress=False: no progress line, got progress={c['progress']!r}"
        assert c["prefixes"] is None, "upft_rollouts' `prefixes` flag is not generate_answers' `prefixes`"
    _, _, fake = rollouts(num_samples=2)
    labels = [c["progress"] for c in fake.calls if c["questions"]]
    assert labels and all(isinstance(p, str) and p for p in labels), \
        f"progress (default True): each call's progress is a label naming what it samples, got {labels}"


def test_prefix_len_below_one_is_refused():
    for bad in (0, -3):
        fake = FakeSampler()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(upft, "generate_answers", fake)
            with pytest.raises(UpftError):
                upft.upft_rollouts(MODEL, TOK, QUESTIONS, FULL, bad, 1, max_new_tokens=BUDGET)
        assert not fake.calls, f"prefix_len={bad}: refused (UpftError) before anything is sampled"
