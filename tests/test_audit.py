"""The audit of UPFT (docs/method.md §7): the EM-FT and majority-vote baselines, the controls that take
UPFT apart (checked on the train_examples.jsonl they write), and accuracy during training."""
import json

import pytest
import torch

import upft
from data import IGNORE, Tokenizer, chat_prompt, read_jsonl
from test_train import _question_texts, _questions, _run, random_examples, tiny_model  # noqa: F401 (fixture)
from train import accumulate_grads, parse_args, run
from upft import PREFIX_INSTRUCTION


# ----------------------------------------------------------------------------- EM-FT: the entropy loss

def _entropy_grads(model, examples, micro):
    model.zero_grad(set_to_none=True)
    accumulate_grads(model, examples, micro, 0, entropy=True)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_entropy_grad_accumulation_invariance():
    model = tiny_model()
    ex = random_examples(4, seed=1)
    assert len({sum(t != IGNORE for t in e["labels"]) for e in ex}) > 1  # unequal token counts
    a, b, c = (_entropy_grads(model, ex, m) for m in (4, 2, 1))
    assert a
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
        torch.testing.assert_close(a[k], c[k], atol=1e-6, rtol=0)
    # (that it is the written-out mean entropy: tests/test_loss.py); and it is not the cross-entropy gradient
    model.zero_grad(set_to_none=True)
    accumulate_grads(model, ex, 4, pad_id=0)
    assert any(not torch.allclose(p.grad, a[k]) for k, p in model.named_parameters())


def test_em_trains_on_sft_samples_with_the_entropy_loss(tiny_dir, tmp_path):
    (tmp_path / "sft").mkdir()
    (tmp_path / "em").mkdir()
    _run(tiny_dir, tmp_path / "sft", "--method", "sft")
    res = _run(tiny_dir, tmp_path / "em", "--method", "em")
    assert read_jsonl(tmp_path / "sft" / "run" / "train_examples.jsonl") == \
        read_jsonl(tmp_path / "em" / "run" / "train_examples.jsonl")  # same samples, same examples
    loss_sft = [json.loads(x)["loss"] for x in open(tmp_path / "sft" / "run" / "metrics.jsonl")]
    loss_em = [json.loads(x)["loss"] for x in open(tmp_path / "em" / "run" / "metrics.jsonl")]
    assert loss_sft != loss_em and res["method"] == "em"


# ----------------------------------------------------------------------------- majority vote

class _FakeTok:
    """Just enough tokenizer for upft.vote_rollouts: a response is a list of character codes."""
    eos_ids = [0]

    def apply_chat_template(self, messages, add_generation_prompt=True):
        return messages[0]["content"]

    def encode(self, text):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


def test_vote_picks_majority_and_records_shares(monkeypatch):
    tok = _FakeTok()
    samples = {  # question -> its samples (texts)
        "q0": ["so \\boxed{3}", "\\boxed{7}", "we get \\boxed{7}", "no answer", "\\boxed{ 7 }"],
        "q1": ["nothing", "still nothing", "no", "none", "zip"],          # dropped: nothing to vote on
        "q2": ["\\boxed{1}", "\\boxed{2}", "\\boxed{2}", "\\boxed{1}", "\\boxed{5}"],   # tie: earliest wins
    }

    def fake_answers(model, tok_, questions, max_new_tokens, n=1, **kw):
        assert n == 5
        return [[tok.encode(t) for t in samples[q]] for q in questions]
    monkeypatch.setattr(upft, "generate_answers", fake_answers)
    rollouts, sampled, dropped = upft.vote_rollouts(None, tok, ["q0", "q1", "q2"], num_samples=5, max_new_tokens=99)
    assert dropped == 1 and [r["index"] for r in rollouts] == [0, 2]
    r0, r2 = rollouts
    assert tok.decode(r0["response_ids"]) == "\\boxed{7}"  # the FIRST sample that reaches the majority
    assert r0["pseudo_label"] == "7" and r0["vote_share"] == pytest.approx(3 / 5)  # "{ 7 }" counts too
    assert tok.decode(r2["response_ids"]) == "\\boxed{1}" and r2["vote_share"] == pytest.approx(2 / 5)
    assert sampled == sum(len(t) + 1 for g in samples.values() for t in g)
    assert "gold" not in upft.vote_rollouts.__code__.co_varnames  # takes no label at all


def _boxed_sampler(tok):
    """Replaces the model's answers (model.generate_answers, as upft calls it): sample j of a question
    answers (len(its chat prompt) + j // 2) % 3, so the majority is known and differs between questions;
    the texts are tokenized by the real tokenizer."""
    def fake_answers(model, tok_, questions, max_new_tokens, n=1, **kw):
        return [[tok.encode(f"so \\boxed{{{(len(chat_prompt(tok, q)) + j // 2) % 3}}}")[:max_new_tokens]
                 for j in range(n)] for q in questions]
    return fake_answers


