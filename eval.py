"""Score a model on math word problems, and run the paper's two prefix analyses (Fig. 2 of the paper).

    python eval.py --model DIR --data gsm8k_test.jsonl [--limit 100] [--n 4 --temperature 0.6]
    python eval.py --model DIR --data q.jsonl --analysis prefix-consistency --num-samples 16
    python eval.py --model DIR --data q.jsonl --analysis error-position --num-samples 8 --rollouts 8

Datasets are JSONL with `question` (or `problem`) and `answer` (GSM8K text ending in `#### n`, or a
bare answer) or `expected_answer` (MATH500); `data.load_rows` reads them. The prompt is the model's own
chat template around the bare question: zero-shot, greedy by default, as in the paper (docs/method.md
§6). Grading (answer extraction and equivalence) is `grader.py`.

Output (--out): by default runs/eval/<model>-<data stem>.preds.jsonl, with the summary beside it
(.preds.summary.json), or runs/eval/<model>-<data stem>.<analysis>.json (and .png) for an analysis;
<model> is the checkpoint folder's name (the run's name for a run's model/ folder). The folder is
created; a location that cannot be written is refused before the model is loaded, and so is a decoding
whose KV cache cannot fit (train.py's memory plan, plan.py: the sequences decoded at once, each of 512
prompt slots + --max-new-tokens; one line naming the largest --batch-size, or --max-new-tokens, that fits).
"""
import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts OpenMP: docs/performance.md, "A busy machine"

import torch

from cli import MIN_TEMPERATURE, plan_config
from data import Tokenizer, UpftError, UpftFault, load_rows, write_json, write_jsonl
from fsdp import all_gather_json
from grader import extract_answer, is_equiv
from model import Transformer, default_device, generate_answers
from plan import decoding_fix, usable_bytes
from upft import majority_vote


# --- evaluation --------------------------------------------------------------------------------------

def wilson(k, n, z=1.96):
    """Wilson score interval for k successes in n trials (sane at 0% and 100%, unlike p +- z*se)."""
    if n == 0:
        return [0.0, 1.0]
    p, d = k / n, 1 + z * z / n
    centre, half = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return [max(0.0, centre - half), min(1.0, centre + half)]


def evaluate(model, tok, rows, max_new_tokens, batch_size=64, n=1, temperature=0.0, top_p=1.0, top_k=0, seed=0,
             progress=True, share=None, sampled=None):
    """Generate n responses per row ({question, gold[, dataset]}), grade them -> (records, summary).

    summary["accuracy"] is the share of correct responses for n == 1 and the mean pass@1 for n > 1
    (then "pass@n" counts the questions with a correct sample and "maj@n" grades the majority answer).
    sampled=True gives the records and summary of n > 1 (pass@1, pass@n, maj@n) for n == 1 too: train.py's
    sampled evaluation with --eval-samples 1, where all three equal the accuracy (default: n > 1).
    Sampled answers draw from per-question random streams (model.generate), so two models evaluated with
    the same seed use the same uniform numbers on every question: their difference is paired.
    batch_size counts sequences: batch_size // n prompts. share=(rank, world) (torchrun, train.py): this
    rank decodes rows rank, rank + world, ... and every rank gets all the records back, in order, with
    the summary of them all."""
    rank, world = share or (0, 1)
    sampled = n > 1 if sampled is None else sampled
    mine = list(range(rank, len(rows), world))
    groups = generate_answers(model, tok, [rows[i]["question"] for i in mine], max_new_tokens, n=n,
                              batch_size=batch_size, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                              progress=progress)
    records = []
    for i, ids in zip(mine, groups):
        row = rows[i]
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
    if share:
        records = sorted((r for part in all_gather_json(records) for r in part), key=lambda r: r["index"])
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
    """Metrics of evaluate()'s records (sampled: as evaluate's). 95% intervals: Wilson for a share of
    questions; for pass@1 (sampled) a normal approximation over the per-question means."""
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
    # one sample per question: pass@1 is a share of questions, as pass@n and maj@n (then all three equal)
    one = n == 1
    return {"accuracy": mean, "pass@1": mean, "pass@1_ci95": wilson(any_ok, len(records)) if one else
            [max(0.0, mean - half), min(1.0, mean + half)],
            "pass@n": any_ok / N, "pass@n_ci95": wilson(any_ok, len(records)),
            "maj@n": k / N, "maj@n_ci95": wilson(k, len(records)), "majority_correct": k,
            "ci_method": ("pass@1, " if one else "pass@1: normal approximation over per-question means; ") +
            "pass@n, maj@n: Wilson score", **s}


# --- the paper's analyses (Fig. 2a and 2b; docs/method.md §1) ----------------------------------------

GRID = [2 ** k for k in range(10)]   # prefix lengths t = 1, 2, 4, ..., 512 tokens


