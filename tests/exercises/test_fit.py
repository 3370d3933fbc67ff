"""Contract of train.fit, the training loop (§4): AdamW (betas ADAM_BETAS, no weight decay) over
step_batches' steps, each at lr_at's rate, the gradient clipped to tc.max_grad_norm, one optimizer step per
step that supervised something, gradients zeroed between steps, tc.max_steps, the hooks (when, with what, in
what order), the history, train mode while training and eval mode after. train.accumulate_grads and
train.lr_at are swapped for fakes: a linear loss on a 4-number model whose gradient is known, and the
schedule 0.01 * (step + 1)."""
import contextlib
import io
import math

import pytest
import torch

import train
from data import IGNORE

W0 = [0.5, -1.0, 2.0, 0.0]


class Tiny(torch.nn.Module):
    """The model: one parameter w of 4 numbers (and the gradient_checkpointing flag fit sets)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(W0))
        self.gradient_checkpointing = False


def examples(n=10, masked=()):
    """n examples of 4..6 tokens, 1..3 supervised (none for the indices in `masked`)."""
    out = []
    for i in range(n):
        ids = [(3 * i + 2 * k) % 7 + 1 for k in range(4 + i % 3)]
        n_sup = 0 if i in masked else 1 + i % 3
        out.append({"input_ids": ids, "labels": [IGNORE] * (len(ids) - n_sup) + ids[len(ids) - n_sup:]})
    return out


def direction(e):
    """The fake loss of one example is w . direction(e), so its gradient is direction(e)."""
    return torch.tensor(e["input_ids"][:4], dtype=torch.float32) - 4


def gradient(batch, loss_norm="token"):
    """The gradient the fake accumulate_grads adds for a whole step: sum of the directions / the normaliser."""
    return sum(direction(e) for e in batch) / train.step_count(batch, loss_norm)


class FakeAccumulate:
    """Stands in for train.accumulate_grads (same signature): adds the gradient of sum_e w . direction(e) /
    normaliser to w.grad, returns (that loss, normaliser), or (nan, 0) when the normaliser is 0. Records calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, model, examples, micro_batch_size, pad_id, normaliser=None, autocast=None, **loss):
        clean = all(p.grad is None or not p.grad.any() for p in model.parameters())
        self.calls.append(dict(examples=list(examples), micro_batch_size=micro_batch_size, pad_id=pad_id,
                               normaliser=normaliser, autocast=autocast, loss=loss, training=model.training,
                               ckpt=model.gradient_checkpointing, clean=clean))
        if not normaliser:
            self.calls[-1]["returned"] = float("nan")
            return float("nan"), 0
        value = sum(model.w @ direction(e) for e in examples) / normaliser
        value.backward()
        self.calls[-1]["returned"] = value.item()
        return value.item(), normaliser


class FakeSchedule:
    """Stands in for train.lr_at: 0.01 * (step + 1). Records calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, step, total_steps, tc):
        self.calls.append((step, total_steps, tc))
        return 0.01 * (step + 1)


class Recorder(train.Hooks):
    """Hooks that record every call (and every optimizer step, with its LR and gradient, through the optimizer
    first_step receives); first_step returns `start`; `part` picks this process's part of a step."""

    def __init__(self, start=0, part=None, autocast_ctx=None):
        self.events, self.start, self.part, self.autocast_ctx = [], start, part, autocast_ctx

    def first_step(self, model, opt, total_steps):
        self.events.append(("first_step", model, opt, total_steps))
        opt.register_step_pre_hook(self.optimizer_step)
        return self.start

    def optimizer_step(self, opt, args, kwargs):
        grads = [None if p.grad is None else p.grad.clone() for g in opt.param_groups for p in g["params"]]
        self.events.append(("opt.step", [g["lr"] for g in opt.param_groups], grads))

    def part_of_step(self, batch, micro_batch_size, pad_id):
        self.events.append(("part_of_step", list(batch), micro_batch_size, pad_id))
        return batch if self.part is None else self.part(batch)

    def step_loss(self, loss, n):
        self.events.append(("step_loss", loss, n))
        return loss + 100.0

    def grad_norm(self, norm):
        self.events.append(("grad_norm", norm))
        return float(norm) + 1000.0

    def autocast(self, device):
        self.events.append(("autocast", device))
        return self.autocast_ctx

    def after_update(self):
        self.events.append(("after_update",))

    def after_step(self, record, stop):
        self.events.append(("after_step", record, stop))

    def named(self, name):
        return [e for e in self.events if e[0] == name]


def config(**kw):
    return train.TrainConfig(**{**dict(lr=1e-3, epochs=2, batch_size=4, micro_batch_size=2, max_grad_norm=0.5), **kw})


