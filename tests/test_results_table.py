"""scripts/results_table.py's table: paired deltas with a hierarchical bootstrap interval, resumed runs
left out of the time column, docs/results.md and the README's digest rewritten only with --readme."""
import json
import sys

import numpy as np
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import results_table as rt  # noqa: E402

BASE = [1, 0, 1, 0, 1, 0, 1, 0, 1, 0]  # greedy correctness of the base model on 10 held-out questions


def _records(path, correct, sampled=None):
    path.write_text("".join(json.dumps({"index": i, "correct": bool(c), **(
        {"sample_correct": s} if sampled else {})}) + "\n" for i, (c, s) in
        enumerate(zip(correct, sampled or [None] * len(correct)))))


def _run(out, name, seed, tuned, wall, resumed, sampled=None):
    d = rt.run_dir(out, name, seed)
    d.mkdir(parents=True)
    acct = {"tokens_sampled": 100, "tokens_supervised": 50, "sampling_seconds": wall / 2,
            "training_seconds": wall / 4, "questions": 10, "questions_dropped_no_correct_sample": 1}
    _records(d / "eval_base.jsonl", BASE)
    _records(d / "eval_tuned.jsonl", tuned)
    if sampled:
        _records(d / "eval_base_sampled.jsonl", BASE, [[True, False]] * 10)
        _records(d / "eval_tuned_sampled.jsonl", tuned, sampled)
    summary = lambda c: {"accuracy": sum(c) / len(c), "questions": len(c), "mean_tokens": 100.0,  # noqa: E731
                         "no_answer_rate": 0.0, "one_line_rate": 0.0}
    res = {"base": summary(BASE), "tuned": summary(tuned), "accounting": acct, "wall_seconds": wall,
           "resumed": resumed, "base_sampled": None, "tuned_sampled": None}
    if sampled:
        res["base_sampled"] = {"accuracy": 0.5, "pass@n": 1.0, "samples_per_question": 2}
        res["tuned_sampled"] = {"accuracy": float(np.mean([np.mean(x) for x in sampled])), "pass@n": 1.0,
                                "samples_per_question": 2}
    (d / "results.json").write_text(json.dumps(res))
    (d / "args.json").write_text(json.dumps({"eval_temperature": 0.6}))


def test_paired_delta_and_its_bootstrap_interval(tmp_path):
    # seed 0 gains question 1, seed 1 gains questions 1 and 3, seed 2 loses question 0
    tuned = {0: [1, 1, 1, 0, 1, 0, 1, 0, 1, 0], 1: [1, 1, 1, 1, 1, 0, 1, 0, 1, 0], 2: [0, 0, 1, 0, 1, 0, 1, 0, 1, 0]}
    for seed in range(3):
        _run(tmp_path, "SFT", seed, tuned[seed], 100, False)
    runs = rt.load(tmp_path, [0, 1, 2])["SFT"]
    d, lo, hi = rt.paired_delta(runs, sampled=False)
    assert d == pytest.approx((1 + 2 - 1) / 30)  # the mean per-question change over seeds and questions
    assert lo < 0 < d < hi  # one seed loses what the others gain: the interval holds zero
    same = rt.paired_delta([runs[1]] * 3, sampled=False)
    assert same[0] == pytest.approx(0.2) and same[1] < 0.2 < same[2]  # questions still vary
    const = tmp_path / "c"
    for seed in range(3):  # no question changes: no spread at all
        _run(const, "SFT", seed, BASE, 100, False)
    d, lo, hi = rt.paired_delta(rt.load(const, [0, 1, 2])["SFT"], sampled=False)
    assert d == lo == hi == 0


