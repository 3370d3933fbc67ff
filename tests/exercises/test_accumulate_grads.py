"""Contract of train.accumulate_grads: whatever the micro-batch size, the gradient is that of (sum of the
step's losses) / (the step's supervised tokens, or the normaliser given), i.e. one big batch; it returns
(that loss, that count). train.micro_batch_loss is swapped for a test-owned loss (a squared error of a tiny
model's per-token score at the supervised positions, not a cross-entropy): no other exercise runs here."""
import math

import pytest
import torch

import train
from data import IGNORE

V = 64


class Tiny(torch.nn.Module):
    """A tiny model: a score per position, tanh of a 3-number embedding of its token, then a linear map."""

    def __init__(self, seed):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.emb, self.out = torch.nn.Embedding(V, 3), torch.nn.Linear(3, 1)

    def forward(self, ids):
        return self.out(torch.tanh(self.emb(ids)))[..., 0]   # (B, T)


class FakeLoss:
    """Stands in for train.micro_batch_loss(model, ids, labels, **options): the SUM over the positions t that
    predict a supervised label (labels[b, t + 1] != IGNORE) of (score[b, t] - labels[b, t + 1] / V) ** 2.
    Records each call: its ids, its options, whether it ran inside the autocast given."""

    def __init__(self, ctx=None):
        self.calls, self.ctx = [], ctx

    def __call__(self, model, ids, labels, **options):
        self.calls.append(dict(ids=ids.clone(), options=options, inside=bool(self.ctx and self.ctx.depth)))
        return loss_sum(model, ids, labels)


def loss_sum(model, ids, labels):
    keep = labels[:, 1:] != IGNORE
    return ((model(ids)[:, :-1][keep] - labels[:, 1:][keep].float() / V) ** 2).sum()


class Autocast:
    """A context manager that counts how deep it is entered."""
    depth = 0

    def __enter__(self):
        self.depth += 1

    def __exit__(self, *exc):
        self.depth -= 1


def examples(seed=0):
    """Seven examples of unequal lengths (5..16 tokens) and unequal supervised counts (1..10)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for T, n_sup in [(5, 1), (16, 10), (8, 3), (12, 2), (6, 4), (14, 9), (9, 5)]:
        ids = torch.randint(1, V, (T,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [IGNORE] * (T - n_sup) + ids[T - n_sup:]})
    return out


def reference(net, exs):
    """The one-big-batch quantity: the fake loss of every example in one collated batch / its supervised tokens."""
    ids, labels = train.collate(exs, pad_id=0)
    n = int((labels[:, 1:] != IGNORE).sum())
    loss = loss_sum(net, ids, labels) / n
    grads = torch.autograd.grad(loss, [p for p in net.parameters()])
    return float(loss.detach()), n, grads


def accumulate(net, exs, micro, fake=None, **kw):
    """train.accumulate_grads(net, exs, micro, pad_id=0, **kw) with the fake loss swapped in."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "micro_batch_loss", fake or FakeLoss())
        return train.accumulate_grads(net, exs, micro, pad_id=0, **kw)


def grads_of(net, exs, micro):
    net.zero_grad(set_to_none=True)
    loss, n = accumulate(net, exs, micro)
    return loss, n, [p.grad.clone() if p.grad is not None else None for p in net.parameters()]


def same(a, b):
    return all(x is not None and torch.allclose(x, y.float(), atol=1e-6, rtol=1e-4) for x, y in zip(a, b))


def test_equals_one_big_batch_for_every_micro_batch_size():
    net, exs = Tiny(seed=3), examples()
    want_loss, want_n, want_grads = reference(net, exs)
    for micro in (7, 3, 2, 1):
        loss, n, grads = grads_of(net, exs, micro)
        assert n == want_n == 34, f"micro-batch {micro}: the normaliser is the step's 34 supervised tokens, got {n}"
        assert same(grads, want_grads), (f"micro-batch {micro}: the gradient must be that of (sum of every "
                                         f"token loss of the step) / 34, the same for every micro-batch size")
        assert abs(loss - want_loss) < 1e-5, f"micro-batch {micro}: returned loss {loss:.6f}, expected {want_loss:.6f}"


def test_gradients_are_added_not_replaced():
    net, exs = Tiny(seed=4), examples(1)
    _, _, once = grads_of(net, exs, 3)
    accumulate(net, exs, 3)                         # no zero_grad in between: the caller owns that
    assert same([p.grad / 2 for p in net.parameters()], once), "accumulate_grads adds to .grad (the caller zeroes it)"


def test_micro_batch_without_supervised_tokens_changes_nothing():
    net, exs = Tiny(seed=5), examples(2)
    masked = [{"input_ids": e["input_ids"], "labels": [IGNORE] * len(e["labels"])} for e in exs[:2]]
    loss_a, n_a, a = grads_of(net, masked + exs[2:4], 2)   # the first micro-batch supervises nothing
    loss_b, n_b, b = grads_of(net, exs[2:4], 2)
    assert n_a == n_b and abs(loss_a - loss_b) < 1e-6 and same(a, b), \
        "a micro-batch with no supervised token must not change the loss, the count or the gradient"


def test_step_without_supervised_tokens():
    net, exs = Tiny(seed=6), examples(3)
    masked = [{"input_ids": e["input_ids"], "labels": [IGNORE] * len(e["labels"])} for e in exs]
    net.zero_grad(set_to_none=True)
    loss, n = accumulate(net, masked, 2)
    assert n == 0 and math.isnan(loss), f"nothing supervised: (nan, 0), got ({loss}, {n})"
    assert all(p.grad is None for p in net.parameters()), "nothing supervised: no backward at all"


def test_a_given_normaliser_is_the_one_divided_by():
    """Under torchrun the caller passes the count of EVERY rank's examples: this rank divides by it."""
    net, exs = Tiny(seed=7), examples(4)
    want_loss, want_n, want_grads = reference(net, exs)
    net.zero_grad(set_to_none=True)
    loss, n = accumulate(net, exs, 3, normaliser=2 * want_n)
    got = [p.grad.clone() for p in net.parameters()]
    assert n == 2 * want_n, f"the normaliser given ({2 * want_n}) is returned, got {n}"
    assert same([g * 2 for g in got], want_grads) and abs(2 * loss - want_loss) < 1e-5, \
        "with normaliser=2N every micro-batch's loss sum is divided by 2N: half the one-big-batch gradient"


def test_micro_batches_in_order_with_the_options_under_autocast():
    net, exs, ctx = Tiny(seed=8), examples(5), Autocast()
    fake = FakeLoss(ctx)
    accumulate(net, exs, 3, fake, autocast=ctx, per_sample=True, chunk=5)
    rows = [[e["input_ids"] for e in exs[i:i + 3]] for i in (0, 3, 6)]
    got = [[r[:len(e)].tolist() for r, e in zip(c["ids"], want)] for c, want in zip(fake.calls, rows)]
    assert len(fake.calls) == 3 and got == rows, \
        "7 examples, micro-batch 3: the loss of examples[0:3], examples[3:6], examples[6:7], collated, in order"
    assert all(c["options"] == {"per_sample": True, "chunk": 5} for c in fake.calls), \
        f"the loss options reach micro_batch_loss as given, got {[c['options'] for c in fake.calls]}"
    assert all(c["inside"] for c in fake.calls) and ctx.depth == 0, \
        "every micro-batch's forward and loss run inside the autocast given (entered and left each time)"
