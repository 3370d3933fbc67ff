"""Problem 12, the lab (docs/assignment.md): what answers/lab.json and answers/lab.md hand in.

answers/lab.json holds, for the decision world and its mirror, the run folder and the base and tuned model's
careful-opener share and sampled accuracy (fractions, as `python scripts/openers.py RUN --json` prints them);
answers/lab.md one section per question ("## Question k"). The two run folders stay in the copy: each must
have run the handout's command on its world, and the numbers must be its own. (In the reference repository,
which has no answers/, the answer key's files and runs are checked.)
"""
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(os.environ.get("UPFT_GRADE_COPY") or Path(__file__).resolve().parents[2]).resolve()  # (helpers.CODE)
BASE = ROOT if (ROOT / "answers").is_dir() else ROOT / "docs" / "answer-key"   # where answers/ and runs/ lie
ANSWERS = BASE / "answers"
COMMAND = {"eval_samples": 4, "eval_limit": 200, "prefix_len": 8, "method": "upft"}  # the handout's flags
WORLDS = {"decision": "toy-decision", "mirror": "toy-mirror"}
QUESTIONS = 7
MIN_WORDS = 15


def numbers():
    path = ANSWERS / "lab.json"
    assert path.is_file(), f"{path} is missing (a fresh copy has it blank)"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise AssertionError(f"{path}: not JSON ({e})") from None


def test_the_numbers_are_filled_in():
    got = numbers()
    assert sorted(got) == sorted(WORLDS), f"answers/lab.json: worlds {sorted(got)}, expected {sorted(WORLDS)}"
    for world, d in got.items():
        for tag in ("base", "tuned"):
            for key in ("careful_share", "sampled_accuracy"):
                v = (d.get(tag) or {}).get(key)
                assert isinstance(v, (int, float)) and 0 <= v <= 1, \
                    f"answers/lab.json: {world}.{tag}.{key} should be a fraction in [0, 1], got {v!r}"


def test_the_numbers_are_those_of_the_runs():
    """Each run folder named in answers/lab.json is in the copy, ran the handout's command on its world (its
    args.json), evaluated its 200 questions with 4 samples each, and gives the numbers written (to 0.001)."""
    sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
    import openers
    for world, d in numbers().items():
        run = BASE / (d.get("run") or "(no run named)")
        assert (run / "results.json").is_file() and (run / "args.json").is_file(), \
            f"answers/lab.json: {world}'s run {d.get('run')} is not in this copy (keep both run folders)"
        args = json.loads((run / "args.json").read_text())
        assert Path(args.get("world") or "").name == WORLDS[world], \
            f"{run}: ran on --world {args.get('world')}, not assets/{WORLDS[world]}"
        for key, want in COMMAND.items():
            assert args.get(key) == want, f"{run}: --{key.replace('_', '-')} {args.get(key)}, the handout's is {want}"
        for tag in ("base", "tuned"):
            records = [json.loads(line) for line in (run / f"eval_{tag}_sampled.jsonl").read_text().splitlines()]
            assert len(records) == 200 and all(len(r["responses"]) == 4 for r in records), \
                f"{run}: eval_{tag}_sampled.jsonl should hold 200 questions with 4 answers each"
        measured = openers.summary(run)
        for tag in ("base", "tuned"):
            for key, v in measured[tag].items():
                assert d[tag][key] == pytest.approx(v, abs=1e-3), \
                    f"answers/lab.json: {world}.{tag}.{key} = {d[tag][key]}, but {run} gives {v:.4f}"


def test_every_question_has_a_written_answer():
    path = ANSWERS / "lab.md"
    assert path.is_file(), f"{path} is missing (a fresh copy has it blank)"
    sections = {}
    current = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("## Question "):
            current = line.removeprefix("## Question ").strip()
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
    for k in range(1, QUESTIONS + 1):
        text = " ".join(sections.get(str(k), []))
        assert str(k) in sections, f"answers/lab.md: no '## Question {k}' section"
        assert "(your answer)" not in text, f"answers/lab.md: question {k} is still blank"
        assert len(text.split()) >= MIN_WORDS, \
            f"answers/lab.md: question {k} has {len(text.split())} words; write at least {MIN_WORDS}"
