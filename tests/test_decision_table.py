"""scripts/decision_table.py: the careful-opener share and its paired change, accuracy per opener, and
the predictions of docs/experiments.md §2 scored by their rules, from run summaries."""
import json
import sys

import numpy as np
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import decision_table as dt  # noqa: E402
import results_table as rt  # noqa: E402

Q = 40
C, H = "Slowly:\nA.", "Fast:\nA."


def _run(results, name, seed, base, tuned):
    """A run folder and its summary; base/tuned: per question a list of (opener text, right) for 4 samples."""
    d = rt.run_dir(results / "runs", name, seed)
    d.mkdir(parents=True)
    for tag, samples in (("base", base), ("tuned", tuned)):
        greedy = [{"index": i, "question": f"q{i}", "correct": s[0][1], "response": s[0][0]} for i, s in enumerate(samples)]
        (d / f"eval_{tag}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in greedy))
        recs = [{"index": i, "question": f"q{i}", "responses": [t for t, _ in s], "sample_correct": [ok for _, ok in s]}
                for i, s in enumerate(samples)]
        (d / f"eval_{tag}_sampled.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    acc = lambda s: float(np.mean([ok for q in s for _, ok in q]))  # noqa: E731
    summary = {"accuracy": 0.5, "questions": Q, "mean_tokens": 1.0, "no_answer_rate": 0.0}
    (d / "results.json").write_text(json.dumps({
        "base": {**summary, "accuracy": float(np.mean([s[0][1] for s in base]))},
        "tuned": {**summary, "accuracy": float(np.mean([s[0][1] for s in tuned]))},
        "base_sampled": {"accuracy": acc(base), "pass@n": 1.0, "samples_per_question": 4},
        "tuned_sampled": {"accuracy": acc(tuned), "pass@n": 1.0, "samples_per_question": 4},
        "accounting": {"questions": 10}, "wall_seconds": 1.0, "resumed": False}))
    (d / "args.json").write_text(json.dumps({"eval_temperature": 0.6}))
    (d / "metrics.jsonl").write_text("")
    rt.write_summary(d, rt.summary_path(results, name, seed))


def _answers(careful, rng):
    """4 answers per question: `careful` of them careful (right 80% of the time), the rest hasty (right 30%)."""
    return [[(C, bool(rng.random() < 0.8)) if j < careful else (H, bool(rng.random() < 0.3)) for j in range(4)]
            for _ in range(Q)]


def test_shares_conditional_accuracy_and_the_predictions(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    base = _answers(2, rng)  # half careful at base
    for seed in range(3):
        _run(tmp_path, "UPFT (N=1)", seed, base, _answers(3, rng))   # the share goes up, 25 points
        _run(tmp_path, "UPFT + voting (N=8)", seed, base, _answers(4, rng))       # further up
        _run(tmp_path, "UPFT control (T=1, no top-p)", seed, base, base)          # no move at all
    results = rt.load(tmp_path, [0, 1, 2], rows=dt.ARMS, partial=True)
    d = dt.share_differences(results["UPFT (N=1)"])
    assert d.shape == (3, Q) and d.mean() == pytest.approx(0.25)
    table, cb = dt.world_table("decision", results)
    assert cb["careful"][1] == cb["hasty"][1] == 2 * Q  # 80 careful and 80 hasty answers at base
    assert cb["careful"][0] > cb["hasty"][0]
    base_row = next(line for line in table.splitlines() if line.startswith("| base |"))
    assert base_row.split("|")[7].strip() == "50.0"  # the careful share before
    assert base_row.split("|")[4].strip() == "100.0"  # every greedy answer (the first sample) opens careful here
    upft_row = next(line for line in table.splitlines() if line.startswith("| UPFT (N=1) |"))
    gap = cb["careful"][0] - cb["hasty"][0]  # the accuracy change expected if only the share moved: Δshare x gap
    assert upft_row.split("|")[9].strip() == f"{100 * 0.25 * gap:+.1f}"
    rows = {line.split("|")[1].strip(): line.split("|")[4].strip() for line in dt.predictions("decision", results, cb)}
    assert rows["P1 UPFT (N=1): careful share"] == "confirmed"
    assert rows["P3 voting minus N=1: careful share"] == "confirmed"
    assert rows["P4 T = 1 control: careful share"] == "confirmed"  # exactly zero: "no effect"
    # the mirror predicts the opposite direction: the same data refute P1 there
    mirror = {line.split("|")[1].strip(): line.split("|")[4].strip() for line in dt.predictions("mirror", results, cb)}
    assert mirror["P1 UPFT (N=1): careful share"] == "refuted"
    monkeypatch.setattr(dt, "WORLDS", {"decision": tmp_path, "mirror": tmp_path / "none"})
    text = dt.report()
    assert "### The decision world" in text and "No finished runs yet" in text


def test_one_seed_is_not_assessable(tmp_path):
    rng = np.random.default_rng(1)
    base = _answers(2, rng)
    _run(tmp_path, "UPFT (N=1)", 0, base, _answers(4, rng))
    results = rt.load(tmp_path, [0, 1, 2], rows=dt.ARMS, partial=True)
    _, cb = dt.world_table("decision", results)
    rows = {line.split("|")[1].strip(): line.split("|")[4].strip() for line in dt.predictions("decision", results, cb)}
    assert rows["P1 UPFT (N=1): careful share"] == "not assessable"


def test_openers_of_one_run(tmp_path, capsys):
    """scripts/openers.py (the course lab's view of one run): shares and per-opener accuracy, base and tuned."""
    import openers
    rng = np.random.default_rng(2)
    _run(tmp_path, "UPFT (N=1)", 0, _answers(2, rng), _answers(3, rng))
    openers.main([str(rt.run_dir(tmp_path / "runs", "UPFT (N=1)", 0))])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("base   careful share  50.0%") and out[1].startswith("tuned  careful share  75.0%")
    assert out[2].startswith("careful share, tuned - base: +25.0 [+25.0, +25.0] points")
    with pytest.raises(SystemExit, match="no sampled evaluations"):
        openers.main([str(tmp_path)])


def test_the_readme_rows(tmp_path, monkeypatch):
    """The README's positive-control lines: none until both worlds have a UPFT (N=1) run, then one per world
    with the careful share before -> after, its paired change and P1's verdict in that world's direction."""
    rng = np.random.default_rng(3)
    base = _answers(2, rng)
    monkeypatch.setattr(dt, "WORLDS", {"decision": tmp_path / "d", "mirror": tmp_path / "m"})
    for seed in range(3):
        _run(tmp_path / "d", "UPFT (N=1)", seed, base, _answers(3, rng))  # up 25 points
    assert dt.readme_rows() is None  # the mirror has no run yet
    _run(tmp_path / "m", "UPFT (N=1)", 0, base, _answers(1, rng))  # down 25 points, one seed
    rows = [line.split("|") for line in dt.readme_rows().splitlines() if line.startswith("| the") or
            line.startswith("| its")]
    assert [r[1].strip() for r in rows] == ["the decision world (careful opener preferred)",
                                             "its mirror (hasty opener preferred) (seed 0)"]
    assert [r[2].strip() for r in rows] == ["50.0 → 75.0", "50.0 → 25.0"]
    assert rows[0][3].strip() == "+25.0 [+25.0, +25.0] (P1: confirmed)"
    assert rows[1][3].strip().endswith("(P1: not assessable)") and rows[1][3].strip().startswith("-25.0")
