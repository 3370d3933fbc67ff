"""Contract of train.lr_at: linear warmup over W = max(1, ceil(ratio * total)) steps reaching the peak on
step W - 1, then constant (or cosine down to 10% of the peak)."""
import math

import train


def tc(schedule="constant", warmup_ratio=0.03, lr=1e-3):
    return train.TrainConfig(lr=lr, epochs=1, batch_size=1, micro_batch_size=1, warmup_ratio=warmup_ratio,
                             schedule=schedule)


def close(a, b):
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15)


def test_warmup_then_constant():
    got = [train.lr_at(s, 100, tc()) for s in range(100)]
    want = [1e-3 / 3, 2e-3 / 3, 1e-3] + [1e-3] * 97
    bad = next((s for s in range(100) if not close(got[s], want[s])), None)
    assert bad is None, f"100 steps, 3% warmup (W = 3), lr 1e-3: step {bad} should be {want[bad]:.6g}, got {got[bad]:.6g}"


def test_first_step_already_trains():
    assert train.lr_at(0, 1000, tc()) > 0, "step 0 must get lr / W, not 0 (no step is wasted)"
    assert close(train.lr_at(0, 1000, tc()), 1e-3 / 30), "1000 steps, 3% warmup: W = 30, step 0 gets lr / 30"
    assert close(train.lr_at(29, 1000, tc()), 1e-3), "the peak is reached on the last warmup step (29)"


def test_warmup_length_rounds_up():
    got = [train.lr_at(s, 10, tc(warmup_ratio=0.25)) for s in range(4)]
    want = [1e-3 / 3, 2e-3 / 3, 1e-3, 1e-3]
    assert all(close(a, b) for a, b in zip(got, want)), f"10 steps, 25% warmup: W = ceil(2.5) = 3; expected {want}, got {got}"


def test_no_warmup_and_tiny_runs():
    assert all(close(train.lr_at(s, 50, tc(warmup_ratio=0.0)), 1e-3) for s in range(50)), \
        "warmup_ratio 0: the peak from step 0"
    assert close(train.lr_at(0, 1, tc()), 1e-3), "a 1-step run: W = 1, the peak at step 0"


def test_constant_never_decays():
    assert close(train.lr_at(9_999, 10_000, tc()), 1e-3), "the constant schedule keeps the peak to the last step"


def test_cosine_to_ten_percent():
    c = tc("cosine", warmup_ratio=0.0, lr=2.0)             # W = 1, so progress = (step - 1) / 100
    for step, frac in [(0, 1.0), (1, 1.0), (26, 0.1 + 0.45 * (1 + math.cos(math.pi / 4))), (51, 0.55),
                       (76, 0.1 + 0.45 * (1 + math.cos(3 * math.pi / 4)))]:
        got = train.lr_at(step, 101, c)
        assert close(got, 2.0 * frac), f"cosine, 101 steps, no warmup: step {step} should be {2.0 * frac:.6f}, got {got:.6f}"
    lrs = [train.lr_at(s, 101, c) for s in range(101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:])) and lrs[-1] > 0.2, "cosine decays monotonically towards 10%"
    c = tc("cosine", warmup_ratio=0.1, lr=1.0)             # warmup first: W = 10
    assert close(train.lr_at(4, 100, c), 0.5) and close(train.lr_at(10, 100, c), 1.0)
