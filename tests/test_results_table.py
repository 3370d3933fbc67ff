"""scripts/results_table.py's table: made from committed run summaries (checked to be paired per
question), the seed-aware and the pre-registered intervals side by side, resumed runs left out of the time
column, docs/results.md and the README's digest rewritten only with --readme."""
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import results_table as rt  # noqa: E402

BASE = [1, 0, 1, 0, 1, 0, 1, 0, 1, 0]  # greedy correctness of the base model on 10 held-out questions


def _records(path, correct, sampled=None):
    path.write_text("".join(json.dumps({"index": i, "question": f"q{i}", "correct": bool(c), "response": "x", **(
        {"sample_correct": s, "responses": ["x"] * len(s)} if sampled else {})}) + "\n" for i, (c, s) in
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
    (d / "metrics.jsonl").write_text('{"step": 0, "eval_accuracy": 0.5}\n{"step": 1, "loss": 1.0}\n')
    rt.write_summary(d, rt.summary_path(out, name, seed))  # the summaries sit beside the run folders here


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
    assert cells[1] == "50.0" and cells[2].startswith("+0.0 [") and cells[3].startswith("+0.0 [")
    assert cells[4] == "55.0" and cells[5].startswith("+5.0 [") and cells[6].startswith("+5.0 [")
    assert "| base | 50.0 | – | – | 50.0 | – | – | 100.0 |" in table


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


def test_each_seed_on_its_own(tmp_path):
    """The table lists every seed's paired change and the evaluation during training (end; lowest-highest)."""
    tuned = {0: [1, 1, 1, 0, 1, 0, 1, 0, 1, 0], 1: [1, 1, 1, 1, 1, 0, 1, 0, 1, 0], 2: [0, 0, 1, 0, 1, 0, 1, 0, 1, 0]}
    for seed in range(3):
        _run(tmp_path, "SFT", seed, tuned[seed], 100, False)
    table = rt.make_table(rt.load(tmp_path, [0, 1, 2]), [0, 1, 2], 8)
    assert "| SFT | 0: +10.0, 1: +20.0, 2: -10.0 | – | 50.0 (50.0-50.0) |" in table.splitlines()


def test_the_lr_check_has_its_own_markers(tmp_path, monkeypatch):
    """--lr-check --readme writes the LR table between the lr markers, leaving the main table alone."""
    runs, repo = tmp_path / "runs", tmp_path / "repo"
    for name in rt.LR_ROWS:
        _run(runs, name, 0, [1] + BASE[1:], 100, False)
    (repo / "docs").mkdir(parents=True)
    doc = repo / "docs" / "results.md"
    doc.write_text("<!-- results:start -->\nmain\n<!-- results:end -->\n<!-- lr:start -->\nold\n<!-- lr:end -->\n")
    monkeypatch.setattr(rt, "ROOT", repo)
    rt.main(["--out", str(runs), "--results", str(runs), "--lr-check", "--table-only", "--readme"])
    text = doc.read_text()
    assert "main" in text and "old" not in text and "| UPFT (N=1) (LR 3e-5) |" in text


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
    argv = ["--out", str(runs), "--results", str(runs), "--seeds", "0", "1", "--rows", "SFT", "RFT (16 samples)",
            "EM-FT", "UPFT (N=1)"]
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


def test_the_digest(tmp_path, monkeypatch):
    """The README's digest: base, UPFT, SFT, RFT, EM-FT in that order, whatever the table's order; greedy and
    sampled accuracy with the Δ and interval of row_delta (the table's paired Δ, seed-aware); the paper's column."""
    monkeypatch.setattr(rt, "ROOT", tmp_path)  # no decision-world summaries: no positive-control row
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
    iv = rt.seed_interval(results["SFT"], sampled=False)  # the seed-aware interval the verdicts use
    assert (d, lo, hi) == (iv.delta, iv.low, iv.high) and d == pytest.approx(0.1)
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
    rt.main(["--out", str(tmp_path), "--results", str(tmp_path), "--table-only"])
    out = capsys.readouterr().out
    assert "$ " not in out  # no train.py command was run
    rft = next(line for line in out.splitlines() if line.startswith("| RFT (16 samples) (seeds 0, 2) |"))
    assert rft.split("|")[2].strip() == "75.0"  # (50 + 100) / 2
    assert any(line.startswith("| SFT |") for line in out.splitlines())


def test_records_must_be_paired(tmp_path):
    """A summary refuses base and tuned records of other questions or another order; the table refuses seeds
    whose questions or base answers differ."""
    _run(tmp_path, "SFT", 0, BASE, 100, False)
    d = rt.run_dir(tmp_path, "SFT", 0)
    lines = (d / "eval_tuned.jsonl").read_text().splitlines()
    (d / "eval_tuned.jsonl").write_text("\n".join(lines[1:] + lines[:1]) + "\n")  # same questions, other order
    with pytest.raises(ValueError, match="same questions in the same order"):
        rt.summarise(d)
    _run(tmp_path, "SFT", 1, BASE, 100, False)
    other = tmp_path / "other"
    _run(other, "SFT", 2, BASE, 100, False)
    s = json.loads(rt.summary_path(other, "SFT", 2).read_text())
    s["greedy"]["base"] = "0" * 10  # another base evaluation
    rt.summary_path(tmp_path, "SFT", 2).write_text(json.dumps(s))
    runs = rt.load(tmp_path, [1, 2])["SFT"]
    with pytest.raises(ValueError, match="not paired"):
        rt.differences(runs, sampled=False)


def test_summary_keeps_what_the_table_needs(tmp_path):
    sampled = [[True, True]] + [[True, False]] * 9
    _run(tmp_path, "SFT", 0, [1] * 10, 100, False, sampled=sampled)
    d = rt.run_dir(tmp_path, "SFT", 0)
    recs = [json.loads(x) for x in (d / "eval_tuned_sampled.jsonl").read_text().splitlines()]
    recs[0]["responses"] = ["Slowly:\nA.\nB.", "Fast:\nA, B."]  # a decision world's two openers
    recs[1]["responses"] = ["Slowly:\nA.", "  Fast: and more\nB."]  # not the marker line: neither
    (d / "eval_tuned_sampled.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    s = rt.summarise(d)
    assert {k: v for k, v in s["greedy"].items() if k != "forms"} == {"base": "1010101010", "tuned": "1" * 10}
    assert s["greedy"]["forms"] == {"base": "NnNnNnNnNn", "tuned": "N" * 10}
    assert {k: v for k, v in s["sampled"].items() if k != "forms"} == {"base": "1" * 10, "tuned": "2" + "1" * 9, "k": 2}
    assert s["sampled"]["forms"]["tuned"][:2] == ["CH", "Cn"] and s["sampled"]["forms"]["base"][0] == "Nn"
    assert s["questions"]["index"] == list(range(10)) and s["curve"] == [[0, 0.5]]
    d = rt.differences(rt.load(tmp_path, [0])["SFT"], sampled=True)
    assert d.tolist() == [[0.5] + [0.0] * 9]


def test_one_seed_rows_have_no_across_seed_verdict(tmp_path):
    for seed in (0, 1, 2):
        _run(tmp_path, "SFT", seed, [1, 1, 1, 1, 1, 1, 1, 0, 1, 0], 100, False)
    _run(tmp_path, "EM-FT", 0, [1, 1, 1, 1, 1, 1, 1, 0, 1, 0], 100, False)
    table = rt.make_table(rt.load(tmp_path, [0, 1, 2], partial=True), [0, 1, 2], 8)
    em = [line for line in table.splitlines() if line.startswith("| EM-FT (seed 0) |")]
    assert "(questions only)" in em[0] and em[1].split("|")[3].strip() == "not assessable"
    sft = [line for line in table.splitlines() if line.startswith("| SFT |")]
    cells = [c.strip() for c in sft[0].strip("|").split("|")]
    d = np.array([0, 1, 0, 1, 0, 1, 0, 0, 0, 0])  # the same change in every seed: only the question component
    half = 100 * stats.t.ppf(0.975, 9) * d.std(ddof=1) / np.sqrt(10)
    assert cells[3] == f"+30.0 [{30 - half:+.1f}, {30 + half:+.1f}]"  # the seed-aware one, after the bootstrap
    assert sft[1].split("|")[3].strip() == "inconclusive"
    assert "EM-FT (seed 0), greedy: " in table  # the verdicts the two analyses give differently, listed


def test_summaries_are_committed_as_they_land(tmp_path):
    """keep(..., commit=True) writes the summary and commits it at once, nothing else of the tree."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git = lambda *a: subprocess.run(["git", *a], cwd=repo, check=True, capture_output=True, text=True).stdout  # noqa: E731
    git("init", "-q")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "start")
    (repo / "unrelated.txt").write_text("x")
    git("add", "unrelated.txt")
    _run(tmp_path / "runs", "SFT", 0, BASE, 100, False)
    path = repo / "results" / "toy" / "sft-s0.json"
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    import os
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        rt.keep(rt.run_dir(tmp_path / "runs", "SFT", 0), path, commit=True)
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert git("show", "--name-only", "--format=%s", "HEAD").split() == ["results:", "toy/sft-s0.json",
                                                                        "results/toy/sft-s0.json"]
    assert "A  unrelated.txt" in git("status", "--short")  # staged before, still staged, not committed
    assert json.loads(path.read_text())["greedy"]["base"] == "1010101010"


def test_the_decision_rule():
    """docs/experiments.md: helps if the interval lies above +1 point, hurts if below -1, no effect if
    within +-1.5, else inconclusive (checked in that order)."""
    v = lambda lo, hi: rt.paired.verdict(rt.paired.Interval((lo + hi) / 2, lo, hi, 3))  # noqa: E731
    assert v(0.011, 0.03) == "helps" and v(0.011, 0.014) == "helps"
    assert v(-0.05, -0.011) == "hurts"
    assert v(-0.015, 0.015) == "no effect" and v(-0.01, 0.012) == "no effect"
    assert v(-0.016, 0.01) == "inconclusive" and v(0.009, 0.03) == "inconclusive"



def test_summaries_record_the_code_they_came_from(tmp_path):
    """Every summary names the checkout's commit and whether its tree was clean."""
    repo = tmp_path / "code"
    repo.mkdir()
    git = lambda *a: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a], cwd=repo,  # noqa: E731
                                    check=True, capture_output=True, text=True).stdout.strip()
    git("init", "-q")
    (repo / "train.py").write_text("print(1)\n")
    git("add", "train.py")
    git("commit", "-q", "-m", "start")
    _run(tmp_path / "runs", "SFT", 0, BASE, 100, False)
    run, path = rt.run_dir(tmp_path / "runs", "SFT", 0), tmp_path / "s.json"
    rt.write_summary(run, path, root=repo)
    assert json.loads(path.read_text())["code"] == {"commit": git("rev-parse", "HEAD"), "clean": True}
    (repo / "train.py").write_text("print(2)\n")  # a changed tracked file
    rt.write_summary(run, path, root=repo)
    assert json.loads(path.read_text())["code"] == {"commit": git("rev-parse", "HEAD"), "clean": False}
    git("checkout", "-q", "train.py")
    (repo / "extra.py").write_text("")  # an untracked file the run could have imported
    rt.write_summary(run, path, root=repo)
    assert json.loads(path.read_text())["code"]["clean"] is False
    rt.write_summary(run, path, root=tmp_path / "runs")  # not a checkout
    assert json.loads(path.read_text())["code"] == {"commit": None, "clean": None}
    assert rt.summarise(run)["results"] == json.loads(path.read_text())["results"]


def _between(text, start, end):
    return text[text.index(start) + len(start):text.index(end)].strip("\n")


def test_the_committed_tables_hold_every_committed_summary():
    """docs/results.md's toy-v5 tables, the README's digest and the prose counts are what the committed
    summaries in results/toy-v5/ give today: every summary is a run of the design, every one is rendered, and
    the sentences that say how many of the 46 runs the table holds say the number of files."""
    results_dir = ROOT / "results" / "toy-v5"
    files = sorted(p.name for p in results_dir.glob("*.json"))
    design = {rt.summary_path(results_dir, name, s).name for name in rt.ROWS for s in (0, 1, 2)}
    design |= {rt.summary_path(results_dir, name, 0).name for name in rt.LR_ROWS}
    assert len(design) == 46 and set(files) <= design, sorted(set(files) - design)
    table = rt.load(results_dir, [0, 1, 2], list(rt.ROWS), partial=True)
    lr = rt.load(results_dir, [0], list(rt.LR_ROWS), partial=True)
    assert sum(map(len, table.values())) + sum(map(len, lr.values())) == len(files)
    doc, readme = (ROOT / rt.RESULTS_DOC).read_text(), (ROOT / "README.md").read_text()
    assert _between(doc, "<!-- results:start -->", "<!-- results:end -->") == rt.make_table(
        table, [0, 1, 2], 8, design=len(rt.ROWS) * 3)
    assert _between(doc, *rt.LR_MARKERS) == rt.make_table(lr, [0], 8, design=len(rt.LR_ROWS))
    assert _between(readme, *rt.DIGEST_MARKERS) == rt.make_digest(table, [0, 1, 2])
    for text in (doc, readme):
        counts = re.findall(r"(\d+) of the design's 46 runs", text)
        assert counts and all(int(c) == len(files) for c in counts), counts
