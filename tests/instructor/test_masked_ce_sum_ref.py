"""Instructor tests of train.masked_ce_sum: the reference's loss sums, counts and gradients on seeded random
inputs the public tests do not pin down: logits (head None) and hidden states with a tiny head (an nn.Linear),
fp32 and bf16, cross-entropy and entropy (EM-FT), random supervised masks (labels[:, 0] supervised in some rows,
rows with nothing supervised), and edge shapes (T = 1, B = 1, nothing supervised). The head's rows per call are
recorded too (the head must run once, on the supervised rows only). Fixture: fixtures/masked_ce_sum.npz."""
import numpy as np
import torch

import instructor_util  # first: puts the code under test on sys.path

import train
from data import IGNORE

C, V = 6, 13
# (name, seed, B, T, head: "logits" (None) / "linear", dtype, entropy, share of supervised labels)
CASES = [(f"{src}_{dt}_{'ent' if ent else 'ce'}_{i}", 10 * j + i, B, T, src, dt, ent, share)
         for j, (src, dt, ent) in enumerate((src, dt, ent) for src in ("logits", "linear") for dt in ("fp32", "bf16")
                                            for ent in (False, True))
         for i, (B, T, share) in enumerate([(3, 9, 0.5), (2, 12, 0.8), (4, 5, 0.3)])]
EDGES = [("t1", 3, 1, 1.0), ("b1", 1, 10, 0.6), ("none", 3, 6, 0.0), ("first_only", 2, 7, -1)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def labels(B, T, share, g):
    """Random targets, supervised with probability `share`; share -1: only labels[:, 0] (which nothing predicts)."""
    y = torch.randint(0, V, (B, T), generator=g)
    if share < 0:
        y[:, 1:] = IGNORE
        return y
    y[torch.rand(B, T, generator=g) >= share] = IGNORE
    if B > 1 and share > 0:
        y[-1] = IGNORE                      # a row with nothing supervised (padding only)
        y[-1, 0] = 3                        # ... but its first label set: it is never a target
    return y


class Head(torch.nn.Module):
    """A tiny head (an nn.Linear) that records how many rows each call sees."""

    def __init__(self, g, dtype):
        super().__init__()
        self.lin = torch.nn.Linear(C, V)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(V, C, generator=g))
            self.lin.bias.copy_(torch.randn(V, generator=g) * 0.5)
        self.lin.to(dtype)
        self.rows = []

    def forward(self, x):
        self.rows.append(int(x.shape[0]))
        return self.lin(x)


def one(seed, B, T, src, dtype, entropy, share):
    """(loss, count, d loss / d h, d loss / d head weight or [], the head's rows per call, the loss's dtype)."""
    g, dtype = torch.Generator().manual_seed(seed), DTYPES[dtype]
    y = labels(B, T, share, g)
    head = Head(g, dtype) if src == "linear" else None
    h = (torch.randn(B, T, C if head is not None else V, generator=g) * 2).to(dtype).requires_grad_()
    loss, n = train.masked_ce_sum(h, y, head, entropy=entropy)
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0, f"the loss must be a 0-dim tensor, got {loss!r}"
    assert isinstance(n, int), f"the count must be a Python int, got {type(n).__name__}"
    dtype_ok = loss.dtype == torch.float32
    if loss.requires_grad:
        loss.backward()
    gh = h.grad if h.grad is not None else torch.zeros_like(h)
    gw = [] if head is None else (head.lin.weight.grad if head.lin.weight.grad is not None
                                  else torch.zeros_like(head.lin.weight))
    return (float(loss.detach()), n, np.asarray(gh.float()), np.asarray(torch.as_tensor(gw).float()),
            [] if head is None else head.rows, dtype_ok)


def outputs(cases):
    """{name: {"loss", "count", "grad_h", "grad_w", "rows", "fp32"}} of the code under test."""
    out = {}
    for name, *args in cases:
        out[name] = dict(zip(("loss", "count", "grad_h", "grad_w", "rows", "fp32"), one(*args)))
    return out


FIELDS = {"loss": np.float64, "count": np.int64, "grad_h": np.float32, "grad_w": np.float32, "rows": np.int64,
          "fp32": np.bool_}


def pack(out):
    """One array per field (cases concatenated, flattened) and each case's sizes: few, small npz members."""
    names = list(out)
    packed = {"names": np.array(names)}
    for f, dt in FIELDS.items():
        parts = [np.asarray(out[n][f], dtype=dt).ravel() for n in names]
        packed[f] = np.concatenate(parts) if parts else np.zeros(0, dt)
        packed[f"{f}_sizes"] = np.array([len(x) for x in parts], dtype=np.int64)
    return packed


def unpack(packed):
    out = {str(n): {} for n in packed["names"]}
    for f in FIELDS:
        ends = np.cumsum(packed[f"{f}_sizes"])
        for n, a, b in zip(out, ends - packed[f"{f}_sizes"], ends):
            out[n][f] = packed[f][a:b] if f not in ("loss", "count", "fp32") else packed[f][a:b].item()
    return out


def edge_cases():
    out = []
    for i, (edge, B, T, share) in enumerate(EDGES):
        for j, (src, ent) in enumerate((("logits", False), ("linear", False), ("logits", True))):
            out.append((f"{edge}_{src}_{'ent' if ent else 'ce'}", 100 + 10 * i + j, B, T, src, "fp32", ent, share))
    return out


def make():
    return pack({**outputs(CASES), **outputs(edge_cases())})


def compare(cases, what, rows=True):
    got, want = unpack(pack(outputs(cases))), unpack(instructor_util.load("masked_ce_sum"))
    for name, _, _, _, src, dt, _, _ in cases:
        got_, want_ = got[name], want[name]
        tol = dict(atol=1e-5, rtol=1e-4) if dt == "fp32" else dict(atol=2e-2, rtol=2e-2)
        assert bool(got_["fp32"]), f"{what}, {name}: the loss must be computed (and returned) in fp32"
        assert int(got_["count"]) == int(want_["count"]), \
            f"{what}, {name}: count {int(got_['count'])}, the reference's {int(want_['count'])}"
        instructor_util.close(got_["loss"], want_["loss"], f"{what}, {name}: the loss sum",
                              atol=1e-4, rtol=2e-3 if dt == "bf16" and src == "linear" else 1e-5)
        instructor_util.close(got_["grad_h"], want_["grad_h"], f"{what}, {name}: d loss / d h", **tol)
        instructor_util.close(got_["grad_w"], want_["grad_w"], f"{what}, {name}: d loss / d head",
                              **tol)
        if rows:
            assert got_["rows"].tolist() == want_["rows"].tolist(), \
                f"{what}, {name}: the head saw rows {got_['rows'].tolist()} per call, the reference's " \
                f"{want_['rows'].tolist()} (once, on the supervised rows only)"


def test_logits_match_the_reference():
    """h = the logits: fp32 and bf16 (the loss in fp32 either way), cross-entropy and entropy."""
    compare([c for c in CASES if c[4] == "logits"], "logits")


def test_hidden_states_with_a_head_match_the_reference():
    """h = hidden states and an nn.Linear head (fp32, and bf16 weights and states): the same sums, counts,
    gradients w.r.t. h and the head's weight, and the head run once on the supervised rows."""
    compare([c for c in CASES if c[4] == "linear"], "hidden states + head")


def test_edge_shapes_match_the_reference():
    """T = 1 (nothing predicts anything), one row, nothing supervised, only labels[:, 0] supervised: (0, 0)
    without NaN where nothing is supervised. (How often the head is called on zero rows is not checked.)"""
    compare(edge_cases(), "edge shapes", rows=False)