def run(exs=None, hooks=None, **kw):
    """(history, model, fake accumulate_grads, fake lr_at, config) of fit on the Tiny model."""
    exs = examples() if exs is None else exs
    net, tc, acc, lr = Tiny(), config(**kw), FakeAccumulate(), FakeSchedule()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "accumulate_grads", acc)
        mp.setattr(train, "lr_at", lr)
        history = train.fit(net, exs, tc, pad_id=3, hooks=hooks, progress=False)
    return history, net, acc, lr, tc


def batches(exs, tc):
    return [[exs[i] for i in b] for b in train.step_batches(len(exs), tc)]


def clipped(g, max_norm):
    return g * min(1.0, max_norm / float(g.norm()))


def replay(steps):
    """What torch.optim.AdamW (betas ADAM_BETAS, weight decay 0) makes of W0 given each (lr, gradient)."""
    w = torch.nn.Parameter(torch.tensor(W0))
    opt = torch.optim.AdamW([w], lr=1.0, betas=(0.9, 0.95), weight_decay=0.0)
    for lr, g in steps:
        opt.param_groups[0]["lr"] = lr
        w.grad = g.clone()
        opt.step()
    return w.detach()


def test_one_step_per_batch_of_every_epoch():
    exs = examples()
    history, _, acc, lr, tc = run(exs)
    want = batches(exs, tc)
    assert len(want) == 2 * math.ceil(10 / 4) == len(history) == 6, \
        f"10 examples, batch_size 4, 2 epochs: 2 * ceil(10 / 4) = 6 steps, got {len(history)}"
    assert [c["examples"] for c in acc.calls] == want, \
        "step s trains the examples train.step_batches(len(examples), tc)[s] names, in that order"
    assert [c[:2] for c in lr.calls] == [(s, 6) for s in range(6)], \
        f"lr_at(step, total_steps, tc) once per step, 0-based, total 6: got {[c[:2] for c in lr.calls]}"
    assert all(c[2] is tc for c in lr.calls), "lr_at gets fit's TrainConfig"
    assert [r["step"] for r in history] == [1, 2, 3, 4, 5, 6], "history's steps are counted from 1"


def test_each_step_at_lr_at_s_rate_and_the_clipped_gradient():
    exs = examples()
    hooks = Recorder()
    _, _, _, _, tc = run(exs, hooks)
    steps = hooks.named("opt.step")
    assert len(steps) == 6, f"one optimizer step per training step (6), got {len(steps)}"
    for s, ((_, lrs, grads), batch) in enumerate(zip(steps, batches(exs, tc))):
        assert lrs == [pytest.approx(0.01 * (s + 1))], \
            f"step {s}: the optimizer steps at lr_at's rate {0.01 * (s + 1):.2f} (set before it steps), got {lrs}"
        want = clipped(gradient(batch), 0.5)
        assert grads[0] is not None and torch.allclose(grads[0], want, rtol=1e-5, atol=1e-7), (
            f"step {s}: the optimizer must see this step's gradient alone (zeroed between steps), clipped to norm "
            f"tc.max_grad_norm = 0.5: expected {want.tolist()}, got {None if grads[0] is None else grads[0].tolist()}")


def test_gradients_are_zeroed_between_steps():
    _, _, acc, _, _ = run()
    dirty = [s for s, c in enumerate(acc.calls) if not c["clean"]]
    assert not dirty, f"accumulate_grads adds to .grad: fit must zero it between steps (not clean at steps {dirty})"


def test_grad_norm_hook_gets_the_norm_before_clipping():
    exs = examples()
    hooks = Recorder()
    history, _, _, _, tc = run(exs, hooks)
    norms = [e[1] for e in hooks.named("grad_norm")]
    want = [float(gradient(b).norm()) for b in batches(exs, tc)]
    assert len(norms) == 6 and all(torch.is_tensor(n) for n in norms), \
        f"hooks.grad_norm once per update, with the tensor clip_grad_norm_ returns, got {norms}"
    assert [float(n) for n in norms] == pytest.approx(want, rel=1e-5), \
        f"hooks.grad_norm gets the total norm BEFORE clipping: expected {want}, got {[float(n) for n in norms]}"
    assert [r["grad_norm"] for r in history] == pytest.approx([w + 1000.0 for w in want], rel=1e-5), \
        "history's grad_norm is what hooks.grad_norm returned"


def test_parameters_are_what_adamw_makes_of_those_gradients():
    hooks = Recorder()
    _, net, _, _, _ = run(hooks=hooks)
    want = replay([(lrs[0], grads[0]) for _, lrs, grads in hooks.named("opt.step")])
    assert torch.allclose(net.w.detach(), want, rtol=1e-5, atol=1e-7), (
        f"after 6 steps w must be what torch.optim.AdamW with betas ADAM_BETAS = (0.9, 0.95) and weight_decay 0 "
        f"makes of the same gradients and rates: expected {want.tolist()}, got {net.w.detach().tolist()}")


