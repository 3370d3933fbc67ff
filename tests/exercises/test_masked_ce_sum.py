"""Contract of train.masked_ce_sum (docs/assignment.md, problem 7): the SUM of next-token cross-entropy
over the supervised positions (position t predicts labels[t + 1]) and the NUMBER of those positions (the
normaliser); with a `head`, the head runs on those positions' rows only (the training path: train.py's
micro_batch_loss passes the model's last hidden states and its head); with entropy=True, each term is the
entropy of the model's own next-token distribution (EM-FT)."""
import torch

import train
from data import IGNORE

I = IGNORE
# B = 3 rows, T = 7 positions. Supervised targets after the shift: 3 + 2 + 3 = 8, which is none of
# T = 7, T - 1 = 6, B = 3, B * (T - 1) = 18, B * T = 21, nor the 9 non-IGNORE labels before the shift.
LABELS = torch.tensor([[5, I, I, 3, 4, 1, I],     # labels[0] is a token but no position predicts it
                       [I, 6, 0, I, I, I, I],     # padding on the right
                       [I, I, I, I, 2, 8, 9]])
V = 11


def logits(seed=0, dtype=torch.float32):
    return torch.randn(3, 7, V, generator=torch.Generator().manual_seed(seed)).to(dtype)


def by_hand(lg, labels):
    total, n = 0.0, 0
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):          # logits at t predict the label at t + 1
            y = int(labels[b, t + 1])
            if y != IGNORE:
                total += -torch.log_softmax(lg[b, t].double(), -1)[y].item()
                n += 1
    return total, n


def test_sum_over_supervised_next_tokens():
    lg = logits()
    loss, n = train.masked_ce_sum(lg, LABELS)
    want, count = by_hand(lg, LABELS)
    assert count == 8
    assert abs(float(loss) - want) < 1e-4, f"expected the SUM of the 8 shifted token losses {want:.5f}, got {float(loss):.5f}"


def test_count_is_supervised_tokens_not_length_or_batch():
    loss, n = train.masked_ce_sum(logits(), LABELS)
    assert isinstance(n, int), f"the count must be a Python int, got {type(n).__name__}"
    assert n == 8, f"expected 8 supervised (shifted) positions; got {n} (T = 7, B = 3, B * (T - 1) = 18)"


def test_gradient_only_at_positions_that_predict_a_label():
    lg = logits(1).requires_grad_()
    loss, _ = train.masked_ce_sum(lg, LABELS)
    loss.backward()
    for b in range(3):
        for t in range(7):
            target = int(LABELS[b, t + 1]) if t < 6 else IGNORE
            g = lg.grad[b, t]
            if target == IGNORE:
                assert not g.any(), f"row {b}, position {t} predicts nothing supervised: its gradient must be 0"
            else:
                want = torch.softmax(lg[b, t].detach(), -1)
                want[target] -= 1.0
                assert torch.allclose(g, want, atol=1e-5), f"row {b}, position {t}: gradient of one CE term (sum, not mean)"


def test_nothing_supervised_gives_zero_not_nan():
    loss, n = train.masked_ce_sum(logits(2), torch.full((3, 7), IGNORE))
    assert n == 0 and torch.isfinite(loss) and float(loss) == 0.0, f"no supervised token: (0, 0), got ({loss}, {n})"


def test_loss_is_fp32_for_low_precision_logits():
    lg = logits(3, torch.bfloat16)
    loss, n = train.masked_ce_sum(lg, LABELS)
    want, _ = by_hand(lg.float(), LABELS)
    assert loss.dtype == torch.float32, f"compute the loss in fp32, got {loss.dtype}"
    assert abs(float(loss) - want) < 1e-3 and n == 8


def test_the_head_runs_on_the_supervised_rows_only():
    """The training path: hidden states (B, T, C) and a head; the head sees the 8 rows that predict a
    supervised token, in order (row b, then position t), and the sum and count equal the full logits'."""
    g = torch.Generator().manual_seed(8)
    h = torch.randn(*LABELS.shape, 16, generator=g)      # hidden states (B, T, C), C = 16
    proj = torch.nn.Linear(16, V, bias=False)
    with torch.no_grad():
        proj.weight.copy_(torch.randn(V, 16, generator=g))
    seen = []

    def head(rows):
        seen.append(rows.shape[0])
        return proj(rows)
    with torch.no_grad():
        loss, n = train.masked_ce_sum(h, LABELS, head)
        want, count = by_hand(proj(h), LABELS)
    assert seen == [8], f"the head must run once, on the 8 supervised rows only, got row counts {seen}"
    assert n == count == 8, f"expected 8 supervised (shifted) positions, got {n}"
    assert abs(float(loss) - want) < 1e-4, \
        f"expected the SUM of the 8 shifted token losses {want:.5f}, got {float(loss):.5f}"


def test_entropy_is_the_models_own_distribution():
    """entropy=True (EM-FT): the sum, over the same 8 positions, of -sum_v p_v log p_v, and its gradient."""
    lg = logits(4).requires_grad_()
    loss, n = train.masked_ce_sum(lg, LABELS, entropy=True)
    ref = lg.detach().clone().requires_grad_()
    logp = ref[:, :-1].log_softmax(-1)
    keep = LABELS[:, 1:] != IGNORE
    want = -(logp.exp() * logp).sum(-1)[keep].sum()
    want.backward()
    loss.backward()
    assert n == 8 and abs(loss.item() - want.item()) < 1e-4, f"expected the summed entropy {want.item():.5f}, got {loss.item():.5f}"
    assert torch.allclose(lg.grad, ref.grad, atol=1e-5), "the gradient of the entropy (the target is not a constant)"
