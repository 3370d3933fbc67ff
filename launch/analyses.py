"""eval.py's additions: the paper's two prefix analyses (Fig. 2a, 2b; docs/method.md §1) and the memory
check of a decoding on a real checkpoint (the memory plan, launch/plan.py), before the model loads.

    python eval.py --model DIR --data q.jsonl --analysis prefix-consistency --num-samples 16
    python eval.py --model DIR --data q.jsonl --analysis error-position --num-samples 8 --rollouts 8

Output: runs/eval/<model>-<data stem>.<analysis>.json (and .png when matplotlib is installed).
"""
import json

import torch

from data import UpftError, UpftFault, write_json
from eval import write_outputs
from grader import extract_answer, is_equiv
from launch.cli import plan_config
from launch.plan import decoding_fix, usable_bytes
from model import generate_answers

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


def analyse(args, model, tok, rows, out, common):
    """eval.py --analysis: the analysis, its JSON at `out` and its picture beside it (all or nothing)."""
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
