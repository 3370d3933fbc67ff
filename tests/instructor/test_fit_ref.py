"""Instructor tests of problem fit: train.fit on a 5-number model with train.accumulate_grads and train.lr_at
swapped for fakes (a quadratic loss whose gradient is known; the rate 0.02 / (step + 1)), in four settings
(token and sample weighting, gradient clipping on and off, max_steps, a resumed run, steps that supervise
nothing), against the parameters and the history the reference saved."""
import instructor_util

import numpy as np
import pytest
import torch

import train
from data import IGNORE

W0 = [0.3, -0.7, 1.2, 0.0, -2.0]
# setting -> (TrainConfig options, examples masked (nothing supervised), the step first_step returns)
SETTINGS = {
    "token": (dict(epochs=2, batch_size=3, max_grad_norm=1.0), (), 0),
    "sample_max_steps": (dict(epochs=3, batch_size=4, loss_norm="sample", max_grad_norm=0.8, max_steps=5), (), 0),
    "resumed_unclipped": (dict(epochs=2, batch_size=2, max_grad_norm=100.0), (), 2),
    "masked_batch1": (dict(epochs=1, batch_size=1, max_grad_norm=0.5, seed=4), (2, 5, 6), 1),
}


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(W0))
        self.gradient_checkpointing = False


def examples(masked):
    out = []
    for i in range(9):
        ids = [(5 * i + 3 * k) % 9 + 1 for k in range(5 + i % 2)]
        n_sup = 0 if i in masked else 1 + i % 4
        out.append({"input_ids": ids, "labels": [IGNORE] * (len(ids) - n_sup) + ids[len(ids) - n_sup:]})
    return out


def fake_accumulate(model, examples, micro_batch_size, pad_id, normaliser=None, autocast=None, **loss):
    """0.5 * ||w - target(e)||^2 summed over the examples, / normaliser; (nan, 0) for normaliser 0."""
    if not normaliser:
        return float("nan"), 0
    value = sum(0.5 * ((model.w - (torch.tensor(e["input_ids"][:5], dtype=torch.float32) - 5) / 2) ** 2).sum()
                for e in examples) / normaliser
    value.backward()
    return value.item(), normaliser


def fake_lr_at(step, total_steps, tc):
    return 0.02 / (step + 1)


class Resume(train.Hooks):
    def __init__(self, start):
        self.start = start

    def first_step(self, model, opt, total_steps):
        return self.start


def compute(setting):
    options, masked, start = SETTINGS[setting]
    net, tc = Tiny(), train.TrainConfig(lr=1.0, micro_batch_size=2, **options)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "accumulate_grads", fake_accumulate)
        mp.setattr(train, "lr_at", fake_lr_at)
        history = train.fit(net, examples(masked), tc, hooks=Resume(start), progress=False)
    count = "supervised_tokens" if tc.loss_norm == "token" else "samples"
    return {"w": net.w.detach().numpy().astype(np.float64), "training": np.array(net.training),
            **{k: np.array([r[k] for r in history], dtype=np.float64) for k in ("step", "loss", "lr", "grad_norm")},
            "count": np.array([r[count] for r in history], dtype=np.float64)}


def make():
    return {f"{s}/{k}": v for s in SETTINGS for k, v in compute(s).items()}


def load(setting):
    saved = instructor_util.load("fit")
    return {k.split("/", 1)[1]: v for k, v in saved.items() if k.startswith(setting + "/")}


def test_parameters_match_the_reference():
    for s in SETTINGS:
        instructor_util.close(compute(s)["w"], load(s)["w"], f"{s}: the parameters after fit")


def test_history_matches_the_reference():
    for s in SETTINGS:
        got, want = compute(s), load(s)
        assert got["step"].shape == want["step"].shape and (got["step"] == want["step"]).all(), \
            f"{s}: history's steps {got['step'].tolist()}, the reference's {want['step'].tolist()}"
        for k in ("loss", "lr", "grad_norm", "count"):
            instructor_util.close(got[k], want[k], f"{s}: history's {k}")


def test_model_is_left_in_eval_mode():
    for s in SETTINGS:
        assert not compute(s)["training"], f"{s}: fit leaves the model in eval mode"
