"""Instructor tests of sample_next: the code under test against the reference's saved draws
(fixtures/sample_next.npz) on fixed logits and fixed uniforms, for every combination of temperature, top-k and
top-p, on fp32 and bf16 logits, with ties that the contract decides (tied tokens all kept or all dropped), and
with a seeded generator instead of u. Only model.sample_next runs here."""
import instructor_util  # noqa: I001  (first: it puts the code under test on sys.path)

import numpy as np
import torch

import model

TEMPERATURES = (0.0, None, -1.0, 0.3, 0.6, 1.0, 1.7)
TOP_K = (0, None, 1, 3, 12, 40, 100)
TOP_P = (1.0, None, 0.95, 0.6, 0.2, 1e-9)
B, V = 6, 40


def fixed():
    """fp32 logits (B, V) of distinct values, the same values exactly in bf16, tied logits, and uniforms."""
    g = torch.Generator().manual_seed(0)
    f32 = torch.randn(B, V, generator=g) * 2.5
    # multiples of 1/8 in [-2.5, 2.375] are exact in bf16 and pairwise distinct: no tie, no rounding
    bf16 = torch.stack([torch.randperm(V, generator=g) for _ in range(B)]).sub(20).div(8).to(torch.bfloat16)
    # ties: [3, 3, 2, 2, 2, 1, ...] in shuffled vocabulary orders; top-k/top-p below never cut inside a tie
    base = torch.tensor([3.0, 3.0, 2.0, 2.0, 2.0] + [1.0] * 5 + [0.0] * (V - 10))
    tied = torch.stack([base[torch.randperm(V, generator=g)] for _ in range(B)])
    u = torch.rand(B, dtype=torch.float64, generator=g)
    return f32, bf16, tied, u


def grid():
    f32, bf16, _, u = fixed()
    out = {}
    for name, logits in (("f32", f32), ("bf16", bf16)):
        draws = [model.sample_next(logits, t, k, p, u=u) for t in TEMPERATURES for k in TOP_K for p in TOP_P]
        out[f"grid_{name}"] = torch.stack(draws).numpy()
    return out


# top-k of 2, 5 or 10 and top-p whose cut falls between the tie groups (at temperature 1: masses 0.379,
# 0.209, 0.128, 0.283 per group; top-p 0.3 keeps the two 3s; after top-k 5, top-p 0.6 keeps them too)
TIE_SETTINGS = [(1.0, 2, 1.0), (1.0, 5, 1.0), (1.0, 10, 1.0), (1.0, 0, 0.3), (0.5, 0, 0.9), (1.0, 5, 0.6)]


def ties():
    _, _, tied, u = fixed()
    uu = ((torch.arange(24, dtype=torch.float64) * 7) % 24 + 0.5) / 24   # each tied row: 4 spread-out u's
    rows = tied.repeat_interleave(4, 0)
    draws = [model.sample_next(rows, t, k, p, u=uu) for t, k, p in TIE_SETTINGS]
    return {"ties": torch.stack(draws).numpy(), "ties_u_given": model.sample_next(tied, 1.0, 5, 0.9, u=u).numpy()}


def generator():
    f32, _, _, _ = fixed()
    draws = [model.sample_next(f32, t, k, p, generator=torch.Generator().manual_seed(11))
             for t, k, p in ((1.0, 0, 1.0), (0.6, 20, 0.95), (1.7, 0, 0.6))]
    return {"generator": torch.stack(draws).numpy()}


def make():
    return {**grid(), **ties(), **generator()}


def check(got, key, settings=None):
    want = instructor_util.load("sample_next")[key]
    assert got.shape == want.shape, f"{key}: shape {got.shape}, the reference's is {want.shape}"
    bad = np.argwhere(got != want)
    if len(bad):
        i = tuple(int(j) for j in bad[0])
        where = f"{settings[i[0]]}, row {i[1]}" if settings else f"at {i}"
        raise AssertionError(f"{key}: {len(bad)} of {got.size} draws differ from the reference's; first: "
                             f"{where}: got {got[i]}, expected {want[i]}")


def test_every_setting_on_fp32_logits():
    settings = [f"temperature={t}, top_k={k}, top_p={p}" for t in TEMPERATURES for k in TOP_K for p in TOP_P]
    got = grid()["grid_f32"]
    assert got.dtype == np.int64, f"sample_next must return a LongTensor, got {got.dtype}"
    check(got, "grid_f32", settings)


def test_every_setting_on_bf16_logits():
    settings = [f"bf16, temperature={t}, top_k={k}, top_p={p}" for t in TEMPERATURES for k in TOP_K for p in TOP_P]
    check(grid()["grid_bf16"], "grid_bf16", settings)


def test_ties_kept_or_dropped_together():
    got = ties()
    check(got["ties"], "ties", [f"tied logits, temperature={t}, top_k={k}, top_p={p}" for t, k, p in TIE_SETTINGS])
    check(got["ties_u_given"], "ties_u_given")


def test_a_seeded_generator_gives_the_reference_draws():
    check(generator()["generator"], "generator")
