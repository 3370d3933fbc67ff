"""The loss train.py trains with (train.micro_batch_loss: masked_ce_sum on the supervised rows of the last
hidden states, with the model's head) equals the full-logits definition, in the loss and in every
parameter's gradient: transformers' own loss over its full logits (4 random tiny configs: Llama and Qwen2,
tied and untied heads), masked_ce_sum on our full logits, and sums written out here for the official
per-sample weighting and EM-FT's entropy; the chunked form (windows of positions, each recomputed in the
backward pass by torch.utils.checkpoint) equals the plain form. Rows with no supervised token, uneven
micro-batches, windows that do and do not divide the sequence.

Tolerance (fp32): the loss to rel 1e-6; every element of a parameter's gradient within 1e-5 of that
gradient's largest element (the same numbers added in another order).

Instructor-only: its written-out sums are the masked_ce_sum exercise (the shift, the mask, the count) in
other forms, so the student copy leaves this file out (INSTRUCTOR_ONLY in scripts/assignment.py)."""
import functools

import pytest
import torch

import model as M
import train
from launch import cli as launch_cli
from conftest import LLAMA, QWEN2, build_hf
from data import IGNORE

CONFIGS = {"llama-untied": LLAMA, "llama-tied": {**LLAMA, "tie_word_embeddings": True},
           "qwen2-tied": QWEN2, "qwen2-untied": {**QWEN2, "tie_word_embeddings": False}}


def tiny(cfg, seed=0):
    torch.manual_seed(seed)
    m = M.Transformer(M.Config.from_dict(cfg)).init_weights(0.1)
    with torch.no_grad():  # non-trivial norms and biases, so a mix-up cannot hide
        for n, p in m.named_parameters():
            if n.endswith("norm.weight") or n.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return m


def batch(seed=0, vocab=256):
    """Six rows of unequal lengths; two supervise nothing; the rest 1..9 tokens; right padding."""
    g = torch.Generator().manual_seed(seed)
    T = 14
    ids = torch.randint(0, vocab, (6, T), generator=g)
    labels = torch.full((6, T), IGNORE)
    for b, (length, sup) in enumerate([(14, 9), (9, 0), (11, 4), (5, 1), (14, 0), (8, 7)]):
        labels[b, length - sup:length] = ids[b, length - sup:length]
        ids[b, length:] = 0
    return ids, labels


def reference(logits, labels, objective, per_sample):
    """The full-logits quantities, one supervised position at a time (position t predicts labels[t + 1])."""
    logp = logits.float().log_softmax(-1)
    total, count = logits.new_zeros(()), 0
    for b in range(labels.shape[0]):
        pos = [t for t in range(labels.shape[1] - 1) if labels[b, t + 1] != IGNORE]
        if objective == "entropy":
            per = [-(logp[b, t].exp() * logp[b, t]).sum() for t in pos]
        else:
            per = [-logp[b, t, labels[b, t + 1]] for t in pos]
        if per_sample and pos:
            total, count = total + sum(per) / len(pos), count + 1
        elif not per_sample:
            total, count = total + sum(per, logits.new_zeros(())), count + len(pos)
    return total, count


def assert_close(got, want, what):
    """Every element within 1e-5 of the tensor's largest |element| (fp32 noise, see the docstring)."""
    err = (got - want).abs().max().item()
    assert err <= 1e-5 * want.abs().max().item(), f"{what}: max |difference| {err:.2e}, largest {want.abs().max():.2e}"


def loss_and_count(m, ids, labels, per_sample=False, entropy=False, chunk=0):
    """train.micro_batch_loss, and the normaliser fit divides it by: train.step_count of the same rows."""
    count = train.step_count([{"labels": row.tolist()} for row in labels], "sample" if per_sample else "token")
    return train.micro_batch_loss(m, ids, labels, per_sample=per_sample, entropy=entropy, chunk=chunk), count