def prefix_consistency(model, tok, rows, num_samples, max_new_tokens, temperature=0.6, top_p=1.0,
                       batch_size=64, seed=0):
    """Fig. 2a: for each t, M / (number of distinct t-token prefixes among the M samples of a question),
    averaged over questions. A sample shorter than t takes part with its whole, shorter, sequence."""
    M = num_samples
    groups = generate_answers(model, tok, [r["question"] for r in rows], max_new_tokens, n=M, batch_size=batch_size,
                              temperature=temperature, top_p=top_p, seed=seed)
    grid = [t for t in GRID if t <= max((len(s) for g in groups for s in g), default=0)]
    avg = [sum(M / len({tuple(s[:t]) for s in g}) for g in groups) / max(len(rows), 1) for t in grid]
    return {"analysis": "prefix-consistency", "questions": len(rows), "samples_per_question": M,
            "prefix_len": grid, "avg_samples_per_prefix": avg}


def error_position(model, tok, rows, num_samples, rollouts, max_new_tokens, temperature=0.6, top_p=1.0,
                   batch_size=64, seed=0):
    """Fig. 2b: take the first correct and the first incorrect of M samples per question (questions
    lacking either are skipped); for t = 0 and each t of GRID shorter than the trajectory, run K
    rollouts from its first t tokens and report the share that reach the gold answer. Rollouts get
    the remaining budget, max_new_tokens - t, so every response has the same length limit."""
    questions = [r["question"] for r in rows]
    groups = generate_answers(model, tok, questions, max_new_tokens, n=num_samples, batch_size=batch_size,
                              temperature=temperature, top_p=top_p, seed=seed)

    def right(i, ids):
        text = tok.decode(ids, skip_special_tokens=True)
        return is_equiv(extract_answer(text, rows[i].get("dataset")), rows[i]["gold"])

    picked = []   # (kind, question index, sample ids)
    for i, samples in enumerate(groups):
        ok = [right(i, s) for s in samples]
        if True in ok and False in ok:
            picked += [("correct", i, samples[ok.index(True)]), ("incorrect", i, samples[ok.index(False)])]
    rates = {(kind, t): [] for kind in ("correct", "incorrect") for t in [0] + GRID}
    for t in [0] + GRID:                      # one batched generate per prefix length
        jobs = [(kind, i, s) for kind, i, s in picked if t == 0 or t < len(s)]
        if not jobs or max_new_tokens - t < 1:
            continue
        conts = generate_answers(model, tok, [questions[i] for _, i, _ in jobs], max_new_tokens - t,
                                 prefixes=[s[:t] for _, _, s in jobs], n=rollouts, batch_size=batch_size,
                                 temperature=temperature, top_p=top_p, seed=seed + t + 1)
        for (kind, i, s), cs in zip(jobs, conts):
            rates[kind, t].append(sum(right(i, s[:t] + c) for c in cs) / rollouts)
    result = {"analysis": "error-position", "questions": len(rows), "questions_used": len(picked) // 2,
              "samples_per_question": num_samples, "rollouts": rollouts}
    for kind in ("correct", "incorrect"):
        ts = [t for t in [0] + GRID if rates[kind, t]]
        result[kind] = {"prefix_len": ts, "trajectories": [len(rates[kind, t]) for t in ts],
                        "success_rate": [sum(rates[kind, t]) / len(rates[kind, t]) for t in ts]}
    return result


