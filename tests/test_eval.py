"""eval.py with a model: evaluate(), the CLI and both analyses on a tiny random Llama (CPU, seconds).

A random model never writes a correct answer, so the bookkeeping (correct flags, pass@1, majority
vote, the error-position rollouts) is checked with a scripted stand-in for model.generate whose
outputs are known; the real tiny model checks the wiring end to end.
"""
import json
import os
import subprocess
import sys

import pytest

import eval as E
import model as M
from launch import analyses as A
from conftest import LLAMA, ROOT, build_hf
from data import Tokenizer, load_rows
from tests.util_tok import make_tokenizer_dir

QUESTIONS = [{"question": "What is 2 + 3?", "answer": "#### 5"},
             {"problem": "Natalia sold 48 clips.", "expected_answer": "\\frac{1}{2}"},
             {"question": "hello world", "answer": "7"}]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    build_hf(LLAMA, d)
    make_tokenizer_dir(d, "chatml", vocab_size=256)
    return d, M.Transformer.from_pretrained(d), Tokenizer.from_pretrained(d)


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    return path


def scripted(tok, texts):
    """A stand-in for model.generate: sample j of every prompt is texts[j % len(texts)]."""
    def generate(model, prompts, max_new_tokens, num_samples=None, **kw):
        groups = [[tok.encode(texts[j % len(texts)])[:max_new_tokens] for j in range(num_samples or 1)]
                  for _ in prompts]
        return groups if num_samples is not None else [g[0] for g in groups]
    return generate


def test_evaluate_real_model(tiny, data_file):
    _, model, tok = tiny
    rows = load_rows(data_file)
    records, summary = E.evaluate(model, tok, rows, max_new_tokens=6, batch_size=2, progress=False)
    assert [r["index"] for r in records] == [0, 1, 2]
    assert [r["gold"] for r in records] == ["5", "\\frac{1}{2}", "7"]
    assert all(isinstance(r["response"], str) and r["tokens"] <= 6 for r in records)
    assert summary["questions"] == 3 and 0 <= summary["accuracy_ci95"][0] <= summary["accuracy"] <= 1
    again, _ = E.evaluate(model, tok, rows, max_new_tokens=6, batch_size=64, progress=False)
    assert [r["response"] for r in again] == [r["response"] for r in records]   # greedy, batch-invariant


def test_evaluate_bookkeeping(tiny, data_file, monkeypatch):
    _, model, tok = tiny
    rows = load_rows(data_file)
    monkeypatch.setattr(M, "generate", scripted(tok, ["so \\boxed{5}", "#### 5", "it is 0.5 \\boxed{1/2}"]))
    records, summary = E.evaluate(model, tok, rows, max_new_tokens=50, n=3, temperature=1.0, progress=False)
    assert records[0]["answers"] == ["5", "5", "1/2"] and records[0]["sample_correct"] == [True, True, False]
    assert records[0]["majority_answer"] == "5" and records[0]["correct"]
    assert records[1]["sample_correct"] == [False, False, True] and not records[1]["correct"]
    assert summary["pass@1"] == pytest.approx((2 / 3 + 1 / 3 + 0) / 3)
    assert summary["maj@n"] == pytest.approx(1 / 3)
    monkeypatch.setattr(M, "generate", scripted(tok, ["I think 12, so \\boxed{5}"]))
    records, summary = E.evaluate(model, tok, rows, max_new_tokens=50, progress=False)
    assert [r["correct"] for r in records] == [True, False, False]
    assert summary["accuracy"] == pytest.approx(1 / 3)
    assert summary["accuracy_ci95"] == pytest.approx(E.wilson(1, 3)) and summary["no_answer_rate"] == 0


def test_one_sampled_answer_per_question(tiny, data_file, monkeypatch):
    """train.py's --eval-samples 1: one SAMPLED answer per question, with the summary of a sampled
    evaluation, in which pass@1, pass@n and maj@n all equal the accuracy."""
    _, model, tok = tiny
    rows = load_rows(data_file)
    one, summary = E.evaluate(model, tok, rows, max_new_tokens=8, n=1, temperature=1.0, seed=3, sampled=True,
                              progress=False)
    two, _ = E.evaluate(model, tok, rows, max_new_tokens=8, n=2, temperature=1.0, seed=3, progress=False)
    greedy, _ = E.evaluate(model, tok, rows, max_new_tokens=8, progress=False)
    assert [r["responses"] for r in one] == [r["responses"][:1] for r in two]  # sample 0 of the same streams
    assert [r["responses"][0] for r in one] != [r["response"] for r in greedy]  # sampled, not greedy
    assert summary["samples_per_question"] == 1 and summary["questions"] == 3
    monkeypatch.setattr(M, "generate", scripted(tok, ["so \\boxed{5}"]))
    records, summary = E.evaluate(model, tok, rows, max_new_tokens=50, n=1, temperature=1.0, sampled=True,
                                  progress=False)
    assert [r["sample_correct"] for r in records] == [[True], [False], [False]]
    assert summary["accuracy"] == summary["pass@1"] == summary["pass@n"] == summary["maj@n"] == pytest.approx(1 / 3)
    assert summary["pass@1_ci95"] == summary["pass@n_ci95"] == pytest.approx(E.wilson(1, 3))