def test_sampled_columns_are_paired_too(tmp_path):
    sampled = [[True, True]] + [[True, False]] * 9  # question 0: 2 of 2 correct instead of 1 of 2
    for seed in range(2):
        _run(tmp_path, "SFT", seed, BASE, 100, False, sampled=sampled)
        _run(tmp_path, "RFT (16 samples)", seed, BASE, 400, False, sampled=sampled)
    d, lo, hi = rt.paired_delta(rt.load(tmp_path, [0, 1])["SFT"], sampled=True)
    assert d == pytest.approx(0.05) and lo <= 0.05 <= hi
    table = rt.make_table(rt.load(tmp_path, [0, 1]), [0, 1], 8)
    sft = next(line for line in table.splitlines() if line.startswith("| SFT |"))
    cells = [c.strip() for c in sft.strip("|").split("|")]
    assert cells[1] == "50.0" and cells[2].startswith("+0.0 [") and cells[3] == "55.0" and cells[4].startswith("+5.0 [")
    assert "| base | 50.0 | – | 50.0 | – | 100.0 |" in table


def test_resumed_runs_leave_the_time_column(tmp_path):
    for seed, (wall, resumed) in enumerate([(100, False), (300, False), (7, True)]):
        _run(tmp_path, "SFT", seed, BASE, wall, resumed)
        _run(tmp_path, "RFT (16 samples)", seed, BASE, 400, False)
    table = rt.make_table(rt.load(tmp_path, [0, 1, 2]), [0, 1, 2], 8)
    sft = next(line for line in table.splitlines() if line.startswith("| SFT |"))
    assert sft.rstrip(" |").endswith("| 150 (2)")                  # (50+150)/2: the two whole runs
    rft = next(line for line in table.splitlines() if line.startswith("| RFT"))
    assert rft.rstrip(" |").endswith("| 300")                      # nothing resumed: no count shown
    assert "1 run was interrupted and resumed" in table and "at least" in table


def test_readme_is_rewritten_only_with_the_flag(tmp_path, monkeypatch, capsys):
    """--readme writes the full table into docs/results.md and its digest into README.md, each between its
    own markers, from the same runs; a second call rewrites both in place; without the flag neither moves."""
    runs, repo = tmp_path / "runs", tmp_path / "repo"
    for seed in (0, 1):
        for name, gain in (("SFT", 1), ("RFT (16 samples)", 3), ("EM-FT", 2), ("UPFT (N=1)", 0)):
            tuned = [1 if i < gain else c for i, c in enumerate(BASE)] if gain else [0] + BASE[1:]
            _run(runs, name, seed, tuned, 100, False, sampled=[[True, False]] * 10)
    (repo / "docs").mkdir(parents=True)
    readme, results_doc = repo / "README.md", repo / "docs" / "results.md"
    readme.write_text("intro\n<!-- digest:start -->\nold digest\n<!-- digest:end -->\nrest\n")
    results_doc.write_text("intro\n<!-- results:start -->\nold table\n<!-- results:end -->\nrest\n")
    monkeypatch.setattr(rt, "ROOT", repo)    # every run is finished: nothing is trained
    argv = ["--out", str(runs), "--seeds", "0", "1", "--rows", "SFT", "RFT (16 samples)", "EM-FT", "UPFT (N=1)"]
    rt.main(argv)
    assert "old digest" in readme.read_text() and "old table" in results_doc.read_text()
    assert "updated" not in capsys.readouterr().out
    table = (runs / "table.md").read_text()
    assert "| SFT |" in table and "| RFT (16 samples) |" in table
    for _ in range(2):  # the second call finds the first one's output between the markers and replaces it
        rt.main(argv + ["--readme"])
        assert results_doc.read_text() == f"intro\n<!-- results:start -->\n{table}<!-- results:end -->\nrest\n"
        digest = rt.make_digest(rt.load(runs, [0, 1]), [0, 1])
        assert readme.read_text() == f"intro\n<!-- digest:start -->\n{digest}\n<!-- digest:end -->\nrest\n"
    out = capsys.readouterr().out
    assert f"updated {readme}" in out and f"updated {results_doc}" in out


