"""Score a model on math word problems: greedy accuracy with its interval, or n samples per question.

    python eval.py                                              # the toy world's model on its test split
    python eval.py --model DIR --data gsm8k_test.jsonl [--limit 100] [--n 4 --temperature 0.6]

Data: JSONL read by data.load_rows (GSM8K, MATH500); the model's chat template around the bare question, zero-shot,
greedy by default, as in the paper (docs/method.md §6); grading: grader.py. launch/ adds (`extension`) the paper's
Fig. 2 prefix analyses (--analysis) and a real checkpoint's memory check before it loads.
"""
import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts OpenMP: docs/performance.md, "A busy machine"

import torch

from data import TOY_WORLD, Tokenizer, UpftError, UpftFault, load_rows, require, write_json, write_jsonl
from grader import extract_answer, is_equiv
from model import MIN_TEMPERATURE, Transformer, default_device, generate_answers
from upft import majority_vote


def wilson(k, n, z=1.96):
    """Wilson score interval for k successes in n trials (sane at 0% and 100%, unlike p +- z*se)."""
    if n == 0:
        return [0.0, 1.0]
    p, d = k / n, 1 + z * z / n
    centre, half = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return [max(0.0, centre - half), min(1.0, centre + half)]


def evaluate(model, tok, rows, max_new_tokens, batch_size=64, n=1, temperature=0.0, top_p=1.0, top_k=0, seed=0,
             progress=True, sampled=None):
    """Generate n responses per row ({question, gold[, dataset]}), grade them -> (records, summary): "accuracy" is
    the share correct (n == 1) or the mean pass@1 (n > 1 or sampled: also pass@n, maj@n). Per-question random
    streams (model.generate): two models evaluated with one seed use the same uniform numbers (paired)."""
    sampled = n > 1 if sampled is None else sampled
    groups = generate_answers(model, tok, [row["question"] for row in rows], max_new_tokens, n=n,
                              batch_size=batch_size, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                              progress=progress)
    records = []
    for i, (row, ids) in enumerate(zip(rows, groups)):
        texts = [tok.decode(x, skip_special_tokens=True) for x in ids]
        answers = [extract_answer(t, row.get("dataset")) for t in texts]
        correct = [is_equiv(a, row["gold"]) for a in answers]
        rec = {"index": i, "question": row["question"], "gold": row["gold"]}
        if not sampled:
            rec.update(response=texts[0], answer=answers[0], correct=correct[0], tokens=len(ids[0]))
        else:
            vote = majority_vote(answers)
            rec.update(responses=texts, answers=answers, sample_correct=correct, tokens=[len(x) for x in ids],
                       majority_answer=vote, correct=is_equiv(vote, row["gold"]))
        records.append(rec)
    return records, summarize(records, n, max_new_tokens, sampled)


def accuracy_line(greedy, sampled=None):
    """One line of evaluate()'s summaries: greedy accuracy and its interval (and the sampled one's)."""
    if not greedy:
        return "-"
    line = f"greedy {greedy['accuracy']:.1%} [{greedy['accuracy_ci95'][0]:.1%}, {greedy['accuracy_ci95'][1]:.1%}]"
    if not sampled:
        return line
    return (line + f"   sampled {sampled['accuracy']:.1%} [{sampled['pass@1_ci95'][0]:.1%}, "
            f"{sampled['pass@1_ci95'][1]:.1%}], pass@{sampled['samples_per_question']} {sampled['pass@n']:.1%}")