def test_vote_never_reads_gold(tiny_dir, tmp_path, monkeypatch):
    tok = Tokenizer.from_pretrained(tiny_dir)
    monkeypatch.setattr(upft, "generate_answers", _boxed_sampler(tok))
    no_gold, wrong_gold = tmp_path / "none.jsonl", tmp_path / "wrong.jsonl"
    qs = [f"What is {i} plus {i + 3}?" for i in range(12)]
    no_gold.write_text("".join(json.dumps({"question": q}) + "\n" for q in qs))   # no answer field at all
    wrong_gold.write_text("".join(json.dumps({"question": q, "answer": "999"}) + "\n" for q in qs))
    runs = {}
    for name, data in (("none", no_gold), ("wrong", wrong_gold)):
        args = parse_args(["--model", str(tiny_dir), "--data", str(data), "--method", "vote", "--num-samples", "5",
                           "--max-new-tokens", "24", "--batch-size", "4", "--no-eval", "--lr", "1e-3",
                           "--out", str(tmp_path / name)])
        runs[name] = run(args, log=lambda *_: None)
    ex = read_jsonl(tmp_path / "none" / "train_examples.jsonl")
    assert ex == read_jsonl(tmp_path / "wrong" / "train_examples.jsonl")  # the gold answers changed nothing
    rollouts = read_jsonl(tmp_path / "none" / "rollouts.jsonl")
    assert len(ex) == len(rollouts) == 12
    for r in rollouts:
        p = chat_prompt(tok, qs[r["index"]])
        majority = (len(p) + 0) % 3  # samples 0-1 and 2-3 give two answers twice each: the earlier wins
        assert r["pseudo_label"] == str(majority) and r["vote_share"] == pytest.approx(2 / 5)
        assert tok.decode(r["response_ids"]).endswith(f"\\boxed{{{majority}}}")
    a = runs["none"]["accounting"]
    assert a["mean_vote_share"] == pytest.approx(2 / 5) and a["questions_dropped_no_answer"] == 0


# ----------------------------------------------------------------------------- the controls (§7.1)

def _examples(tmp_path, name, tiny_dir, *flags):
    (tmp_path / name).mkdir()
    res = _run(tiny_dir, tmp_path / name, *flags)
    d = tmp_path / name / "run"
    return res, read_jsonl(d / "train_examples.jsonl"), {r["index"]: r for r in read_jsonl(d / "rollouts.jsonl")}


@pytest.fixture(scope="module")
def plain(tiny_dir, tmp_path_factory):
    return _examples(tmp_path_factory.mktemp("plain"), "plain", tiny_dir)


def _split(ex):
    first = next(i for i, t in enumerate(ex["labels"]) if t != IGNORE)
    return ex["input_ids"][:first], [t for t in ex["labels"] if t != IGNORE]


def _same_samples(rollouts, plain_rollouts):
    for i, r in rollouts.items():
        assert r["response_ids"] == plain_rollouts[i]["response_ids"] and r["kind"] == plain_rollouts[i]["kind"]


def test_control_no_instruction(tiny_dir, tmp_path, plain):
    tok = Tokenizer.from_pretrained(tiny_dir)
    _, ex, rollouts = _examples(tmp_path, "x", tiny_dir, "--no-instruction")
    _same_samples(rollouts, plain[2])
    q = [json.loads(x)["question"] for x in open(tmp_path / "x" / "q.jsonl")]
    assert len(ex) == 20 and sum(e["kind"] == "prefix" for e in ex) == 15
    for e, p in zip(ex, plain[1]):
        prompt, sup = _split(e)
        assert prompt == chat_prompt(tok, q[e["index"]]) and PREFIX_INSTRUCTION not in tok.decode(e["input_ids"])
        assert sup == _split(p)[1]  # the targets are untouched (L tokens + EOS, or the full trace)


def test_control_no_eos(tiny_dir, tmp_path, plain):
    tok = Tokenizer.from_pretrained(tiny_dir)
    res, ex, rollouts = _examples(tmp_path, "x", tiny_dir, "--no-eos")
    _same_samples(rollouts, plain[2])
    for e, p in zip(ex, plain[1]):
        prompt, sup = _split(e)
        assert prompt == _split(p)[0]  # the instruction stays
        if e["kind"] == "prefix":
            assert sup == rollouts[e["index"]]["response_ids"][:4] and tok.eos_id not in sup[-1:]
        else:
            assert e == p  # full traces keep their end-of-turn
    assert res["accounting"]["tokens_supervised"] == plain[0]["accounting"]["tokens_supervised"] - 15


