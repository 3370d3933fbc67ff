"""Contract of model.sample_next: greedy at temperature 0; temperature on the logits; top-k keeps exactly
k; top-p keeps the smallest set reaching p and never drops the most likely token; one draw per row, by
inverse transform of a uniform number (given, or drawn from the generator)."""
import torch

import model
from helpers import frequencies

N = 40_000   # draws per frequency check: a share's standard error is at most 0.0025


def draws(probs, temperature=1.0, seed=0, **kw):
    """N draws from one row of logits log(probs), as N identical rows."""
    logits = torch.tensor(probs, dtype=torch.float32).log().expand(N, len(probs)).contiguous()
    g = torch.Generator().manual_seed(seed)
    out = model.sample_next(logits, temperature, generator=g, **kw)
    assert out.shape == (N,) and out.dtype == torch.long, f"expected a LongTensor of shape ({N},), got " \
                                                          f"{out.dtype} {tuple(out.shape)}"
    return frequencies(out, len(probs))


def close(freq, expected, tol=0.012):
    expected = torch.tensor(expected, dtype=torch.float64)
    return bool((freq - expected).abs().max() < tol)


def test_temperature_zero_is_greedy():
    logits = torch.randn(16, 50, generator=torch.Generator().manual_seed(0))
    for t in (0.0, None, -1.0):
        got = model.sample_next(logits, t, top_k=5, top_p=0.5)
        assert torch.equal(got, logits.argmax(-1)), f"temperature {t} must return the argmax of each row"


def test_temperature_one_samples_the_softmax():
    p = [0.5, 0.3, 0.15, 0.05]
    f = draws(p, 1.0)
    assert close(f, p), f"at temperature 1 the draws must follow softmax(logits) = {p}, got {f.tolist()}"


def test_temperature_divides_the_logits_before_the_softmax():
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    for t in (0.5, 2.0):
        want = (p.log() / t).softmax(-1)
        f = draws(p.tolist(), t, seed=1)
        assert close(f, want.tolist()), (f"temperature {t}: expected softmax(logits / {t}) = "
                                         f"{[round(x, 3) for x in want.tolist()]}, got {[round(x, 3) for x in f.tolist()]}")


def test_top_k_keeps_exactly_k_tokens():
    f = draws([0.4, 0.3, 0.2, 0.1], 1.0, top_k=2)
    assert close(f, [4 / 7, 3 / 7, 0, 0]), f"top_k=2 must sample the 2 best, renormalised; got {f.tolist()}"
    tied = torch.zeros(2000, 10)  # all ten logits equal: exactly k of them may ever be drawn
    got = model.sample_next(tied, 1.0, top_k=3, generator=torch.Generator().manual_seed(2))
    assert len(set(got.tolist())) == 3, f"top_k=3 over ten tied logits drew {len(set(got.tolist()))} distinct ids"
    f = draws([0.4, 0.3, 0.2, 0.1], 1.0, top_k=4)  # k = V: off
    assert close(f, [0.4, 0.3, 0.2, 0.1]), "top_k >= vocabulary size must change nothing"


def test_top_p_keeps_the_smallest_set_reaching_p():
    f = draws([0.5, 0.3, 0.15, 0.05], 1.0, top_p=0.75)
    assert close(f, [0.625, 0.375, 0, 0]), f"top_p=0.75 over [0.5, 0.3, 0.15, 0.05] keeps {{0, 1}}; got {f.tolist()}"
    f = draws([0.5, 0.3, 0.15, 0.05], 1.0, top_p=0.85)
    assert close(f, [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0]), f"top_p=0.85 keeps {{0, 1, 2}}; got {f.tolist()}"
    # the vocabulary is not sorted by probability: the set is by probability, not by id
    f = draws([0.05, 0.3, 0.5, 0.15], 1.0, top_p=0.75)
    assert close(f, [0, 0.375, 0.625, 0]), f"top_p=0.75 over [0.05, 0.3, 0.5, 0.15] keeps {{1, 2}}; got {f.tolist()}"
    f = draws([0.5, 0.3, 0.15, 0.05], 1.0, top_p=1.0)
    assert close(f, [0.5, 0.3, 0.15, 0.05]), "top_p=1.0 must change nothing"