def plot(result, path):
    """A PNG of an analysis when matplotlib is installed (it is optional); returns the path or None."""
    try:  # matplotlib is optional (not in requirements.txt): imported only when a plot is drawn
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.5))
    if result["analysis"] == "prefix-consistency":
        ax.plot(result["prefix_len"], result["avg_samples_per_prefix"], marker="o")
        ax.set_ylabel("samples sharing a prefix")
    else:
        for kind in ("correct", "incorrect"):
            ax.plot(result[kind]["prefix_len"], result[kind]["success_rate"], marker="o", label=kind)
        ax.set_ylabel("rollout success rate")
        ax.legend()
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("prefix length t (tokens)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --- command line ------------------------------------------------------------------------------------

def default_out(model, data, analysis=None) -> Path:
    """runs/eval/<model>-<data stem>.preds.jsonl, or .<analysis>.json; for a run's model/ folder, <model>
    is the run's name (runs/<run>/model -> <run>)."""
    path = Path(model).resolve() if Path(model).exists() else Path(model)
    name = path.parent.name if path.name == "model" and path.parent.name else path.name
    kind = f"{analysis}.json" if analysis else "preds.jsonl"
    return Path("runs") / "eval" / f"{name}-{Path(data).stem}.{kind}"


def check_out(out: Path):
    """Refuse an output file that cannot be written (a folder, under a file, a folder without write
    access), before any work: its nearest existing folder must take a new file."""
    if out.is_dir():
        raise UpftError(f"--out {out}: is a folder, not a file name")
    folder = out.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise UpftError(f"--out {out}: cannot create a folder under {folder}, which is a file")
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        raise UpftError(f"--out {out}: cannot write into {folder} ({e.strerror})") from None


def in_flight(args, questions):
    """(the most sequences decoded at once, the fewest a smaller --batch-size can decode): generate_answers
    decodes --batch-size // n questions (at least one, at most all) with their n samples each; error-position
    then continues up to 2 trajectories per question with --rollouts each."""
    phases = ([(args.num_samples, questions)] + ([(args.rollouts, 2 * questions)]
                                                  if args.analysis == "error-position" else [])
              if args.analysis else [(args.n, questions)])
    return max(min(max(1, args.batch_size // n), q) * n for n, q in phases), max(n for n, _ in phases)


def check_memory(args, rows):
    """train.py's memory plan (plan.py) for this decoding: the weights and the KV caches of the sequences in
    flight, each of the plan's prompt slots + --max-new-tokens. One line naming the smallest change that
    fits when it cannot (UpftError), before the model is loaded; nothing when the memory is unknown."""
    cuda = torch.device(args.device).type == "cuda"
    capacity = usable_bytes(cuda, args.device)
    if capacity is None:
        return
    batch, least = in_flight(args, len(rows))
    fix = decoding_fix(plan_config(args), capacity, batch, args.max_new_tokens, cuda,
                       master_bytes=4 if args.dtype == "float32" else 2, least=least)
    if fix:
        raise UpftError(fix)


def write_outputs(files):
    """Write [(path, writer, content)] all or nothing: each file atomically (data.write_json[l]); when one
    fails (a full disk), the ones already written are removed and the fault is one line (exit 1)."""
    done = []
    try:
        for path, writer, content in files:
            writer(path, content)
            done.append(path)
    except OSError as e:
        for path in done:
            path.unlink(missing_ok=True)
        raise UpftFault(f"{e.filename or path}: {e.strerror or e}; nothing was written") from None


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def build_parser():
    p = argparse.ArgumentParser(description="Evaluate a checkpoint on a JSONL math dataset, or run the "
                                            "paper's prefix analyses.")
    p.add_argument("--model", required=True, help="checkpoint directory or Hugging Face id")
    p.add_argument("--data", required=True, help="JSONL with question/problem and answer/expected_answer")
    p.add_argument("--out", help="predictions JSONL (summary JSON beside it) or analysis JSON (plot beside "
                                 "it); default runs/eval/<model>-<data stem>.preds.jsonl or "
                                 ".<analysis>.json, <model> the checkpoint folder's name (a run's name "
                                 "for runs/<run>/model)")
    p.add_argument("--n", type=int, default=1, help="samples per question (> 1: pass@1 and majority vote)")
    p.add_argument("--temperature", type=float, help="default 0 (greedy) for evaluation, 0.6 for analyses")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--limit", type=int, help="only the first K questions")
    p.add_argument("--batch-size", type=int, default=64, help="sequences decoded together")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--analysis", choices=["prefix-consistency", "error-position"])
    p.add_argument("--num-samples", type=int, default=16, help="analyses: samples per question (M)")
    p.add_argument("--rollouts", type=int, default=8, help="error-position: rollouts per prefix (K)")
    p.add_argument("--device", default=default_device(), help="cpu or cuda (default: %(default)s; cuda when there "
                                                              "is a GPU, as in train.py)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    return p


def run(args):
    for name in ("n", "max_new_tokens", "batch_size", "num_samples", "rollouts", "limit"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UpftError(f"--{name.replace('_', '-')} must be at least 1")
    if args.temperature is None:
        args.temperature = 0.6 if args.analysis else 0.0
    if not (args.temperature == 0 or args.temperature >= MIN_TEMPERATURE) or not 0 < args.top_p <= 1:
        raise UpftError(f"--temperature must be 0 (greedy) or at least {MIN_TEMPERATURE:g}, and --top-p in (0, 1]; "
                        f"got {args.temperature} and {args.top_p}")
    out = Path(args.out) if args.out else default_out(args.model, args.data, args.analysis)
    check_out(out)
    args.out = str(out)     # recorded with the results
    rows = load_rows(args.data, args.limit)     # bad input fails here, before the slow model load
    check_memory(args, rows)                    # and a decoding that cannot fit, before any allocation
    if args.n > 1 and args.temperature == 0:
        print("warning: --n > 1 with --temperature 0 gives n identical greedy samples", file=sys.stderr)
    tok = Tokenizer.from_pretrained(args.model)
    model = Transformer.from_pretrained(args.model, device=args.device, dtype=getattr(torch, args.dtype))
    common = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                  batch_size=args.batch_size, seed=args.seed)
    if args.analysis:
        if args.analysis == "prefix-consistency":
            result = prefix_consistency(model, tok, rows, args.num_samples, **common)
        else:
            result = error_position(model, tok, rows, args.num_samples, args.rollouts, **common)
        write_outputs([(out, write_json, {**result, "args": vars(args)})])
        try:
            png = plot(result, out.with_suffix(".png"))
        except OSError as e:  # a full disk under the picture: nothing of the analysis is kept
            out.unlink(missing_ok=True)
            out.with_suffix(".png").unlink(missing_ok=True)
            raise UpftFault(f"{out.with_suffix('.png')}: {e.strerror or e}; nothing was written") from None
        print(json.dumps(result, indent=1))
        print(f"wrote {out}" + (f" and {png}" if png else " (no plot: matplotlib is not installed)"))
        return
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
        run(parse_args(argv))
    except UpftError as e:  # exit 2: bad input; 1: the machine (UpftFault)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
