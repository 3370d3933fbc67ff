"""scripts/results_table.py's table: resumed runs stay in the accuracy columns but leave the time ones."""
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
