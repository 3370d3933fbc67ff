"""scripts/gpu_check.py in its CPU mode: every part of the GPU check runs at tiny sizes here, so the script
that waits for a GPU cannot rot unnoticed; and its machinery (a failing part is recorded while the others
run, a part that would overrun is skipped, the exit code)."""
import json
import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT

SCRIPT = ROOT / "scripts" / "gpu_check.py"
PARTS = ["env", "toy", "parity", "bench", "torchrun", "refusal"]


def _check(out, *extra, env=None, timeout=600):
    return subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--out", str(out), *extra], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_cpu_mode_passes_every_part(tmp_path):
    pytest.importorskip("transformers")
    t = time.time()
    r = _check(tmp_path / "check")
    seconds = time.time() - t
    out = tmp_path / "check"
    report = json.loads((out / "report.json").read_text())
    summary = (out / "summary.md").read_text()
    assert r.returncode == 0, r.stdout + r.stderr  # one line per part: which failed, and why
    assert list(report["parts"]) == PARTS and report["passed"]
    for name, p in report["parts"].items():
        assert p["status"] == "passed" and p["checks"] and all(c["ok"] for c in p["checks"]), (name, p)
    assert summary.startswith(f"# GPU check: PASSED ({len(PARTS)} of {len(PARTS)} parts passed)")
    n = {k: p["numbers"] for k, p in report["parts"].items()}
    # 1: the tiny toy run against the committed CPU reference of the same command
    assert n["toy"]["device_run"]["prefix_examples"] == n["toy"]["cpu_reference"]["prefix_examples"] == 14
    assert "gpu_check_reference.json" in n["toy"]["reference"]
    # 2: logits and greedy tokens; 3: the bench's table parsed, a row per batch
    assert n["parity"]["decode_float32"]["rows_identical"] == "4/4"
    assert sorted(n["bench"]["rows"]) == ["1", "2"] and n["bench"]["rows"]["1"]["ours_tok_s"] > 0
    # 4: two launches, two steps each; 5: the refusal's line and the micro-batch it names
    assert len(n["torchrun"]["losses"]["torchrun"]) == 2
    assert n["refusal"]["error_line"].startswith("error: memory plan: training needs")
    assert n["refusal"]["suggested_micro_batch"] >= 1
    # the report holds the runs' small files, no weights
    assert (out / "torchrun" / "torchrun" / "memory_measured.json").is_file()
    assert not list(out.rglob("*.safetensors"))
    print(f"\nCPU mode: {seconds:.0f} s (report: {report['seconds']:.0f} s), parts: "
          + ", ".join(f"{k} {p['seconds']:.0f} s" for k, p in report["parts"].items()))


def test_a_failing_part_is_recorded_a_part_that_would_overrun_is_skipped(tmp_path):
    """toy's share of a 10 s deadline is below its minimum: skipped; refusal is broken on purpose: its error
    is recorded; env still passes; the exit code says not everything passed."""
    env = {**os.environ, "UPFT_GPU_CHECK_BREAK": "refusal"}
    r = _check(tmp_path / "check", "--parts", "toy", "refusal", "--deadline", "10", env=env, timeout=120)
    report = json.loads((tmp_path / "check" / "report.json").read_text())
    parts = report["parts"]
    assert r.returncode == 1 and not report["passed"]
    assert list(parts) == ["env", "toy", "refusal"]
    assert parts["env"]["status"] == "passed"
    assert parts["toy"]["status"] == "skipped" and "below its minimum" in parts["toy"]["why"]
    assert parts["refusal"]["status"] == "failed" and "broken on purpose" in parts["refusal"]["error"]
    summary = (tmp_path / "check" / "summary.md").read_text()
    assert summary.startswith("# GPU check: FAILED (1 of 3 parts passed)") and "broken on purpose" in summary


def test_an_existing_report_folder_is_refused(tmp_path):
    (tmp_path / "old.txt").write_text("a previous report")
    r = _check(tmp_path, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("error: --out") and len(r.stderr.strip().splitlines()) == 1