def summarize(records, n, max_new_tokens, sampled=None):
    """Metrics of evaluate()'s records; 95% intervals: Wilson (shares), normal over per-question means (pass@1)."""
    sampled = n > 1 if sampled is None else sampled
    N, k = max(len(records), 1), sum(r["correct"] for r in records)
    answers = [a for r in records for a in (r["answers"] if sampled else [r["answer"]])]
    lengths = [t for r in records for t in (r["tokens"] if sampled else [r["tokens"]])]
    texts = [t for r in records for t in (r["responses"] if sampled else [r["response"]])]
    s = {"questions": len(records), "samples_per_question": n,
         "no_answer_rate": sum(a is None for a in answers) / max(len(answers), 1),
         # answers that end after their first line: what a prefix task can teach (stop after the opening)
         "one_line_rate": sum(len(t.strip().splitlines()) <= 1 for t in texts) / max(len(texts), 1),
         "truncated_rate": sum(t >= max_new_tokens for t in lengths) / max(len(lengths), 1),
         "mean_tokens": sum(lengths) / max(len(lengths), 1)}
    if not sampled:
        return {"accuracy": k / N, "accuracy_ci95": wilson(k, len(records)), "correct": k,
                "ci_method": "Wilson score", **s}
    per_q = [sum(r["sample_correct"]) / n for r in records]
    mean = sum(per_q) / N
    half = 1.96 * math.sqrt(sum((x - mean) ** 2 for x in per_q) / max(N - 1, 1) / N)
    any_ok = sum(any(r["sample_correct"]) for r in records)
    one = n == 1  # one sample per question: pass@1 is a share of questions, as pass@n and maj@n (all three equal)
    return {"accuracy": mean, "pass@1": mean, "pass@1_ci95": wilson(any_ok, len(records)) if one else
            [max(0.0, mean - half), min(1.0, mean + half)],
            "pass@n": any_ok / N, "pass@n_ci95": wilson(any_ok, len(records)),
            "maj@n": k / N, "maj@n_ci95": wilson(k, len(records)), "majority_correct": k,
            "ci_method": ("pass@1, " if one else "pass@1: normal approximation over per-question means; ") +
            "pass@n, maj@n: Wilson score", **s}


# --- command line ------------------------------------------------------------------------------------

def default_out(model, data, analysis=None) -> Path:
    """runs/eval/<model>-<data stem>.preds.jsonl (or .<analysis>.json); a run's model/ folder: the run's name."""
    path = Path(model).resolve() if Path(model).exists() else Path(model)
    name = path.parent.name if path.name == "model" and path.parent.name else path.name
    kind = f"{analysis}.json" if analysis else "preds.jsonl"
    return Path("runs") / "eval" / f"{name}-{Path(data).stem}.{kind}"


def check_out(out: Path):
    """Refuse, before any work, an output file that cannot be written: its nearest existing folder must take one."""
    require(not out.is_dir(), f"--out {out}: is a folder, not a file name")
    folder = out.parent
    while not folder.exists():
        folder = folder.parent
    require(folder.is_dir(), f"--out {out}: cannot create a folder under {folder}, which is a file")
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        raise UpftError(f"--out {out}: cannot write into {folder} ({e.strerror})") from None


def write_outputs(files):
    """Write [(path, writer, content)] all or nothing: when one fails (a full disk), the ones written go."""
    done = []
    try:
        for path, writer, content in files:
            writer(path, content)
            done.append(path)
    except OSError as e:
        for path in done:
            path.unlink(missing_ok=True)
        raise UpftFault(f"{e.filename or path}: {e.strerror or e}; nothing was written") from None


