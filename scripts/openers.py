"""Which opener did the base and the tuned model sample, and how right was each? For a run on a decision
world (docs/experiments.md §2; the course lab in docs/teaching.md).

    python train.py --world assets/toy-decision --prefix-len 8 --eval-samples 4 --out runs/lab-decision
    python scripts/openers.py runs/lab-decision
    python scripts/openers.py runs/lab-decision --json    # the numbers of the course lab's answers/lab.json

Reads the run's sampled evaluations (eval_base_sampled.jsonl, eval_tuned_sampled.jsonl) and prints, for
the base and the tuned model: the careful-opener share of the sampled answers, the sampled accuracy, and
the accuracy of the answers of each opener (their count in parentheses); then the paired change of the
share with its 95% interval over the questions (one run: the question-level interval, docs/method.md §6.1).
"""
import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
import paired  # noqa: E402
from decision_table import careful_share, conditional  # noqa: E402
from results_table import _forms, _records  # noqa: E402


def numbers(forms):
    """{"careful_share", "sampled_accuracy"} of one model's sampled answers (fractions; forms: _forms)."""
    return {"careful_share": float(careful_share(forms).mean()),
            "sampled_accuracy": sum(ch.isupper() for x in forms for ch in x) / sum(len(x) for x in forms)}


def summary(run):
    """{"base", "tuned"}: the numbers of the run's sampled answers."""
    return {tag: numbers(_forms(_records(run, tag, True), True)) for tag in ("base", "tuned")}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a finished train.py run folder with --eval-samples >= 2")
    ap.add_argument("--json", action="store_true", help="print the two shares and accuracies as JSON (the lab's "
                    "answers/lab.json takes them)")
    args = ap.parse_args(argv)
    run = Path(args.run)
    if not (run / "eval_tuned_sampled.jsonl").is_file() or not (run / "eval_base_sampled.jsonl").is_file():
        sys.exit(f"error: {run}: no sampled evaluations here (run train.py with --eval-samples 4 to the end)")
    forms = {tag: _forms(_records(run, tag, True), True) for tag in ("base", "tuned")}
    if args.json:
        print(json.dumps({tag: numbers(f) for tag, f in forms.items()}, indent=1))
        return
    for tag, f in forms.items():
        c, got = conditional(f), numbers(f)
        print(f"{tag:5s}  careful share {100 * got['careful_share']:5.1f}%   "
              f"sampled accuracy {100 * got['sampled_accuracy']:5.1f}%   "
              f"careful answers right {100 * c['careful'][0]:5.1f}% ({c['careful'][1]})   "
              f"hasty answers right {100 * c['hasty'][0]:5.1f}% ({c['hasty'][1]})")
    iv = paired.seed_question_interval((careful_share(forms["tuned"]) - careful_share(forms["base"]))[None, :])
    print(f"careful share, tuned - base: {iv.cell()} points (95%, over these {len(forms['base'])} questions; "
          f"one run says nothing about other seeds)")


if __name__ == "__main__":
    main()
