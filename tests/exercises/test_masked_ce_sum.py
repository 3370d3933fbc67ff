"""Contract of train.masked_ce_sum: the SUM of next-token cross-entropy over the supervised positions
(position t predicts labels[t + 1]) and the NUMBER of those positions (the normaliser); and of its part in
model.Transformer.supervised_loss, the training path, which picks those positions as rows."""
import torch

import train
from data import IGNORE
from helpers import TINY, tiny_model

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


def test_the_training_path_picks_the_same_positions():
    """train.py trains with model.Transformer.supervised_loss (model(ids, labels=...)): the head runs on
    the supervised rows only, and gives the same sum and count as the full logits."""
    net = tiny_model(seed=8)
    ids = torch.randint(0, TINY["vocab_size"], LABELS.shape, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        loss, n = net(ids, labels=LABELS)
        want, count = by_hand(net(ids), LABELS)
    assert n == count == 8, f"supervised_loss: expected 8 supervised (shifted) positions, got {n}"
    assert abs(float(loss) - want) < 1e-4, \
        f"supervised_loss: expected the SUM of the 8 shifted token losses {want:.5f}, got {float(loss):.5f}"
