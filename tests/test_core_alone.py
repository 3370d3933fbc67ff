"""The core runs on its own. The six core files (upft, model, data, train, eval, grader), assets/ and
requirements.txt alone, copied into an empty folder: `python train.py --prefix-len 8` trains the toy world
and gives the numbers the full checkout gives through launch/ (its run folder, checkpoints and memory plan:
--save-every takes that path), byte for byte; `python eval.py` evaluates there; launch/'s features are
refused there before anything runs."""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

CORE = ["upft.py", "model.py", "data.py", "train.py", "eval.py", "grader.py", "requirements.txt"]
SMALL = ["--prefix-len", "8", "--limit", "64", "--eval-limit", "64"]


@pytest.fixture(scope="module")
def alone(tmp_path_factory):
    folder = tmp_path_factory.mktemp("core alone")  # (a path with a space)
    for name in CORE:
        shutil.copy(ROOT / name, folder / name)
    shutil.copytree(ROOT / "assets", folder / "assets")
    return folder


def _python(cwd, *argv, timeout=600):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing of the checkout on the path
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # (the last check: nothing written beside the code)
    return subprocess.run([sys.executable, *map(str, argv)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _numbers(run):
    """What a run is judged by: results.json without its clocks, and the tuned weights' sha256."""
    results = json.loads((run / "results.json").read_text())
    results.pop("wall_seconds")
    results["accounting"] = {k: v for k, v in results["accounting"].items() if not k.endswith("_seconds")}
    return results, hashlib.sha256((run / "model" / "model.safetensors").read_bytes()).hexdigest()


def _report(out):
    """The accuracy and token lines a run prints."""
    starts = ("base  accuracy:", "tuned accuracy:", "tokens sampled:")
    return [line for line in out.splitlines() if line.startswith(starts)]


def _same_as_the_full_checkout(alone, tmp_path, argv):
    alone_run = _python(alone, "train.py", *argv, "--out", tmp_path / "alone")
    assert alone_run.returncode == 0, alone_run.stderr[-3000:]
    full = _python(ROOT, "train.py", *argv, "--save-every", "3", "--out", tmp_path / "full")
    assert full.returncode == 0, full.stderr[-3000:]
    assert (tmp_path / "full" / "memory_plan.json").is_file()  # the full checkout's run went through launch/
    assert not (tmp_path / "alone" / "memory_plan.json").exists()
    assert _numbers(tmp_path / "alone") == _numbers(tmp_path / "full")
    assert _report(alone_run.stdout) == _report(full.stdout) and len(_report(alone_run.stdout)) == 3
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (tmp_path / "alone" / "model" / name).is_file(), name  # HF layout
    assert {p.name for p in (tmp_path / "alone").iterdir()} >= {"args.json", "results.json", "rollouts.jsonl",
                                                               "train_examples.jsonl", "metrics.jsonl"}


def test_the_core_alone_trains_as_the_full_checkout(alone, tmp_path):
    _same_as_the_full_checkout(alone, tmp_path, SMALL)


@pytest.mark.slow
def test_the_core_alone_default_run(alone, tmp_path):
    """`python train.py --prefix-len 8` as the README runs it (1,000 questions, 200 held out, 2 samples each)."""
    _same_as_the_full_checkout(alone, tmp_path, ["--prefix-len", "8"])


def test_eval_alone_and_what_the_core_refuses(alone, tmp_path):
    r = _python(alone, "eval.py", "--limit", "8", "--max-new-tokens", "256", "--out", tmp_path / "p.jsonl")
    assert r.returncode == 0 and r.stdout.startswith("accuracy ") and "on 8 questions" in r.stdout, r.stderr[-2000:]
    assert len(json.loads((tmp_path / "p.summary.json").read_text())["args"]) > 0
    r = _python(alone, "eval.py", "--analysis", "prefix-consistency", "--out", tmp_path / "a.json")
    assert r.returncode == 2 and r.stderr.startswith("error: --analysis: ") and len(r.stderr.splitlines()) == 1
    r = _python(alone, "train.py", "--resume", "--out", tmp_path / "r")
    assert r.returncode == 2 and "unrecognized arguments: --resume" in r.stderr
    r = subprocess.run([sys.executable, "train.py"], cwd=alone, capture_output=True, text=True, timeout=120,
                       env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"LOCAL_RANK": "0"})
    assert r.returncode == 2 and r.stderr == "error: torchrun needs launch/, which this copy does not have\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl", "p.summary.json"]
    assert sorted(p.name for p in alone.iterdir() if p.name != "__pycache__") == sorted(CORE + ["assets"])


def test_the_core_takes_launch_s_rules_where_they_would_differ(tmp_path, capsys):
    """The plain toy run goes through train.py alone; where launch/ would decide otherwise, it doesn't differ: the
    loss windows follow the memory plan's rule (a result: the windowed sum is not the plain sum to the last bit),
    and an interrupted run at --out takes launch/'s way, which refuses to start afresh beside it."""
    import train
    from launch import cli, plan
    for max_len in (512, 2048):
        argv = ["--max-len", str(max_len), "--out", str(tmp_path / f"r{max_len}")]
        core = train.parse_args(argv)
        launched = cli.parse_args(argv + ["--save-every", "0"])
        planned = plan.plan_run(train.Config.from_json(train.TOY_WORLD / "model" / "config.json"), 2**40,
                                max_len=max_len, loss_chunk=launched.loss_chunk, sample_batch=1, eval_batch=1)
        assert core.loss_chunk == planned.loss_chunk == (train.LOSS_CHUNK if max_len > train.LOSS_CHUNK else 0)
    (tmp_path / "run.partial").mkdir()
    with pytest.raises(SystemExit) as e:
        train.main(["--limit", "2", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and "holds an interrupted run" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.partial"]