def test_top_p_never_drops_the_most_likely_token():
    for top_p in (0.3, 1e-9):
        f = draws([0.15, 0.5, 0.3, 0.05], 1.0, top_p=top_p)
        assert f[1] == 1.0, f"top_p={top_p} below the top probability must keep only the most likely token"
    f = draws([0.15, 0.5, 0.3, 0.05], 0.7, top_p=1e-9, top_k=3)
    assert f[1] == 1.0, "the most likely token survives any top_p"


def test_top_p_acts_on_the_distribution_top_k_leaves():
    # top_k 3 leaves [0.3, 0.25, 0.2] renormalised to [0.4, 0.333, 0.267]: the mass above token 1 is 0.4,
    # past top_p 0.35, so only token 0 is kept. Top-p on the unrenormalised 0.3 would keep token 1 too.
    f = draws([0.3, 0.25, 0.2, 0.15, 0.1], 1.0, top_k=3, top_p=0.35)
    assert f[0] == 1.0, f"top_k 3 then top_p 0.35 keeps token 0 alone (top-p after renormalising), got {f.tolist()}"
    f = draws([0.3, 0.25, 0.2, 0.15, 0.1], 1.0, top_k=3, top_p=0.5)
    assert f[2] == 0 and close(f, [0.4 / 0.7333, 0.3333 / 0.7333, 0, 0, 0]), \
        f"top_k 3 then top_p 0.5 keeps tokens {{0, 1}} in proportion 0.4 : 0.333, got {f.tolist()}"


def test_temperature_comes_before_top_p():
    # At temperature 0.5, [0.5, 0.3, 0.15, 0.05] becomes [0.685, 0.247, 0.062, 0.007]: 0.9 is reached
    # by tokens {0, 1}. Top-p taken on the untempered probabilities would keep token 2 as well.
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    sharp = (p.log() / 0.5).softmax(-1)
    want = torch.cat([sharp[:2] / sharp[:2].sum(), torch.zeros(2)])
    f = draws(p.tolist(), 0.5, top_p=0.9)
    assert f[2] == 0 and close(f, want.tolist()), (f"temperature, then top-p: expected {want.tolist()}, "
                                                   f"got {f.tolist()}")


def test_one_independent_draw_per_row_and_seeded():
    logits = torch.zeros(4000, 8)
    a = model.sample_next(logits, 1.0, generator=torch.Generator().manual_seed(3))
    b = model.sample_next(logits, 1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b), "the same seeded generator must give the same draws"
    assert close(frequencies(a, 8), [1 / 8] * 8, tol=0.03), "rows with equal logits must draw independently"


def test_the_draw_is_the_inverse_cdf_of_u():
    # [0.5, 0.3, 0.2]: cumulative 0.5, 0.8, 1.0; the token is the first whose cumulative mass exceeds u
    logits = torch.tensor([0.5, 0.3, 0.2]).log().expand(6, 3)
    u = torch.tensor([0.0, 0.3, 0.55, 0.75, 0.85, 0.99], dtype=torch.float64)
    got = model.sample_next(logits, 1.0, u=u)
    assert got.tolist() == [0, 0, 1, 1, 2, 2], f"u = {u.tolist()} over cumulative [0.5, 0.8, 1.0] must give " \
                                               f"[0, 0, 1, 1, 2, 2], got {got.tolist()}"
    # a token of probability 0 is never drawn, not even at u = 0 (here: the first, cut by top-k)
    z = torch.tensor([[0.1, 0.6, 0.3]]).log()
    got = model.sample_next(z, 1.0, top_k=2, u=torch.zeros(1, dtype=torch.float64))
    assert got.tolist() == [1], f"u = 0 must give the first token of non-zero probability (1), got {got.tolist()}"
    # the mass is that of the KEPT tokens: top_p = 0.75 keeps {1, 2} of [0.1, 0.6, 0.3] (6/9, 3/9)
    got = model.sample_next(z.expand(2, 3), 1.0, top_p=0.75, u=torch.tensor([0.6, 0.7], dtype=torch.float64))
    assert got.tolist() == [1, 2], f"top_p=0.75, u = [0.6, 0.7]: cumulative kept mass [0, 6/9, 1], expected " \
                                   f"[1, 2], got {got.tolist()}"