def test_wilson_and_vote():
    lo, hi = E.wilson(0, 10)
    assert lo == 0 and 0.25 < hi < 0.35                     # not the degenerate [0, 0] of p +- z*se
    assert E.wilson(50, 100) == pytest.approx([0.4038, 0.5962], abs=1e-4)
    assert E.majority_vote([None, "\\frac12", "2", "\\dfrac{1}{2}", "2"]) == "\\frac12"   # tie -> first seen
    assert E.majority_vote([None, None]) is None


def test_cli_end_to_end(tiny, data_file, tmp_path):
    d, _, _ = tiny
    out = tmp_path / "o" / "preds.jsonl"
    r = subprocess.run([sys.executable, str(ROOT / "eval.py"), "--model", str(d), "--data", str(data_file),
                        "--out", str(out), "--max-new-tokens", "5", "--limit", "2", "--n", "2",
                        "--temperature", "1.0"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    summary = json.loads((tmp_path / "o" / "preds.summary.json").read_text())
    assert len(lines) == 2 and {"index", "question", "gold", "responses", "answers", "correct"} <= set(lines[0])
    assert summary["args"]["n"] == 2 and "maj@n" in summary and "pass@1" in r.stdout
    assert not list((tmp_path / "o").glob("*.tmp"))        # atomic writes leave no temp files


def test_cli_default_out_is_under_runs_eval(tiny, data_file, tmp_path):
    d, _, _ = tiny
    r = subprocess.run([sys.executable, str(ROOT / "eval.py"), "--model", str(d), "--data", str(data_file),
                        "--max-new-tokens", "2", "--limit", "1"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    out = f"runs/eval/{d.name}-q.preds.jsonl"
    assert f"wrote {out} and runs/eval/{d.name}-q.preds.summary.json" in r.stdout
    assert (tmp_path / out).is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["q.jsonl", "runs"]
    assert json.loads((tmp_path / out).with_suffix(".summary.json").read_text())["args"]["out"] == out


def test_default_out_names_the_model_and_the_data(tmp_path):
    run = tmp_path / "20250101-upft-L8-s0"
    (run / "model").mkdir(parents=True)
    assert E.default_out(str(run / "model"), "../data/gsm8k_test.jsonl") == \
        E.Path("runs/eval/20250101-upft-L8-s0-gsm8k_test.preds.jsonl")
    assert E.default_out("Qwen/Qwen2.5-Math-1.5B-Instruct", "math500.jsonl", "error-position") == \
        E.Path("runs/eval/Qwen2.5-Math-1.5B-Instruct-math500.error-position.json")


@pytest.mark.parametrize("where", ["a_file/preds.jsonl", "a_file/deeper/preds.jsonl", "a_folder"])
def test_cli_bad_out_is_refused_before_the_model_is_loaded(data_file, tmp_path, where):
    (tmp_path / "a_file").write_text("")
    (tmp_path / "a_folder").mkdir()
    r = subprocess.run([sys.executable, str(ROOT / "eval.py"), "--model", str(tmp_path / "no_model"), "--data",
                        str(data_file), "--out", str(tmp_path / where)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("error: --out ") and len(r.stderr.strip().splitlines()) == 1, \
        r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "a_folder", "q.jsonl"]


def test_check_out_reports_a_folder_that_takes_no_file(tmp_path, monkeypatch):
    """The same refusal where the test runs as root (who may write anywhere): the trial file fails."""
    def refuse(dir=None):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(E.tempfile, "TemporaryFile", refuse)
    with pytest.raises(E.UpftError, match=r"cannot write into .* \(Permission denied\)"):
        E.check_out(tmp_path / "new" / "p.jsonl")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder")
def test_cli_out_in_a_read_only_folder_is_refused(data_file, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    r = subprocess.run([sys.executable, str(ROOT / "eval.py"), "--model", str(tmp_path / "no_model"), "--data",
                        str(data_file), "--out", str(ro / "sub" / "p.jsonl")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and r.stderr.startswith(f"error: --out {ro / 'sub' / 'p.jsonl'}: cannot write into"), \
        r.stderr


@pytest.mark.parametrize("full_at", ["preds.jsonl", "preds.summary.json"])
def test_cli_full_disk_is_one_line_and_leaves_nothing(tiny, data_file, tmp_path, capsys, monkeypatch, full_at):
    """The disk fills while the outputs are written: one line, exit 1, and no output at all (not the
    predictions without their summary, no temporary file)."""
    import errno
    d, _, _ = tiny
    writers = {name: getattr(E, name) for name in ("write_json", "write_jsonl")}

    def full_disk(name):
        def write(path, content):
            if str(path).endswith(full_at):
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            return writers[name](path, content)
        return write
    for name in writers:
        monkeypatch.setattr(E, name, full_disk(name))
    out = tmp_path / "o" / "p.preds.jsonl"
    with pytest.raises(SystemExit) as exit_:
        E.main(["--model", str(d), "--data", str(data_file), "--max-new-tokens", "2", "--limit", "1",
                "--device", "cpu", "--out", str(out)])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if not line.startswith("generate: ")]  # the progress lines
    assert exit_.value.code == 1 and len(errors) == 1 and "Traceback" not in err, err
    assert errors[0].startswith("error: ") and f"{full_at}: No space left on device" in errors[0], err
    assert not out.parent.exists() or not list(out.parent.iterdir())


def test_cli_decoding_beyond_memory_is_refused_before_loading(tiny, data_file, tmp_path):
    """A KV cache beyond this machine's memory (10**12 new tokens: 512 TB per sequence on the tiny model):
    one line naming the plan and the smallest change that fits, exit 2, before any model work, and no output."""
    d, _, _ = tiny
    r = subprocess.run([sys.executable, str(ROOT / "eval.py"), "--model", str(d), "--data", str(data_file),
                        "--max-new-tokens", str(10 ** 12), "--out", str(tmp_path / "o" / "p.jsonl")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("error: memory plan: decoding 3 sequence(s) of 512 + 1,000,000,000,000 tokens needs")
    assert "smallest change that fits: --batch-size 1 --max-new-tokens " in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.jsonl"]


def _decoding_bytes(d, batch, tokens):
    from launch.plan import memory_plan
    return memory_plan(M.Config.from_json(d / "config.json"), sample_batch=batch, sample_tokens=tokens)["sample_total"]


def test_memory_check_comes_before_the_model_is_loaded(tiny, data_file, tmp_path, monkeypatch, capsys):
    d, _, _ = tiny

    def no_load(*a, **kw):
        raise AssertionError("the model was loaded before the memory plan refused the decoding")
    monkeypatch.setattr(E.Transformer, "from_pretrained", no_load)
    capacity = _decoding_bytes(d, 2, 100_000)  # room for 2 sequences of 512 + 100,000 tokens
    monkeypatch.setattr(A, "usable_bytes", lambda cuda, device: capacity)
    argv = ["--model", str(d), "--data", str(data_file), "--out", str(tmp_path / "p.jsonl"), "--max-new-tokens"]
    with pytest.raises(SystemExit) as e:  # 3 questions x 4 samples; a smaller batch decodes one question's 4
        E.main(argv + ["100000", "--n", "4", "--temperature", "1"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: memory plan: decoding 12 sequence(s)"), err
    tokens = int(err.split("--batch-size 4 --max-new-tokens ")[1])
    assert _decoding_bytes(d, 4, tokens) <= capacity < _decoding_bytes(d, 4, tokens + 1)
    with pytest.raises(SystemExit):  # 2 questions, one token too many for both at once
        E.main(argv + ["100001", "--limit", "2"])
    assert capsys.readouterr().err.strip().endswith("smallest change that fits: --batch-size 1")
    assert not (tmp_path / "p.jsonl").exists()


def test_a_model_path_that_is_no_checkpoint_is_one_line(data_file, tmp_path, capsys):
    """The memory plan reads config.json first: a local path that is not a checkpoint folder is named as
    such (not looked up on the Hugging Face Hub), in one line."""
    for model in (tmp_path / "nowhere", data_file):
        with pytest.raises(SystemExit) as e:
            E.main(["--model", str(model), "--data", str(data_file), "--out", str(tmp_path / "p.jsonl")])
        assert e.value.code == 2 and capsys.readouterr().err == f"error: {model}: not a checkpoint directory\n"


def test_decoding_fix_names_the_largest_batch_that_fits(tiny):
    from launch.plan import decoding_fix
    d = tiny[0]
    cfg, cap = M.Config.from_json(d / "config.json"), _decoding_bytes(d, 7, 100_000)
    assert decoding_fix(cfg, cap, 7, 100_000) is None
    assert decoding_fix(cfg, cap, 8, 100_000).endswith("smallest change that fits: --batch-size 7")
    fix = decoding_fix(cfg, cap, 64, 100_000, least=8)  # 8 at least: the largest budget for 8
    tokens = int(fix.split("smallest change that fits: --batch-size 8 --max-new-tokens ")[1])
    assert _decoding_bytes(d, 8, tokens) <= cap < _decoding_bytes(d, 8, tokens + 1)
    weights = _decoding_bytes(d, 0, 0)
    assert decoding_fix(cfg, weights - 1, 1, 10).endswith(f"the weights alone need {weights / 2 ** 30:.1f} GiB")
    assert decoding_fix(cfg, weights + 1, 1, 10).endswith("not even 1 sequence(s) of one new token fit next to "
                                                          "the weights")


def test_prefix_consistency_real_model(tiny, data_file):
    _, model, tok = tiny
    rows = load_rows(data_file)
    res = A.prefix_consistency(model, tok, rows, num_samples=4, max_new_tokens=8, temperature=1.0)
    assert res["prefix_len"] == [1, 2, 4, 8]                # grid capped at the longest sample
    assert all(1 <= v <= 4 for v in res["avg_samples_per_prefix"])
    assert res["avg_samples_per_prefix"] == sorted(res["avg_samples_per_prefix"], reverse=True)


def test_prefix_consistency_counts(tiny, monkeypatch):
    _, model, tok = tiny
    # 4 samples: two share everything, the third shares the first 2 tokens only, the fourth nothing.
    a, b = list(range(10, 18)), list(range(20, 28))
    samples = [a, a, a[:2] + b[2:], b]
    monkeypatch.setattr(M, "generate", lambda *args, **kw: [samples])  # one question, its 4 samples
    res = A.prefix_consistency(model, tok, [{"question": "q", "gold": "1"}], num_samples=4, max_new_tokens=8)
    assert res["prefix_len"] == [1, 2, 4, 8] and res["avg_samples_per_prefix"] == [2, 2, 4 / 3, 4 / 3]


def test_error_position_scripted(tiny, data_file, monkeypatch):
    _, model, tok = tiny
    rows = load_rows(data_file)[:2]
    # Every question gets a correct sample 0 and an incorrect sample 1; rollouts alternate the same way,
    # so each success rate is exactly 1/2 (a rollout's answer is the last box, i.e. the continuation's).
    monkeypatch.setattr(M, "generate", scripted(tok, ["step one step two \\boxed{5}", "wrong \\boxed{4}"]))
    res = A.error_position(model, tok, rows, num_samples=2, rollouts=4, max_new_tokens=64)
    assert res["questions_used"] == 1                       # question 2's gold 1/2 is never produced
    for kind in ("correct", "incorrect"):
        assert res[kind]["prefix_len"][0] == 0 and all(t < 20 for t in res[kind]["prefix_len"])
        assert set(res[kind]["success_rate"]) == {0.5} and set(res[kind]["trajectories"]) == {1}


def test_error_position_real_model_and_cli(tiny, data_file, tmp_path):
    d, model, tok = tiny
    res = A.error_position(model, tok, load_rows(data_file), num_samples=2, rollouts=2, max_new_tokens=4)
    assert res["questions_used"] == 0 and res["correct"]["prefix_len"] == []   # random model: never right
    out = tmp_path / "pc.json"
    r = subprocess.run([sys.executable, str(ROOT / "eval.py"), "--model", str(d), "--data", str(data_file),
                        "--analysis", "prefix-consistency", "--num-samples", "3", "--max-new-tokens", "4",
                        "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    saved = json.loads(out.read_text())
    assert saved["prefix_len"] == [1, 2, 4] and saved["args"]["temperature"] == 0.6


def test_data_without_model_is_refused(data_file, tmp_path, capsys):
    """Without --model eval.py evaluates the toy world's model on its own test split; --data alone would quietly
    grade the toy model on other questions: refused in one line."""
    with pytest.raises(SystemExit) as e:
        E.main(["--data", str(data_file), "--out", str(tmp_path / "p.jsonl")])
    assert e.value.code == 2 and capsys.readouterr().err.startswith("error: --data needs --model")