def test_one_update_moves_w_as_adamw_does():
    exs = examples(4)
    _, net, _, _, _ = run(exs, epochs=1)
    g = clipped(gradient(exs), 0.5)             # batch_size 4: the one step trains all 4
    want = replay([(0.01, g)])
    assert torch.allclose(net.w.detach(), want, rtol=1e-5, atol=1e-7), \
        f"one step at lr 0.01: expected w = {want.tolist()} (AdamW, no weight decay), got {net.w.detach().tolist()}"


def test_no_update_for_a_step_without_supervised_tokens():
    exs = examples(6, masked=(1, 4))
    hooks = Recorder()
    history, net, acc, _, tc = run(exs, hooks, batch_size=1, epochs=1)
    order = train.step_batches(6, tc)
    empty = [s for s, b in enumerate(order) if b[0] in (1, 4)]
    assert [c["normaliser"] for c in acc.calls] == [train.step_count([exs[b[0]]]) for b in order], \
        "every step calls accumulate_grads with its normaliser, 0 included (it returns (nan, 0) then)"
    names = [e[0] for e in hooks.events if e[0] in ("opt.step", "grad_norm", "after_update")]
    assert names == ["grad_norm", "opt.step", "after_update"] * 4, \
        f"6 steps, 2 of them with nothing supervised (n == 0): 4 updates, no clipping, no step there; got {names}"
    for s in empty:
        r = history[s]
        assert r["grad_norm"] == 0.0 and r["supervised_tokens"] == 0 and math.isnan(r["loss"]), \
            f"step {s + 1} supervised nothing: grad_norm 0.0, supervised_tokens 0, loss nan; got {r}"
    want = replay([(lrs[0], grads[0]) for _, lrs, grads in hooks.named("opt.step")])
    assert torch.allclose(net.w.detach(), want, rtol=1e-5, atol=1e-7) and torch.isfinite(net.w).all(), \
        "steps without supervised tokens leave the parameters (and the optimizer's moments) alone"


def test_hooks_are_called_in_order_with_their_arguments():
    exs, ctx = examples(), contextlib.nullcontext()
    hooks = Recorder(autocast_ctx=ctx)
    history, net, acc, _, tc = run(exs, hooks)
    first, autocast = hooks.named("first_step"), hooks.named("autocast")
    assert len(first) == 1 and first[0][1] is net and isinstance(first[0][2], torch.optim.AdamW) \
        and first[0][3] == 6, "first_step(model, the AdamW optimizer, total_steps = 6) once, before the first step"
    assert len(autocast) == 1 and autocast[0][1] == torch.device("cpu"), \
        "hooks.autocast(the model's device) once, before the first step"
    assert all(c["autocast"] is ctx for c in acc.calls), "every accumulate_grads gets what hooks.autocast returned"
    names = [e[0] for e in hooks.events]
    want = ["part_of_step", "step_loss", "grad_norm", "opt.step", "after_update", "after_step"] * 6
    assert sorted(names[:2]) == ["autocast", "first_step"] and names[2:] == want, \
        f"first_step and autocast, then per step: {want[:6]}; got {names}"
    for s, (e, batch) in enumerate(zip(hooks.named("part_of_step"), batches(exs, tc))):
        assert e[1:] == (batch, 2, 3), f"step {s}: part_of_step(the step's examples, micro_batch_size, pad_id)"
    losses = [e[1:] for e in hooks.named("step_loss")]
    assert losses == [(c["returned"], c["normaliser"]) for c in acc.calls], \
        "step_loss(the mean loss and the n accumulate_grads returned) once per step"
    assert [r["loss"] for r in history] == [c["returned"] + 100.0 for c in acc.calls], \
        "history's loss is what step_loss returned"
    ends = hooks.named("after_step")
    assert [e[1] for e in ends] == history and all(e[2] == 6 for e in ends), \
        "after_step(the step's history record, stop = the number of steps fit runs) after every step"


def test_part_of_step_and_the_whole_step_normaliser():
    exs = examples()
    hooks = Recorder(part=lambda batch: batch[::2])
    history, _, acc, _, tc = run(exs, hooks)
    for s, (c, batch) in enumerate(zip(acc.calls, batches(exs, tc))):
        assert c["examples"] == batch[::2], f"step {s}: accumulate_grads trains what part_of_step returned"
        assert c["normaliser"] == train.step_count(batch), \
            f"step {s}: the normaliser is the WHOLE step's count ({train.step_count(batch)}), got {c['normaliser']}"
        assert c["micro_batch_size"] == 2 and c["pad_id"] == 3
    assert [r["supervised_tokens"] for r in history] == [c["normaliser"] for c in acc.calls]