def grads(m, fn):
    m.zero_grad(set_to_none=True)
    loss, n = fn()
    loss.backward()
    return loss.detach(), n, {k: p.grad.clone() for k, p in m.named_parameters()}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_plain_and_chunked_equal_transformers(name, tmp_path):
    """transformers' loss (its mean over the full logits, times the count) and its gradients, against ours:
    the plain form and at most 1, 4, 13 and 1024 rows at a time (6 rows of 14 positions: windows of 1, 1,
    2 and 13 positions)."""
    hf = build_hf(CONFIGS[name], tmp_path, seed=3).train()
    ours = M.Transformer.from_pretrained(tmp_path).train()
    ids, labels = batch(1)
    loss = lambda m: m(ids, labels=labels).loss * 21  # noqa: E731  (its labels are shifted inside, like ours)
    want, _, g_hf = grads(hf, lambda: (loss(hf), 21))
    for chunk in (0, 1, 4, 13, 1024):
        got, n, g = grads(ours, lambda: loss_and_count(ours, ids, labels, chunk=chunk))
        assert n == 21 and got.item() == pytest.approx(want.item(), rel=1e-5), chunk
        for k in g:
            assert_close(g[k], g_hf[k], f"chunk {chunk} {k}")


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("objective, per_sample", [("ce", False), ("ce", True), ("entropy", False)])
@pytest.mark.parametrize("chunk", [0, 1, 7, 13, 24])  # 6 rows: windows of 1, 1, 2 and 4 of the 13 positions
def test_loss_and_every_gradient_equal_the_full_logits(name, objective, per_sample, chunk):
    m = tiny(CONFIGS[name]).train()
    ids, labels = batch()
    want, n_want, g_want = grads(m, lambda: reference(m(ids), labels, objective, per_sample))
    got, n_got, g_got = grads(m, lambda: loss_and_count(m, ids, labels, per_sample=per_sample,
                                                                entropy=objective == "entropy", chunk=chunk))
    assert n_got == n_want == (4 if per_sample else 21)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    for k in g_want:
        assert_close(g_got[k], g_want[k], k)


def test_uneven_micro_batches_through_accumulate_grads():
    m = tiny(CONFIGS["llama-tied"], seed=2).train()
    ids, labels = batch(1)
    examples = [{"input_ids": i.tolist(), "labels": l.tolist()} for i, l in zip(ids, labels)]
    m.zero_grad(set_to_none=True)
    loss_sum, n = train.masked_ce_sum(m(ids), labels)  # the reference: the full logits of the whole batch
    (loss_sum / n).backward()
    out = {("full logits", 6): ((loss_sum / n).item(), n, {k: p.grad.clone() for k, p in m.named_parameters()})}
    for path, options in (("supervised rows", {}), ("5 rows at a time", {"chunk": 5})):
        for micro in (6, 4, 1):
            m.zero_grad(set_to_none=True)
            loss, n = train.accumulate_grads(m, examples, micro, 0, **options)
            out[path, micro] = (loss, n, {k: p.grad.clone() for k, p in m.named_parameters()})
    ref_loss, ref_n, ref_g = out["full logits", 6]
    for key, (loss, n, g) in out.items():
        assert n == ref_n == 21 and loss == pytest.approx(ref_loss, rel=1e-6), key
        for k in ref_g:
            assert_close(g[k], ref_g[k], f"{key} {k}")


def test_nothing_supervised_is_zero_not_nan():
    m = tiny(CONFIGS["qwen2-tied"]).train()
    ids, _ = batch()
    for chunk in (0, 4):
        m.zero_grad(set_to_none=True)
        loss, n = loss_and_count(m, ids, torch.full_like(ids, IGNORE), chunk=chunk)
        loss.backward()
        assert n == 0 and loss.item() == 0.0
        assert all(p.grad is None or (p.grad == 0).all() for p in m.parameters())


def test_the_head_sees_supervised_rows_only(monkeypatch):
    """Plain: one head product over the 21 supervised rows. At most 12 rows at a time (6 rows: windows of 2
    positions): every product at most 12 rows, each window once forward and once recomputed in backward."""
    m = tiny(CONFIGS["llama-untied"]).train()
    ids, labels = batch()
    rows = []
    real = m.head
    monkeypatch.setattr(m, "head", lambda h: rows.append(h.shape[0]) or real(h))
    loss = train.micro_batch_loss(m, ids, labels)
    loss.backward()
    assert rows == [21]
    rows.clear()
    loss = train.micro_batch_loss(m, ids, labels, chunk=12)
    loss.backward()
    assert max(rows) <= 12 and sum(rows) == 2 * 21 and len(rows) == 2 * 7  # 13 positions: 7 windows


