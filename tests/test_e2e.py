"""End to end through the real CLIs on the shipped toy world (the same code path as
`python train.py --prefix-len 8`, on 64 training and 32 held-out questions so it runs in CI time).
Checks the plumbing the acceptance lists ask for; the accuracy figures come from scripts/results_table.py."""
import json
import os
import subprocess
import sys

import pytest
import torch

import toy
from train import TOY_NOTE
from conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("e2e")
    env = dict(os.environ)
    out = d / "run"
    p = subprocess.run([sys.executable, "train.py", "--prefix-len", "8", "--out", str(out), "--limit", "64",
                        "--eval-limit", "32", "--eval-max-new-tokens", "64", "--max-new-tokens", "64"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    return d, out, env, p.stdout


def test_train_cli_reports_accuracy_and_accounting(toy_run):
    d, out, env, stdout = toy_run
    assert "base  accuracy:" in stdout and "tuned accuracy:" in stdout
    assert "tokens sampled:" in stdout and "tokens supervised:" in stdout
    assert stdout.rstrip().splitlines()[-1] == TOY_NOTE  # a toy run ends by pointing at docs/results.md's table
    res = json.loads((out / "results.json").read_text())
    a = res["accounting"]
    assert a["questions"] == 64 and a["full_examples"] == round(0.1 * 64)
    for f in ("args.json", "metrics.jsonl", "train_examples.jsonl", "rollouts.jsonl", "model/config.json",
              "model/model.safetensors", "model/tokenizer.json", "model/generation_config.json"):
        assert (out / f).is_file(), f
    assert not (out / "checkpoint").exists()
    assert [f.name for f in d.iterdir()] == ["run"]  # no .partial folder left behind


def test_eval_cli_matches_train_report(toy_run):
    d, out, env, _ = toy_run
    res = json.loads((out / "results.json").read_text())
    test = toy.WORLD_DIR / "test.jsonl"
    p = subprocess.run([sys.executable, "eval.py", "--model", str(out / "model"), "--data", str(test),
                        "--limit", "32", "--max-new-tokens", "64", "--out", str(d / "preds.jsonl")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    summary = json.loads((d / "preds.summary.json").read_text())
    assert summary["accuracy"] == res["tuned"]["accuracy"]
    assert summary["questions"] == res["tuned"]["questions"]


def test_tuned_model_greedy_equals_transformers(toy_run):
    transformers = pytest.importorskip("transformers")
    from data import Tokenizer, chat_prompt, read_jsonl
    from model import Transformer, generate
    d, out, env, _ = toy_run
    ours = Transformer.from_pretrained(out / "model")
    tok = Tokenizer.from_pretrained(out / "model")
    ref = transformers.AutoModelForCausalLM.from_pretrained(out / "model", dtype=torch.float32).eval()
    rows = read_jsonl(toy.WORLD_DIR / "test.jsonl")[:4]
    prompts = [chat_prompt(tok, r["question"]) for r in rows]
    got = generate(ours, prompts, 48, stop_ids=tok.eos_ids)
    for p, g in zip(prompts, got):
        with torch.no_grad():
            hf = ref.generate(torch.tensor([p]), max_new_tokens=48, do_sample=False,
                              eos_token_id=tok.eos_ids, pad_token_id=tok.pad_id)[0, len(p):].tolist()
        hf = hf[:next((i for i, t in enumerate(hf) if t in tok.eos_ids), len(hf))]
        assert hf == g


def test_analyses_run_on_toy(toy_run):
    d, out, env, _ = toy_run
    test = toy.WORLD_DIR / "test.jsonl"
    for analysis, extra in (("prefix-consistency", ["--num-samples", "4"]),
                            ("error-position", ["--num-samples", "4", "--rollouts", "2"])):
        res = d / f"{analysis}.json"
        p = subprocess.run([sys.executable, "eval.py", "--model", str(out / "model"), "--data", str(test),
                            "--analysis", analysis, "--limit", "4", "--max-new-tokens", "32", "--out", str(res),
                            *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
        assert json.loads(res.read_text())