def test_the_digest(tmp_path):
    """The README's digest: base, UPFT, SFT, RFT, EM-FT in that order, whatever the table's order; greedy and
    sampled accuracy with the Δ and interval of row_delta (the table's paired Δ); the paper's column."""
    for seed in (0, 1, 2):
        _run(tmp_path, "SFT", seed, [1, 1] + BASE[2:], 100, False, sampled=[[True, True]] + [[True, False]] * 9)
        _run(tmp_path, "UPFT (N=1)", seed, [0] + BASE[1:], 100, False, sampled=[[True, False]] * 10)
        _run(tmp_path, "majority vote (16 samples)", seed, BASE, 100, False, sampled=[[True, False]] * 10)
    _run(tmp_path, "EM-FT", 0, BASE, 100, False, sampled=[[True, False]] * 10)
    results = rt.load(tmp_path, [0, 1, 2], partial=True)
    digest = rt.make_digest(results, [0, 1, 2])
    rows = [line for line in digest.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    assert [r.split("|")[1].strip() for r in rows] == ["base", "UPFT (N=1)", "SFT", "EM-FT (seed 0)"]
    cells = [c.strip() for c in rows[2].strip("|").split("|")]
    d, lo, hi = rt.row_delta(results["SFT"], sampled=False)
    assert (d, lo, hi) == rt.paired_delta(results["SFT"], sampled=False) and d == pytest.approx(0.1)
    assert cells == ["SFT", "60.0", f"+10.0 [{rt.pct(lo, True)}, {rt.pct(hi, True)}]", "55.0", cells[4],
                     rt.PAPER["SFT"]] and cells[4].startswith("+5.0 [")
    assert rows[0].split("|")[1:-1] == [" base ", " 50.0 ", " – ", " 50.0 ", " – ", f" {rt.PAPER['base']} "]
    assert "not in the paper" in rows[3] and "3 seeds (0, 1, 2)" in digest and "NeurIPS Tables 1 and 2" in digest
    assert len(rows) <= 6 and "majority vote" not in digest
    assert digest.endswith(" UPFT (N=1), Δ greedy of each seed, lowest first: -10.0, -10.0, -10.0.")


def test_flags_are_range_checked(capsys):
    for argv in (["--jobs", "0"], ["--prefix-len", "-1"]):
        with pytest.raises(SystemExit) as e:
            rt.main(argv)
        assert e.value.code == 2 and "must be >= 1" in capsys.readouterr().err


def test_table_only_reports_cut_seeds_by_name(tmp_path, capsys):
    """--table-only runs nothing; a row of which only some seeds finished (a design's cut) is in the table
    with its seeds named, the others as before; without --table-only such a row is left out."""
    for seed in (0, 1, 2):
        _run(tmp_path, "SFT", seed, BASE, 100, False)
    _run(tmp_path, "RFT (16 samples)", 0, BASE, 400, False)
    _run(tmp_path, "RFT (16 samples)", 2, [1] * 10, 400, False)
    assert list(rt.load(tmp_path, [0, 1, 2])) == ["SFT"]
    both = rt.load(tmp_path, [0, 1, 2], partial=True)
    assert [r["_seed"] for r in both["RFT (16 samples)"]] == [0, 2]
    rt.main(["--out", str(tmp_path), "--table-only"])
    out = capsys.readouterr().out
    assert "$ " not in out  # no train.py command was run
    rft = next(line for line in out.splitlines() if line.startswith("| RFT (16 samples) (seeds 0, 2) |"))
    assert rft.split("|")[2].strip() == "75.0"  # (50 + 100) / 2
    assert any(line.startswith("| SFT |") for line in out.splitlines())


def test_the_decision_rule():
    """docs/experiments.md: helps if the interval lies above +1 point, hurts if below -1, no effect if
    within +-1.5, else inconclusive (checked in that order)."""
    assert rt.verdict(0.011, 0.03) == "helps" and rt.verdict(0.011, 0.014) == "helps"
    assert rt.verdict(-0.05, -0.011) == "hurts"
    assert rt.verdict(-0.015, 0.015) == "no effect" and rt.verdict(-0.01, 0.012) == "no effect"
    assert rt.verdict(-0.016, 0.01) == "inconclusive" and rt.verdict(0.009, 0.03) == "inconclusive"
