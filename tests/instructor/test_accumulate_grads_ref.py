"""Instructor tests of problem accumulate_grads: train.accumulate_grads with train.micro_batch_loss swapped
for a test-owned loss (a softplus of a tiny model's per-token scores at the supervised positions, not a
cross-entropy), on seeded examples, for every micro-batch size, a given normaliser, a micro-batch that
supervises nothing and a step that supervises nothing, against the gradients and losses the reference saved."""
import instructor_util

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import train
from data import IGNORE

V = 32
# case -> (examples seed, micro-batch size, normaliser given, how many leading examples supervise nothing)
CASES = {f"micro{m}": (0, m, None, 0) for m in (1, 2, 3, 4, 9)}
CASES.update({"normaliser": (1, 4, 100, 0), "masked_first_micro": (2, 3, None, 3), "all_masked": (3, 2, None, 9)})


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(11)
            self.emb, self.out = torch.nn.Embedding(V, 4), torch.nn.Linear(4, 2)

    def forward(self, ids):
        return self.out(torch.tanh(self.emb(ids)))   # (B, T, 2)


def fake_loss(model, ids, labels, **options):
    """Sum over the positions t with labels[b, t + 1] != IGNORE of softplus(score_0 - score_1 * label / V)."""
    keep = labels[:, 1:] != IGNORE
    s = model(ids)[:, :-1][keep]
    return F.softplus(s[:, 0] - s[:, 1] * labels[:, 1:][keep].float() / V).sum()


def examples(seed, masked):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(9):
        T = int(torch.randint(4, 14, (1,), generator=g))
        n_sup = 0 if i < masked else int(torch.randint(1, T, (1,), generator=g))
        ids = torch.randint(1, V, (T,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [IGNORE] * (T - n_sup) + ids[T - n_sup:]})
    return out


def compute(case):
    seed, micro, normaliser, masked = CASES[case]
    net = Tiny()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "micro_batch_loss", fake_loss)
        loss, n = train.accumulate_grads(net, examples(seed, masked), micro, pad_id=0, normaliser=normaliser)
    grads = [np.full(p.shape, np.nan) if p.grad is None else p.grad.numpy().astype(np.float64)
             for p in net.parameters()]
    return {"loss": np.array(loss, dtype=np.float64), "n": np.array(n, dtype=np.float64),
            **{f"grad{i}": g for i, g in enumerate(grads)}}


def make():
    return {f"{c}/{k}": v for c in CASES for k, v in compute(c).items()}


def load(case):
    return {k.split("/", 1)[1]: v for k, v in instructor_util.load("accumulate_grads").items()
            if k.startswith(case + "/")}


def test_gradients_match_the_reference():
    for c in CASES:
        got, want = compute(c), load(c)
        for k in sorted(k for k in want if k.startswith("grad")):
            instructor_util.close(got[k], want[k], f"{c}: the gradient of parameter {k[4:]} (nan: no gradient)")


def test_loss_and_count_match_the_reference():
    for c in CASES:
        got, want = compute(c), load(c)
        instructor_util.close(got["n"], want["n"], f"{c}: the normaliser returned")
        instructor_util.close(got["loss"], want["loss"], f"{c}: the mean loss returned (nan: nothing supervised)")