def test_bf16_autocast_on_cpu_chunked_equals_plain():
    """Under CPU bf16 autocast the recomputed window is the forward's (checkpoint restores autocast): the
    chunked form's gradient equals the plain form's under the same autocast to bf16 precision."""
    m = tiny(CONFIGS["llama-untied"], seed=3).train()
    ids, labels = batch(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want, _, g_want = grads(m, lambda: loss_and_count(m, ids, labels))
        got, _, g_got = grads(m, lambda: loss_and_count(m, ids, labels, chunk=3))
    assert got.item() == pytest.approx(want.item(), rel=2e-2)
    for k in g_want:
        cos = torch.nn.functional.cosine_similarity(g_got[k].flatten(), g_want[k].flatten(), dim=0)
        assert cos > 0.99, (k, cos)


# ----------------------------------------------------------------------------- bf16 on CPUs that have it

def test_bf16_flags_are_refused_on_a_cpu_without_fast_bf16(tiny_dir, tmp_path, monkeypatch, capsys):
    from test_train import _questions
    monkeypatch.setattr(launch_cli, "cpu_bf16", lambda: (False, "this CPU has no AVX512-BF16, AMX-BF16 or Arm bf16"))
    monkeypatch.setattr(train.Transformer, "from_pretrained", lambda *a, **k: pytest.fail("model loaded"))
    for flag in ("--autocast-bf16", "--decode-bf16"):
        with pytest.raises(SystemExit) as e:
            train.main(["--model", str(tiny_dir), "--data", str(_questions(tmp_path / "q.jsonl")), flag,
                        "--device", "cpu", "--out", str(tmp_path / "run")])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and err.startswith(f"error: {flag}: this CPU has no AVX512-BF16") and \
            "drop the flag" in err and len(err.splitlines()) == 1, err


def test_bf16_run_where_the_cpu_has_it(tiny_dir, tmp_path, monkeypatch):
    """With fast bf16 (here pretended: the tiny model is fast either way) a run trains under bf16 autocast
    with fp32 master weights and decodes with a bf16 copy; the saved model stays fp32."""
    from test_train import _questions
    monkeypatch.setattr(launch_cli, "cpu_bf16", lambda: (True, "avx512_bf16"))
    seen = []
    real = train.accumulate_grads

    def spy(model, examples, micro, pad_id, normaliser, autocast, **loss):
        seen.append((autocast is not None and autocast.fast_dtype, next(model.parameters()).dtype))
        return real(model, examples, micro, pad_id, normaliser, autocast, **loss)
    monkeypatch.setattr(train, "accumulate_grads", spy)
    decoded = []
    real_generate = M.generate

    def gen_spy(model, *a, **kw):
        decoded.append(next(model.parameters()).dtype)
        return real_generate(model, *a, **kw)
    monkeypatch.setattr(M, "generate", gen_spy)  # every decoding goes through it
    from launch.run import run  # the bf16 CPU options are launch/'s
    args = launch_cli.parse_args(["--model", str(tiny_dir), "--data", str(_questions(tmp_path / "q.jsonl")),
                                  "--prefix-len", "4", "--max-new-tokens", "8", "--batch-size", "4", "--no-eval",
                                  "--autocast-bf16", "--decode-bf16", "--device", "cpu", "--out", str(tmp_path / "run")])
    run(args, log=lambda *_: None)
    assert seen and set(seen) == {(torch.bfloat16, torch.float32)}
    assert decoded and set(decoded) == {torch.bfloat16}
    assert M.Transformer.from_pretrained(tmp_path / "run" / "model").lm_head.weight.dtype == torch.float32
    import json
    assert json.loads((tmp_path / "run" / "model" / "config.json").read_text())["torch_dtype"] == "float32"


def test_the_plan_turns_the_windows_on_for_long_sequences():
    """--loss-chunk not given: all rows at once when no sequence can be longer than plan.LOSS_CHUNK, else at
    most LOSS_CHUNK rows of logits at a time (the R1 plan's 16k-token traces); given, as given."""
    from launch import plan as P
    cfg = M.Config.from_dict(QWEN2)
    plan = functools.partial(P.plan_run, cfg, 2**40, sample_batch=1, eval_batch=1)
    short, long, given = plan(max_len=512), plan(max_len=16384), plan(max_len=16384, loss_chunk=0)
    assert (short.loss_chunk, long.loss_chunk, given.loss_chunk) == (0, P.LOSS_CHUNK, 0)
    assert long.bytes["logits"] < given.bytes["logits"]


def test_the_flag_reaches_the_loss(tiny_dir, tmp_path, monkeypatch):
    from test_train import _questions
    seen = set()
    real = train.micro_batch_loss

    def spy(model, ids, labels, **kw):
        seen.add(kw["chunk"])
        return real(model, ids, labels, **kw)
    monkeypatch.setattr(train, "micro_batch_loss", spy)
    args = train.parse_args(["--model", str(tiny_dir), "--data", str(_questions(tmp_path / "q.jsonl")),
                             "--prefix-len", "4", "--max-new-tokens", "8", "--batch-size", "4", "--no-eval",
                             "--loss-chunk", "8", "--device", "cpu", "--out", str(tmp_path / "run")])
    train.run(args, log=lambda *_: None)
    import json
    assert seen == {8} and json.loads((tmp_path / "run" / "args.json").read_text())["loss_chunk"] == 8
