"""scripts/results_table.py's table: resumed runs stay in the accuracy columns but leave the time ones; README.md
is rewritten only with --readme."""
import json
import sys
from argparse import Namespace

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import results_table as rt  # noqa: E402


def _run(out, name, seed, acc, wall, resumed):
    d = rt.run_dir(out, name, seed)
    d.mkdir(parents=True)
    acct = {"tokens_sampled": 100, "tokens_supervised": 50, "sampling_seconds": wall / 2,
            "training_seconds": wall / 4, "questions": 10,
            "questions_dropped_no_correct_sample": 1}
    (d / "results.json").write_text(json.dumps({
        "base": {"accuracy": 0.5, "questions": 20}, "tuned": {"accuracy": acc}, "accounting": acct,
        "wall_seconds": wall, "resumed": resumed}))


def test_resumed_runs_leave_the_time_columns(tmp_path):
    for seed, (wall, resumed) in enumerate([(100, False), (300, False), (7, True)]):
        _run(tmp_path, "SFT", seed, 0.6, wall, resumed)
        _run(tmp_path, "RFT (16 samples)", seed, 0.7, 400, False)
    table = rt.make_table(rt.load(tmp_path, [0, 1, 2]), Namespace(seeds=[0, 1, 2], prefix_len=8))
    sft = next(line for line in table.splitlines() if line.startswith("| SFT |"))
    cells = [c.strip() for c in sft.strip("|").split("|")]
    assert cells[1] == "60.0 ± 0.0" and cells[2] == "10.0 ± 0.0"   # all three seeds' accuracies
    assert cells[7] == "150 (2)" and cells[8] == "200 (2)"        # (50+150)/2 and (100+300)/2: two runs
    rft = next(line for line in table.splitlines() if line.startswith("| RFT"))
    assert rft.rstrip(" |").endswith("| 400")                      # nothing resumed: no count shown
    assert "1 run was interrupted and resumed" in table and "at least" in table


def test_readme_is_rewritten_only_with_the_flag(tmp_path, monkeypatch, capsys):
    runs, repo = tmp_path / "runs", tmp_path / "repo"
    for seed in (0, 1):
        _run(runs, "SFT", seed, 0.6, 100, False)
        _run(runs, "RFT (16 samples)", seed, 0.7, 400, False)
    repo.mkdir()
    readme = repo / "README.md"
    readme.write_text("intro\n<!-- results:start -->\nold table\n<!-- results:end -->\nrest\n")
    monkeypatch.setattr(rt, "ROOT", repo)    # every run is finished: nothing is trained
    argv = ["--out", str(runs), "--seeds", "0", "1", "--rows", "SFT", "RFT (16 samples)"]
    rt.main(argv)
    assert "old table" in readme.read_text() and "updated" not in capsys.readouterr().out
    table = (runs / "table.md").read_text()
    assert "| SFT |" in table and "| RFT (16 samples) |" in table
    rt.main(argv + ["--readme"])
    assert readme.read_text() == f"intro\n<!-- results:start -->\n{table}<!-- results:end -->\nrest\n"
    assert f"updated {readme}" in capsys.readouterr().out
