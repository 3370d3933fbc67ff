"""Problem 12, the lab (docs/assignment.md): what answers/lab.json and answers/lab.md hand in.

answers/lab.json holds, for the decision world and its mirror, the run folder and the base and tuned model's
careful-opener share and sampled accuracy (fractions, as `python scripts/openers.py RUN --json` prints them);
answers/lab.md one section per question ("## Question k"). Where a named run folder is in the copy, its numbers
must be that run's. (In the reference repository, which has no answers/, the answer key's files are checked.)
"""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ANSWERS = ROOT / "answers" if (ROOT / "answers").is_dir() else ROOT / "docs" / "answer-key" / "answers"
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
    """A run folder named in answers/lab.json that is in the copy: the numbers are its own (to 0.001), and it ran
    on its world with sampled evaluations."""
    sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
    import openers
    for world, d in numbers().items():
        run = ROOT / (d.get("run") or "")
        if not d.get("run") or not (run / "results.json").is_file():
            continue   # the run is not in this copy: the instructor compares the numbers with the reference's
        args = json.loads((run / "args.json").read_text())
        assert Path(args.get("world") or "").name == WORLDS[world], \
            f"{run}: ran on --world {args.get('world')}, not assets/{WORLDS[world]}"
        assert args.get("eval_samples", 0) >= 2, f"{run}: needs --eval-samples 4 (got {args.get('eval_samples')})"
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
