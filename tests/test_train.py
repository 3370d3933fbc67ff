"""The masked cross-entropy loop, prefix voting, UPFT's training examples, resume, and bad input."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import LLAMA, ROOT, wait_for_checkpoint
from data import IGNORE, UpftError
import model as model_module
from model import Config, Transformer
from train import TrainConfig, accumulate_grads, fit, masked_ce_sum, parse_args, step_count
import upft
from upft import PREFIX_INSTRUCTION, prefix_vote, split_questions


def tiny_model(seed=0):
    cfg = Config.from_dict({**LLAMA, "vocab_size": 50})
    torch.manual_seed(seed)
    return Transformer(cfg).init_weights(0.1)


def random_examples(n, seed=0, vocab=50):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        T = int(torch.randint(4, 14, (1,), generator=g))
        ids = torch.randint(0, vocab, (T,), generator=g).tolist()
        p = int(torch.randint(1, T - 1, (1,), generator=g))
        out.append({"input_ids": ids, "labels": [IGNORE] * p + ids[p:]})
    return out


# ----------------------------------------------------------------------------- the loss

def _grads(model, examples, micro, norm="token"):
    model.zero_grad(set_to_none=True)
    accumulate_grads(model, examples, micro, 0, step_count(examples, norm), per_sample=norm == "sample")
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("norm", ["token", "sample"])
def test_grad_accumulation_invariance(norm):
    model = tiny_model()
    ex = random_examples(4, seed=1)
    assert len({sum(t != IGNORE for t in e["labels"]) for e in ex}) > 1  # unequal token counts
    a, b = _grads(model, ex, 4, norm), _grads(model, ex, 2, norm)
    c = _grads(model, ex, 1, norm)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
        torch.testing.assert_close(a[k], c[k], atol=1e-6, rtol=0)
    # and it is the gradient of (sum of token losses) / (total tokens) computed in one piece
    if norm == "token":
        model.zero_grad(set_to_none=True)
        from train import collate
        ids, labels = collate(ex, 0)
        loss, n = masked_ce_sum(model(ids), labels)
        (loss / n).backward()
        for k, p in model.named_parameters():
            torch.testing.assert_close(p.grad, a[k], atol=1e-6, rtol=0)


def test_fully_masked_micro_batch_no_nan():
    model = tiny_model()
    ex = random_examples(3, seed=2)
    masked = [{"input_ids": e["input_ids"], "labels": [IGNORE] * len(e["labels"])} for e in ex]
    g_mixed = _grads(model, masked[:2] + ex[:2], 2)  # first micro-batch fully masked
    g_ref = _grads(model, ex[:2], 2)
    for k in g_ref:
        assert torch.isfinite(g_mixed[k]).all()
        torch.testing.assert_close(g_mixed[k], g_ref[k], atol=1e-6, rtol=0)
    model.zero_grad(set_to_none=True)
    loss, n = accumulate_grads(model, masked, 2, pad_id=0)  # a whole step with nothing supervised
    assert n == 0 and all(p.grad is None for p in model.parameters())
    hist = fit(model, masked + ex, TrainConfig(lr=1e-3, epochs=1, batch_size=3, micro_batch_size=1))
    assert all(torch.isfinite(p).all() for p in model.parameters()) and len(hist) == 2


def test_fit_lowers_loss():
    model = tiny_model()
    ex = random_examples(8, seed=3)
    hist = fit(model, ex, TrainConfig(lr=3e-3, epochs=40, batch_size=8, micro_batch_size=4))
    assert hist[-1]["loss"] < 0.5 * hist[0]["loss"]
    assert hist[0]["lr"] < hist[-1]["lr"] == 3e-3  # warmup, then constant


# ----------------------------------------------------------------------------- UPFT pieces

def test_prefix_vote_with_ties():
    assert prefix_vote([[1, 2, 3], [1, 2, 4], [5, 6, 7]], 2) == ([1, 2], 2 / 3)
    # tie between (5, 6) and (1, 2): the one drawn first wins, whatever the token ids
    assert prefix_vote([[5, 6, 0], [1, 2, 0], [1, 2, 9], [5, 6, 1]], 2) == ([5, 6], 0.5)
    assert prefix_vote([[1, 2, 0], [5, 6, 0], [5, 6, 9], [1, 2, 1]], 2) == ([1, 2], 0.5)
    # short samples (stopped early) are their own prefixes
    assert prefix_vote([[7], [7], [7, 8]], 2) == ([7], 2 / 3)
    assert prefix_vote([[3, 4]], 8) == ([3, 4], 1.0)
    with pytest.raises(ValueError):
        prefix_vote([], 4)


def test_split_is_seeded_fraction():
    a = split_questions(1000, 0.1, seed=3)
    assert sum(a) == 100 and a == split_questions(1000, 0.1, seed=3) != split_questions(1000, 0.1, seed=4)
    assert sum(split_questions(10, 0.0, 0)) == 0 and sum(split_questions(10, 1.0, 0)) == 10
    with pytest.raises(UpftError):
        split_questions(10, 1.5, 0)


def _question_texts(n=20):
    return [f"What is {i} plus {i + 3}?" for i in range(n)]


def _questions(path, n=20):
    with open(path, "w") as f:
        for i, q in enumerate(_question_texts(n)):
            f.write(json.dumps({"question": q, "answer": str(2 * i + 3)}) + "\n")
    return path


def _run(tiny_dir, tmp_path, *extra):
    from train import run
    args = parse_args(["--model", str(tiny_dir), "--data", str(_questions(tmp_path / "q.jsonl")),
                       "--prefix-len", "4", "--structure-ratio", "0.25", "--max-new-tokens", "12",
                       "--lr", "1e-3", "--batch-size", "4", "--micro-batch-size", "2", "--no-eval",
                       "--out", str(tmp_path / "run"), *extra])
    return run(args)


def test_train_examples_prefix_and_full(tiny_dir, tmp_path):
    from data import Tokenizer, read_jsonl
    res = _run(tiny_dir, tmp_path)
    tok = Tokenizer.from_pretrained(tiny_dir)
    ex = read_jsonl(tmp_path / "run" / "train_examples.jsonl")
    rollouts = {r["index"]: r for r in read_jsonl(tmp_path / "run" / "rollouts.jsonl")}
    full_idx = {i for i, f in enumerate(upft.split_canonical(_question_texts(), 0.25, seed=0)) if f}
    assert {e["index"] for e in ex if e["kind"] == "full"} == full_idx and len(full_idx) == 5
    for e in ex:
        text = tok.decode(e["input_ids"])
        sup = [t for t in e["labels"] if t != IGNORE]
        first = next(i for i, t in enumerate(e["labels"]) if t != IGNORE)
        assert e["labels"][first:] == e["input_ids"][first:]  # supervised = the answer tail, unchanged
        resp = rollouts[e["index"]]["response_ids"]
        if e["kind"] == "prefix":
            assert PREFIX_INSTRUCTION in text
            assert sup == resp[:4] + [tok.eos_id]
            assert len(sup) == 4 + 1 or rollouts[e["index"]]["finished"]  # L tokens + EOS
        else:
            assert PREFIX_INSTRUCTION not in text
            assert sup == resp + ([tok.eos_id] if rollouts[e["index"]]["finished"] else [])
    a = res["accounting"]
    assert a["tokens_supervised"] == sum(len([t for t in e["labels"] if t != IGNORE]) for e in ex)
    assert a["questions_used"] == 20 and a["prefix_examples"] == 15


def test_eval_samples_one(tiny_dir, tmp_path):
    """--eval-samples 1, the flag's smallest sampling value: one sampled answer per held-out question, and
    the summary of a sampled evaluation, whose pass@1 (= pass@n = maj@n) is the sampled accuracy."""
    from data import read_jsonl
    from train import run
    lines, q = [], str(_questions(tmp_path / "q.jsonl", 8))
    res = run(parse_args(["--model", str(tiny_dir), "--data", q, "--eval-data", q, "--eval-limit", "3",
                          "--prefix-len", "4", "--max-new-tokens", "8", "--eval-max-new-tokens", "6", "--epochs", "1",
                          "--eval-samples", "1", "--eval-temperature", "1.0", "--out", str(tmp_path / "run")]),
              log=lines.append)
    for tag in ("base", "tuned"):
        s = res[f"{tag}_sampled"]
        assert s["samples_per_question"] == 1 and s["questions"] == 3
        assert s["accuracy"] == s["pass@1"] == s["pass@n"] == s["maj@n"]
        records = read_jsonl(tmp_path / "run" / f"eval_{tag}_sampled.jsonl")
        assert [len(r["sample_correct"]) for r in records] == [1, 1, 1]
        assert s["accuracy"] == sum(r["sample_correct"][0] for r in records) / 3
        greedy = read_jsonl(tmp_path / "run" / f"eval_{tag}.jsonl")
        assert [r["responses"][0] for r in records] != [r["response"] for r in greedy]  # sampled at T 1.0
    assert any("(pass@1 " in line for line in lines)


def test_tuned_checkpoint_loads_in_transformers(tiny_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    from model import generate
    _run(tiny_dir, tmp_path)
    d = tmp_path / "run" / "model"
    ours = Transformer.from_pretrained(d)
    ref = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(d)
    prompts = [hf_tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)
               for q in ("What is 2 plus 5?", "Add 10 and 11.")]
    prompts = [p if isinstance(p, list) else p["input_ids"] for p in prompts]
    for p, got in zip(prompts, generate(ours, prompts, 16)):
        with torch.no_grad():
            hf = ref.generate(torch.tensor([p]), max_new_tokens=16, min_new_tokens=16, do_sample=False,
                              pad_token_id=0)
        assert hf[0, len(p):].tolist() == got


def test_failed_checkpoint_write_leaves_no_temp_folder(tmp_path, monkeypatch):
    from launch import runfolder
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters())

    def broken(*a, **kw):
        raise RuntimeError("Error while serializing: IoError(StorageFull)")  # as safetensors reports it
    monkeypatch.setattr(model_module, "save_file", broken)
    with pytest.raises(OSError, match="state.safetensors.*StorageFull"):
        runfolder.save_checkpoint(tmp_path / "checkpoint", model, opt, 3)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- resume after SIGKILL

def _cli(args, **kw):
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow
def test_resume_after_sigkill_gives_same_weights(tiny_dir, tmp_path):
    from safetensors.torch import load_file
    q = _questions(tmp_path / "q.jsonl", n=48)
    common = ["--model", str(tiny_dir), "--data", str(q), "--prefix-len", "4", "--max-new-tokens", "12",
              "--lr", "1e-3", "--batch-size", "2", "--micro-batch-size", "1", "--epochs", "3",
              "--save-every", "5", "--no-eval", "--device", "cpu"]
    ref = _cli(common + ["--out", str(tmp_path / "ref")])
    assert ref.wait(timeout=300) == 0, ref.stderr.read()
    p = _cli(common + ["--out", str(tmp_path / "killed")])
    ckpt = tmp_path / "killed.partial" / "checkpoint" / "meta.json"
    assert wait_for_checkpoint(p, ckpt, 10, timeout=120), "training finished before it could be killed"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (tmp_path / "killed").exists() and not (tmp_path / "killed.partial" / "model").exists()
    r = _cli(common + ["--out", str(tmp_path / "killed"), "--resume"])
    assert r.wait(timeout=300) == 0, r.stderr.read()
    assert not (tmp_path / "killed.partial").exists()
    a = load_file(tmp_path / "ref" / "model" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(s)["step"] for s in open(tmp_path / "killed" / "metrics.jsonl")]
    assert steps[-1] == 72
    # the resumed run says so (its clocks restarted at the resume); the uninterrupted one does not
    resumed = [json.loads((tmp_path / d / "results.json").read_text())["resumed"] for d in ("ref", "killed")]
    assert resumed == [False, True]


# ----------------------------------------------------------------------------- bad input

def _unsafe_template(d):
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["chat_template"] = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("make, args, msg", [
    (lambda d: (d / "e.jsonl").write_text(""), ["--data", "{d}/e.jsonl"], "empty"),
    (lambda d: (d / "m.jsonl").write_text('{"question": "a"}\n{oops\n'), ["--data", "{d}/m.jsonl"], ":2"),
    (lambda d: (d / "n.jsonl").write_text('{"prompt": "a"}\n'), ["--data", "{d}/n.jsonl"], "question"),
    (None, ["--data", "{d}/missing.jsonl"], "not found"),
    (None, ["--data", "{d}/q.jsonl", "--prefix-len", "0"], "prefix-len"),
    (None, ["--data", "{d}/q.jsonl", "--prefix-len", "-3"], "prefix-len"),
    (None, ["--data", "{d}/q.jsonl", "--structure-ratio", "1.5"], "structure-ratio"),
    (None, ["--data", "{d}/q.jsonl", "--structure-ratio", "-0.1"], "structure-ratio"),
    (None, ["--data", "{d}/q.jsonl", "--limit", "-5"], "--limit"),
    (None, ["--data", "{d}/q.jsonl", "--eval-limit", "0"], "--eval-limit"),
    (None, ["--data", "{d}/q.jsonl", "--top-p", "0"], "--top-p"),
    (None, ["--data", "{d}/q.jsonl", "--top-p", "1.5"], "--top-p"),
    (None, ["--data", "{d}/q.jsonl", "--top-k", "-1"], "--top-k"),
    (None, ["--data", "{d}/q.jsonl", "--max-len", "8"], "--max-len"),             # no example would be left
    (lambda d: (d / "na.jsonl").write_text('{"question": "a"}\n'),                 # rft needs answers
     ["--data", "{d}/na.jsonl", "--method", "rft"], "answer"),
    (None, ["--data", "{d}/q.jsonl", "--eval-data", "{d}/missing.jsonl"], "not found"),
    (None, ["--data", "{d}/q.jsonl", "--method", "vote", "--num-samples", "1"], "--num-samples >= 2"),
    (None, ["--data", "{d}/q.jsonl", "--method", "em", "--loss-norm", "sample"], "--method em"),
    (None, ["--data", "{d}/q.jsonl", "--method", "sft", "--no-eos"], "--no-eos"),            # controls: upft only
    (None, ["--data", "{d}/q.jsonl", "--method", "vote", "--random-targets"], "--random-targets"),
    (None, ["--data", "{d}/q.jsonl", "--full-only", "--no-instruction"], "--full-only"),
    (None, ["--data", "{d}/q.jsonl", "--full-only", "--structure-ratio", "0"], "--full-only"),
    (None, ["--data", "{d}/q.jsonl", "--random-targets", "--structure-ratio", "1"], "--random-targets"),
    (None, ["--data", "{d}/q.jsonl", "--eval-every", "-1"], "--eval-every"),
    (None, ["--data", "{d}/q.jsonl", "--eval-every", "5", "--eval-subset", "0"], "--eval-subset"),
    (None, ["--data", "{d}/q.jsonl", "--eval-every", "5", "--no-eval"], "--no-eval"),
    (None, ["--data", "{d}/q.jsonl", "--base-from", "{d}/nowhere"], "--base-from"),
])
@pytest.mark.parametrize("model", ["tiny", "toy"])
def test_bad_input_one_line_error(make, args, msg, model, tiny_dir, tmp_path, monkeypatch, capsys):
    """Each is refused with one line and exit 2 before any model is loaded (loading would fail the test),
    and nothing is created: no --out, no --out.partial."""
    import train
    _questions(tmp_path / "q.jsonl")
    if make:
        make(tmp_path)
    before = sorted(f.name for f in tmp_path.iterdir())

    def no_load(*a, **kw):
        raise AssertionError("a model was loaded before the bad input was found")
    monkeypatch.setattr(train.Transformer, "from_pretrained", no_load)
    argv = (["--model", str(tiny_dir)] if model == "tiny" else []) + ["--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as e:
        train.main(argv + [a.format(d=tmp_path) for a in args])
    stderr = capsys.readouterr().err
    assert e.value.code == 2, stderr
    assert stderr.startswith("error:") and msg in stderr and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert sorted(f.name for f in tmp_path.iterdir()) == before  # nothing half-written


def test_bad_input_cli_exit_code(tmp_path):
    """The same through a real process: the toy default with a broken file (the case a new user hits)."""
    (tmp_path / "b.jsonl").write_text("{broken\n")
    t = time.time()
    p = _cli(["--prefix-len", "8", "--data", str(tmp_path / "b.jsonl"), "--out", str(tmp_path / "out")])
    _, stderr = p.communicate(timeout=60)
    assert p.returncode == 2 and stderr.startswith("error:") and "b.jsonl:1" in stderr
    assert len(stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
    assert time.time() - t < 30  # seconds, not the minutes any model work would take


def test_unsafe_chat_template_refused_before_any_work(tiny_dir, tmp_path):
    import shutil
    d = tmp_path / "model"
    shutil.copytree(tiny_dir, d)
    _unsafe_template(d)
    p = _cli(["--model", str(d), "--data", str(_questions(tmp_path / "q.jsonl")), "--out", str(tmp_path / "out")])
    _, stderr = p.communicate(timeout=60)
    assert p.returncode == 2 and "unsafe" in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_failure_after_sampling_leaves_nothing(tiny_dir, tmp_path):
    """RFT whose every sample is wrong ends with no training examples, after the run folder was made:
    the run fails with one line and its .partial folder is removed (nothing in it is worth resuming)."""
    q = tmp_path / "q.jsonl"
    q.write_text("".join(json.dumps({"question": f"q{i}", "answer": "impossible answer"}) + "\n" for i in range(4)))
    p = _cli(["--model", str(tiny_dir), "--data", str(q), "--method", "rft", "--num-samples", "2",
              "--max-new-tokens", "4", "--no-eval", "--out", str(tmp_path / "out")])
    _, stderr = p.communicate(timeout=120)
    assert p.returncode == 2 and "no training examples" in stderr and "Traceback" not in stderr
    assert sorted(f.name for f in tmp_path.iterdir()) == ["q.jsonl"]


def test_existing_out_without_resume(tiny_dir, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    p = _cli(["--model", str(tiny_dir), "--data", str(_questions(tmp_path / "q.jsonl")), "--out",
              str(tmp_path / "out")])
    _, stderr = p.communicate(timeout=120)
    assert p.returncode == 2 and "already exists" in stderr and "Traceback" not in stderr
    assert [f.name for f in (tmp_path / "out").iterdir()] == ["keep.txt"]