def test_control_full_only(tiny_dir, tmp_path, plain):
    res, ex, rollouts = _examples(tmp_path, "x", tiny_dir, "--full-only")
    full_idx = {i for i, f in enumerate(upft.split_canonical(_question_texts(), 0.25, seed=0)) if f}
    assert {e["index"] for e in ex} == set(rollouts) == full_idx and all(e["kind"] == "full" for e in ex)
    assert ex == [p for p in plain[1] if p["kind"] == "full"]  # the same full examples as plain UPFT
    _same_samples(rollouts, plain[2])
    sampled = sum(len(r["response_ids"]) + r["finished"] for r in rollouts.values())
    assert res["accounting"]["tokens_sampled"] == sampled  # no prefix was sampled


def test_control_prefix_only(tiny_dir, tmp_path):
    _, ex, _ = _examples(tmp_path, "x", tiny_dir, "--structure-ratio", "0")
    assert len(ex) == 20 and all(e["kind"] == "prefix" for e in ex)


def test_control_random_targets(tiny_dir, tmp_path, plain):
    tok = Tokenizer.from_pretrained(tiny_dir)
    res, ex, rollouts = _examples(tmp_path, "x", tiny_dir, "--random-targets")
    _same_samples(rollouts, plain[2])
    pre = [e for e in ex if e["kind"] == "prefix"]
    sources = [rollouts[e["index"]]["target_from"] for e in pre]
    assert sorted(sources) == sorted(e["index"] for e in pre)  # a permutation of the prefix questions...
    assert all(s != e["index"] for s, e in zip(sources, pre))   # ...with no question keeping its own
    for e, p in zip(ex, plain[1]):
        prompt, sup = _split(e)
        assert prompt == _split(p)[0]  # own question, with the instruction
        if e["kind"] == "prefix":
            src = rollouts[e["index"]]["target_from"]
            assert sup == rollouts[src]["response_ids"][:4] + [tok.eos_id]
        else:
            assert e == p
    # seeded: the same seed gives the same pairing, another seed another one
    r = list(plain[2].values())
    qs = _question_texts()
    a = upft.ablate_rollouts(r, qs, random_targets=True, seed=0)
    b = upft.ablate_rollouts(r, qs, random_targets=True, seed=1)
    assert a == upft.ablate_rollouts(r, qs, random_targets=True, seed=0) and a != b
    assert [x.get("target_from") for x in a] == [rollouts[x["index"]].get("target_from") for x in a]


# ----------------------------------------------------------------------------- accuracy during training

def test_eval_every_records_accuracy_and_leaves_training_unchanged(tiny_dir, tmp_path):
    from safetensors.torch import load_file
    q = _questions(tmp_path / "q.jsonl", n=20)

    from launch import cli, run as launched

    def go(name, *extra):  # with launch/'s flags through launch/, the plain run through train.py alone
        argv = ["--model", str(tiny_dir), "--data", str(q), "--eval-data", str(q), "--prefix-len", "4",
                "--max-new-tokens", "12", "--eval-max-new-tokens", "8", "--lr", "1e-3",
                "--batch-size", "4", "--epochs", "2", "--out", str(tmp_path / name), *extra]
        if extra:
            return launched.run(cli.parse_args(argv), log=lambda *_: None)
        return run(parse_args(argv), log=lambda *_: None)
    go("plain")
    go("evaluated", "--eval-every", "3", "--eval-subset", "6")
    a = load_file(tmp_path / "plain" / "model" / "model.safetensors")
    b = load_file(tmp_path / "evaluated" / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    recs = [json.loads(x) for x in open(tmp_path / "evaluated" / "metrics.jsonl")]
    evals = [r for r in recs if "eval_accuracy" in r]
    assert [r["step"] for r in evals] == [0, 3, 6, 9, 10]  # 10 steps: before, every 3, after the last
    assert all(r["eval_questions"] == 6 and 0 <= r["eval_accuracy"] <= 1 for r in evals)
    train_recs = [r for r in recs if "loss" in r]
    plain = [json.loads(x) for x in open(tmp_path / "plain" / "metrics.jsonl")]
    assert train_recs == plain  # same losses, learning rates, gradient norms
    # --base-from reuses the base evaluation of a finished run with the same eval settings
    res = go("reused", "--base-from", str(tmp_path / "plain"))
    assert res["base"] == json.loads((tmp_path / "plain" / "eval_base.json").read_text())
    c = load_file(tmp_path / "reused" / "model" / "model.safetensors")
    assert all(torch.equal(a[k], c[k]) for k in a)