def build_parser():
    p = argparse.ArgumentParser(description="Evaluate a checkpoint on a JSONL math dataset, or run the "
                                            "paper's prefix analyses (launch/).")
    p.add_argument("--model", help="checkpoint directory or Hugging Face id (default: the toy world's model)")
    p.add_argument("--data", help="JSONL with question/problem and answer/expected_answer (default: the toy "
                                  "world's test split)")
    p.add_argument("--out", help="predictions JSONL, its summary beside it (default: runs/eval/<model>-<data "
                                 "stem>.preds.jsonl, <model> the checkpoint folder's or the run's name)")
    p.add_argument("--n", type=int, default=1, help="samples per question (> 1: pass@1 and majority vote)")
    p.add_argument("--temperature", type=float, help="default 0 (greedy) for evaluation, 0.6 for analyses")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--limit", type=int, help="only the first K questions")
    p.add_argument("--batch-size", type=int, default=64, help="sequences decoded together")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--analysis", choices=["prefix-consistency", "error-position"], help="the paper's Fig. 2a / 2b")
    p.add_argument("--num-samples", type=int, default=16, help="analyses: samples per question (M)")
    p.add_argument("--rollouts", type=int, default=8, help="error-position: rollouts per prefix (K)")
    p.add_argument("--device", default=default_device(), help="cpu or cuda (default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    return p


def extension(args):
    """The one door to launch/ (imported here only), for what it adds: the Fig. 2 analyses (--analysis) and a
    real checkpoint's memory check. None: not asked for, or not there (a copy of the core alone)."""
    if not (args.analysis or args.model):
        return None
    try:
        import launch.analyses
    except ModuleNotFoundError as e:
        if e.name != "launch":
            raise
        if args.analysis:
            raise UpftError("--analysis: the prefix analyses live in launch/, which this copy does not have") from None
        return None
    return launch.analyses


def run(args):
    for name in ("n", "max_new_tokens", "batch_size", "num_samples", "rollouts", "limit"):
        v = getattr(args, name)
        require(v is None or v >= 1, f"--{name.replace('_', '-')} must be at least 1")
    if args.temperature is None:
        args.temperature = 0.6 if args.analysis else 0.0
    require((args.temperature == 0 or args.temperature >= MIN_TEMPERATURE) and 0 < args.top_p <= 1, f"--temperature "
            f"must be 0 (greedy) or at least {MIN_TEMPERATURE:g}, and --top-p in (0, 1]; got {args.temperature} and "
            f"{args.top_p}")
    require(args.model or not args.data, "--data needs --model (the toy world's model is evaluated on its test split)")
    wrapped = extension(args)  # (a real --model, --analysis: before the toy world's defaults)
    args.model, args.data = args.model or str(TOY_WORLD / "model"), args.data or str(TOY_WORLD / "test.jsonl")
    out = Path(args.out) if args.out else default_out(args.model, args.data, args.analysis)
    check_out(out)
    args.out = str(out)     # recorded with the results
    rows = load_rows(args.data, args.limit)     # bad input fails here, before the slow model load
    if wrapped:
        wrapped.check_memory(args, rows)        # a decoding that cannot fit, before any allocation
    if args.n > 1 and args.temperature == 0:
        print("warning: --n > 1 with --temperature 0 gives n identical greedy samples", file=sys.stderr)
    tok = Tokenizer.from_pretrained(args.model)
    model = Transformer.from_pretrained(args.model, device=args.device, dtype=getattr(torch, args.dtype))
    common = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                  batch_size=args.batch_size, seed=args.seed)
    if args.analysis:  # the paper's Fig. 2 analyses (launch/analyses.py)
        return wrapped.analyse(args, model, tok, rows, out, common)
    records, summary = evaluate(model, tok, rows, n=args.n, **common)
    summary_path = out.with_suffix(".summary.json")
    write_outputs([(out, write_jsonl, records), (summary_path, write_json, {**summary, "args": vars(args)})])
    pct = "{:.1%}".format
    what, (lo, hi) = ((f"accuracy {pct(summary['accuracy'])}", summary["accuracy_ci95"]) if args.n == 1
                      else (f"pass@1 {pct(summary['pass@1'])}", summary["pass@1_ci95"]))
    print(f"{what} on {len(rows)} questions, 95% CI [{pct(lo)}, {pct(hi)}] ({summary['ci_method']})")
    if args.n > 1:
        print(f"maj@{args.n} {pct(summary['maj@n'])}, 95% CI [{pct(summary['maj@n_ci95'][0])}, "
              f"{pct(summary['maj@n_ci95'][1])}]")
    print(f"wrote {out} and {summary_path}")


def main(argv=None):
    try:
        run(build_parser().parse_args(argv))
    except UpftError as e:  # exit 2: bad input; 1: the machine (UpftFault)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
