"""Contract of train.accumulate_grads: whatever the micro-batch size, the gradient is that of (sum of the
step's token losses) / (the step's supervised tokens, or the normaliser given), i.e. one big batch; it
returns (that loss, that count). Needs exercise masked_ce_sum (the default loss)."""
import math

import torch

import train
from data import IGNORE
from helpers import TINY, tiny_model


def examples(seed=0):
    """Seven examples of unequal lengths (5..16 tokens) and unequal supervised counts (1..10)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for T, n_sup in [(5, 1), (16, 10), (8, 3), (12, 2), (6, 4), (14, 9), (9, 5)]:
        ids = torch.randint(1, TINY["vocab_size"], (T,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [IGNORE] * (T - n_sup) + ids[T - n_sup:]})
    return out


def reference(net, exs):
    """The one-big-batch quantity, computed independently: every example alone, token by token."""
    total, n = 0.0, 0
    for e in exs:
        logp = torch.log_softmax(net(torch.tensor([e["input_ids"]]))[0].double(), -1)
        pos = [t for t in range(len(e["labels"]) - 1) if e["labels"][t + 1] != IGNORE]  # t predicts t + 1
        total = total - logp[pos, [e["labels"][t + 1] for t in pos]].sum()
        n += len(pos)
    loss = total / n
    grads = torch.autograd.grad(loss, [p for p in net.parameters()])
    return float(loss.detach()), n, grads


def grads_of(net, exs, micro):
    net.zero_grad(set_to_none=True)
    loss, n = train.accumulate_grads(net, exs, micro, pad_id=0)
    return loss, n, [p.grad.clone() if p.grad is not None else None for p in net.parameters()]


def same(a, b):
    return all(x is not None and torch.allclose(x, y.float(), atol=1e-6, rtol=1e-4) for x, y in zip(a, b))


def test_equals_one_big_batch_for_every_micro_batch_size():
    net, exs = tiny_model(seed=3), examples()
    want_loss, want_n, want_grads = reference(net, exs)
    for micro in (7, 3, 2, 1):
        loss, n, grads = grads_of(net, exs, micro)
        assert n == want_n == 34, f"micro-batch {micro}: the normaliser is the step's 34 supervised tokens, got {n}"
        assert same(grads, want_grads), (f"micro-batch {micro}: the gradient must be that of (sum of every "
                                         f"token loss of the step) / 34, the same for every micro-batch size")
        assert abs(loss - want_loss) < 1e-5, f"micro-batch {micro}: returned loss {loss:.6f}, expected {want_loss:.6f}"


def test_gradients_are_added_not_replaced():
    net, exs = tiny_model(seed=4), examples(1)
    _, _, once = grads_of(net, exs, 3)
    train.accumulate_grads(net, exs, 3, pad_id=0)       # no zero_grad in between: the caller owns that
    assert same([p.grad / 2 for p in net.parameters()], once), "accumulate_grads adds to .grad (the caller zeroes it)"


def test_micro_batch_without_supervised_tokens_changes_nothing():
    net, exs = tiny_model(seed=5), examples(2)
    masked = [{"input_ids": e["input_ids"], "labels": [IGNORE] * len(e["labels"])} for e in exs[:2]]
    loss_a, n_a, a = grads_of(net, masked + exs[2:4], 2)   # the first micro-batch supervises nothing
    loss_b, n_b, b = grads_of(net, exs[2:4], 2)
    assert n_a == n_b and abs(loss_a - loss_b) < 1e-6 and same(a, b), \
        "a micro-batch with no supervised token must not change the loss, the count or the gradient"


def test_step_without_supervised_tokens():
    net, exs = tiny_model(seed=6), examples(3)
    masked = [{"input_ids": e["input_ids"], "labels": [IGNORE] * len(e["labels"])} for e in exs]
    net.zero_grad(set_to_none=True)
    loss, n = train.accumulate_grads(net, masked, 2, pad_id=0)
    assert n == 0 and math.isnan(loss), f"nothing supervised: (nan, 0), got ({loss}, {n})"
    assert all(p.grad is None for p in net.parameters()), "nothing supervised: no backward at all"


def test_a_given_normaliser_is_the_one_divided_by():
    """Under torchrun the caller passes the count of EVERY rank's examples: this rank divides by it."""
    net, exs = tiny_model(seed=7), examples(4)
    want_loss, want_n, want_grads = reference(net, exs)
    net.zero_grad(set_to_none=True)
    loss, n = train.accumulate_grads(net, exs, 3, pad_id=0, normaliser=2 * want_n)
    got = [p.grad.clone() for p in net.parameters()]
    assert n == 2 * want_n, f"the normaliser given ({2 * want_n}) is returned, got {n}"
    assert same([g * 2 for g in got], want_grads) and abs(2 * loss - want_loss) < 1e-5, \
        "with normaliser=2N every micro-batch's loss sum is divided by 2N: half the one-big-batch gradient"