def test_loss_options_and_the_sample_weighting():
    history, _, acc, _, _ = run()
    assert all(c["loss"] == dict(per_sample=False, entropy=False, chunk=0) for c in acc.calls), \
        f"the defaults: per_sample=False, entropy=False, chunk=0 to accumulate_grads, got {acc.calls[0]['loss']}"
    assert all(set(r) == {"step", "loss", "lr", "grad_norm", "supervised_tokens"} for r in history), \
        f"a record is {{step, loss, lr, grad_norm, supervised_tokens}}, got {history[0]}"
    exs = examples()
    history, _, acc, _, tc = run(exs, loss_norm="sample", objective="entropy", loss_chunk=64)
    assert all(c["loss"] == dict(per_sample=True, entropy=True, chunk=64) for c in acc.calls), \
        f"loss_norm sample, objective entropy, loss_chunk 64: per_sample=True, entropy=True, chunk=64, " \
        f"got {acc.calls[0]['loss']}"
    assert [c["normaliser"] for c in acc.calls] == [train.step_count(b, "sample") for b in batches(exs, tc)], \
        "loss_norm sample: the normaliser is the step's samples with a supervised token"
    assert all(set(r) == {"step", "loss", "lr", "grad_norm", "samples"} for r in history), \
        f"loss_norm sample: the record counts 'samples' instead of 'supervised_tokens', got {history[0]}"


def test_history_records():
    exs = examples()
    history, _, acc, _, tc = run(exs)
    for s, (r, c, batch) in enumerate(zip(history, acc.calls, batches(exs, tc))):
        g = gradient(batch)
        want = {"step": s + 1, "loss": c["returned"], "lr": pytest.approx(0.01 * (s + 1)),
                "grad_norm": pytest.approx(float(g.norm()), rel=1e-5), "supervised_tokens": train.step_count(batch)}
        assert r == want, f"step {s + 1} (default hooks): expected the record {want}, got {r}"
    assert history[0]["loss"] == pytest.approx(float(torch.tensor(W0) @ gradient(batches(exs, tc)[0])), rel=1e-5)


def test_first_step_is_where_training_resumes():
    exs = examples()
    hooks = Recorder(start=2)
    history, _, acc, lr, tc = run(exs, hooks)
    assert [r["step"] for r in history] == [3, 4, 5, 6], \
        f"first_step returned 2: steps 2..5 run (history steps 3..6), got {[r['step'] for r in history]}"
    assert [c["examples"] for c in acc.calls] == batches(exs, tc)[2:], "resumed: the batches of steps 2.. only"
    assert [c[:2] for c in lr.calls] == [(s, 6) for s in range(2, 6)], "resumed: lr_at(2, 6), ..., lr_at(5, 6)"


def test_max_steps_stops_early_and_the_schedule_still_spans_every_epoch():
    hooks = Recorder()
    history, _, _, lr, _ = run(hooks=hooks, max_steps=4)
    assert len(history) == 4, f"max_steps 4: 4 steps, got {len(history)}"
    assert [c[:2] for c in lr.calls] == [(s, 6) for s in range(4)], \
        f"max_steps does not shorten the schedule: lr_at(step, 6), got {[c[:2] for c in lr.calls]}"
    assert hooks.named("first_step")[0][3] == 6 and all(e[2] == 4 for e in hooks.named("after_step")), \
        "first_step gets every epoch's steps (6); after_step's stop is the last step fit runs (4)"
    history, _, _, _, _ = run(max_steps=100)
    assert len(history) == 6, f"max_steps 100 > 6 steps: 6 steps, got {len(history)}"


def test_train_mode_while_training_eval_mode_after():
    for ckpt in (False, True):
        history, net, acc, _, _ = run(grad_ckpt=ckpt)
        assert all(c["training"] for c in acc.calls), "the model is in train mode while it trains"
        assert all(c["ckpt"] is ckpt for c in acc.calls), \
            f"grad_ckpt={ckpt}: model.gradient_checkpointing is {ckpt} while training"
        assert not net.training, "fit leaves the model in eval mode"


def test_progress_line():
    for shown in (False, True):
        err, out = io.StringIO(), io.StringIO()
        net, tc = Tiny(), config(max_grad_norm=1.0)
        with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            mp.setattr(train, "accumulate_grads", FakeAccumulate())
            mp.setattr(train, "lr_at", FakeSchedule())
            train.fit(net, examples(), tc, desc="upft-fit", progress=shown)
        text = err.getvalue() + out.getvalue()
        if shown:
            assert "upft-fit" in text and "6/6" in text, f"progress=True: a line named by desc, 6/6 steps; got {text!r}"
        else:
            assert text == "", f"progress=False: nothing printed, got {text!r}"
