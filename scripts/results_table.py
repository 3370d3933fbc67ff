"""Make the README's toy-world results table: base; the baselines SFT, RFT, majority vote and EM-FT;
UPFT (N=1), UPFT with prefix voting (N=8), the temperature-1 control (docs/method.md §2.1) and the
controls that take UPFT apart (§7.1); over several seeds, with the token accounting and time of each run.

    python scripts/results_table.py                 # 3 seeds: the runs and table.md in runs/table/
    python scripts/results_table.py --readme        # ... and the table written into README.md
    python scripts/results_table.py --seeds 0 --rows SFT "UPFT (N=1)"

The table is printed and written to <out>/table.md; README.md is rewritten (between its
`<!-- results:start -->` and `<!-- results:end -->` lines) only with --readme.

Every run is a plain `train.py` invocation with the toy defaults (shown in the output), so any cell can
be reproduced alone; every method gets the same LR, epochs and batch. Accuracy: greedy, on the toy
world's held-out questions; mean over seeds with a 95% t-interval. Two flags only save time and change
no number: `--base-from` (the base model's greedy accuracy is measured once, by the first run, and
reused by the others) and `--eval-every` (accuracy on the first 100 held-out questions during training,
for docs/accuracy_vs_step.png; evaluation uses no random stream of the training). Finished runs are
reused and an interrupted one is resumed, so the script can be restarted.
"""
import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EVAL_EVERY = 32  # optimizer steps between evaluations during training: ~5 points for the 126-step runs
# The rows in the table's order: name -> (run folder stem, train.py flags, kind).
ROWS = {
    "SFT": ("sft", ["--method", "sft"], "baseline"),
    "RFT (16 samples)": ("rft", ["--method", "rft", "--num-samples", "16"], "baseline"),
    "majority vote (16 samples)": ("vote", ["--method", "vote", "--num-samples", "16"], "baseline"),
    "EM-FT": ("em", ["--method", "em"], "baseline"),
    "UPFT (N=1)": ("upft", ["--method", "upft"], "upft"),
    "UPFT + voting (N=8)": ("upft-vote", ["--method", "upft", "--num-samples", "8"], "upft"),
    "UPFT control (T=1, no top-p)": ("upft-t1", ["--method", "upft", "--temperature", "1.0", "--top-p", "1.0"],
                                     "control"),
    "UPFT, no instruction": ("upft-noinstr", ["--method", "upft", "--no-instruction"], "control"),
    "UPFT, no EOS": ("upft-noeos", ["--method", "upft", "--no-eos"], "control"),
    "UPFT, prefix part only (p = 0)": ("upft-p0", ["--method", "upft", "--structure-ratio", "0"], "control"),
    # 100 examples, 14 steps: evaluated every 3 steps to get as many points as the others
    "UPFT, full-trace part only": ("upft-fullonly", ["--method", "upft", "--full-only", "--eval-every", "3"],
                                   "control"),
    "UPFT, random targets": ("upft-random", ["--method", "upft", "--random-targets"], "control"),
    "UPFT, per-sample loss (official)": ("upft-sample", ["--method", "upft", "--loss-norm", "sample"], "control"),
}
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def mean_ci(xs):
    m = statistics.mean(xs)
    if len(xs) < 2:
        return m, float("nan")
    return m, T95.get(len(xs) - 1, 1.96) * statistics.stdev(xs) / math.sqrt(len(xs))


def fmt(xs, pct=True):
    m, h = mean_ci(xs)
    s = 100 if pct else 1
    return f"{m * s:.1f} ± {h * s:.1f}" if not math.isnan(h) else f"{m * s:.1f}"


def run_dir(out, name, seed):
    return Path(out) / f"{ROWS[name][0]}-s{seed}"


def resumed(r):
    """Whether a run was resumed: results.json says so (older runs: the resume flag in args.json)."""
    if "resumed" in r:
        return r["resumed"]
    return json.loads((Path(r["_dir"]) / "args.json").read_text()).get("resume", False)


def load(out, seeds):
    """{row name: [results.json of each seed]} for the rows whose every seed has finished."""
    results = {}
    for name in ROWS:
        files = [run_dir(out, name, s) / "results.json" for s in seeds]
        if all(f.exists() for f in files):
            results[name] = [{**json.loads(f.read_text()), "_dir": str(f.parent)} for f in files]
    return results


def train_run(out, seed, name, args, base_run=None):
    d = run_dir(out, name, seed)
    flags = list(ROWS[name][1])
    if "--eval-every" not in flags:
        flags += ["--eval-every", str(EVAL_EVERY)]
    cmd = [sys.executable, str(ROOT / "train.py"), "--prefix-len", str(args.prefix_len), "--seed", str(seed),
           "--out", str(d), *flags, *args.extra]
    if base_run:
        cmd += ["--base-from", str(base_run)]
    if Path(f"{d}.partial").exists():  # an interrupted run: continue it
        cmd.append("--resume")
    print("$", " ".join(cmd[1:]), flush=True)
    t = time.time()
    with open(Path(out) / f"{d.name}.log", "w") as log:
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    print(f"  {d.name}: {time.time() - t:.0f}s", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--prefix-len", type=int, default=8)
    ap.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS), metavar="ROW",
                    help="only these rows, named as in the table (default: all)")
    ap.add_argument("--jobs", type=int, default=1, help="train.py runs at the same time (each keeps its own "
                    "thread count, so the numbers do not change; on a shared machine set OMP_WAIT_POLICY=PASSIVE)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "table"), help="the runs and table.md (default: runs/table)")
    ap.add_argument("--readme", action="store_true", help="also write the table into README.md (default: only "
                    "print it and write <out>/table.md)")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="flags passed to every train.py run")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    jobs = [(seed, name) for seed in args.seeds for name in ROWS if name in args.rows]  # seed-major
    done = [j for j in jobs if (run_dir(out, j[1], j[0]) / "results.json").exists()]
    base_run = next((run_dir(out, n, s) for s, n in done if (run_dir(out, n, s) / "eval_base.json").exists()),
                    None)
    todo = [j for j in jobs if j not in done]  # finished runs are reused: the script can be restarted
    if base_run is None and todo:  # the first run measures the base model; the others reuse it
        seed, name = todo.pop(0)
        train_run(out, seed, name, args)
        base_run = run_dir(out, name, seed)
    with ThreadPoolExecutor(args.jobs) as pool:  # each job is its own train.py process
        for f in [pool.submit(train_run, out, seed, name, args, base_run) for seed, name in todo]:
            f.result()
    print(f"this invocation: {time.time() - t0:.0f}s")
    table = make_table(load(out, args.seeds), args)
    print("\n" + table)
    (out / "table.md").write_text(table + "\n")
    print(f"wrote {out / 'table.md'}")
    if args.readme:
        write_readme(ROOT / "README.md", table)


def write_readme(readme: Path, table: str):
    """Put `table` between README.md's results markers."""
    text = readme.read_text()
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    if start not in text or end not in text:
        sys.exit(f"error: {readme} has no '{start}' ... '{end}' lines to put the table between")
    readme.write_text(text[:text.index(start) + len(start)] + "\n" + table + "\n" + text[text.index(end):])
    print(f"updated {readme}")


def make_table(results, args):
    first = next(iter(results.values()))
    base = [r["base"]["accuracy"] for r in first]
    rft = results.get("RFT (16 samples)")
    rft_sampled = statistics.mean(r["accounting"]["tokens_sampled"] for r in rft) if rft else float("nan")
    sft_sup = statistics.mean(r["accounting"]["tokens_supervised"] for r in results["SFT"]) \
        if "SFT" in results else float("nan")
    n_eval = first[0]["base"]["questions"]
    lines = [f"Toy world, {len(args.seeds)} seed{'s' if len(args.seeds) > 1 else ''} ({', '.join(map(str, args.seeds))}), L = {args.prefix_len}, "
             f"p = 0.1, {first[0]['accounting']['questions']} training questions, {n_eval} held-out "
             f"questions; greedy accuracy, mean ± 95% t-interval over seeds; Δ is paired with the base "
             f"model (the same for every seed). Same LR (1e-5), epochs (2) and batch (16) for every row.", "",
             "| method | accuracy (%) | Δ vs base (pts) | tokens sampled | tokens supervised | "
             "sampled / RFT | supervised / SFT | sampling + training (s) | wall time (s) |",
             "|---|---|---|---|---|---|---|---|---|",
             f"| base | {fmt(base)} | – | – | – | – | – | – | – |"]
    total_wall, resumed_runs = 0.0, 0
    for name, rs in results.items():
        acc = [r["tuned"]["accuracy"] for r in rs]
        delta = [a - b for a, b in zip(acc, base)]
        sampled = statistics.mean(r["accounting"]["tokens_sampled"] for r in rs)
        sup = statistics.mean(r["accounting"]["tokens_supervised"] for r in rs)
        whole = [r for r in rs if not resumed(r)]  # a resumed run's clocks restart at the resume
        resumed_runs += len(rs) - len(whole)
        work = statistics.mean(r["accounting"]["sampling_seconds"] + r["accounting"]["training_seconds"]
                               for r in whole) if whole else float("nan")
        wall = statistics.mean(r["wall_seconds"] for r in whole) if whole else float("nan")
        total_wall += sum(r["wall_seconds"] for r in rs)
        mark = "" if len(whole) == len(rs) else f" ({len(whole)})"
        lines.append(f"| {name} | {fmt(acc)} | {fmt(delta)} | {sampled:,.0f} | {sup:,.0f} | "
                     f"{sampled / rft_sampled:.1%} | {sup / sft_sup:.1%} | {work:.0f}{mark} | {wall:.0f}{mark} |")
    notes = []
    if "UPFT + voting (N=8)" in results:
        agree = statistics.mean(r["accounting"]["mean_prefix_agreement"] for r in results["UPFT + voting (N=8)"])
        notes.append(f"Mean agreement of the winning 8-sample prefix: {agree:.1%}.")
    if "majority vote (16 samples)" in results:
        vs = results["majority vote (16 samples)"]
        share = statistics.mean(r["accounting"]["mean_vote_share"] for r in vs)
        drop = statistics.mean(r["accounting"]["questions_dropped_no_answer"] for r in vs)
        notes.append(f"Majority vote: mean vote share of the pseudo-label {share:.1%}; {drop:.1f} questions "
                     f"per run dropped (no sample with an answer).")
    if rft:
        drop = statistics.mean(r["accounting"]["questions_dropped_no_correct_sample"] for r in rft)
        notes.append(f"RFT: {drop:.1f} questions per run dropped (no correct sample among 16).")
    if "UPFT (N=1)" in results and rft and "SFT" in results:
        upft = results["UPFT (N=1)"]
        ratio_s = statistics.mean(r["accounting"]["tokens_sampled"] for r in upft) / rft_sampled
        ratio_t = statistics.mean(r["accounting"]["tokens_supervised"] for r in upft) / sft_sup
        notes.append(f"UPFT (N=1) sampled tokens / RFT's: {ratio_s:.2%} (target ≤ 2%); "
                     f"supervised tokens / SFT's: {ratio_t:.1%} (target ≤ 30%).")
    runs = sum(len(rs) for rs in results.values())
    if resumed_runs:
        were = "s were" if resumed_runs > 1 else " was"
        notes.append(f"{resumed_runs} run{were} interrupted and resumed (`--resume`, which reuses the samples "
                     f"and the last checkpoint and changes no number); their clocks restarted at the resume, so "
                     f"the time columns average the other runs only, their count in parentheses.")
    notes.append(f"Sampling + training: without the evaluations. Wall time: the whole run, including the "
                 f"evaluations during training (every {EVAL_EVERY} steps on 100 held-out questions) and the "
                 f"tuned evaluation; the base evaluation ran once and was reused. The {runs} runs took "
                 f"{'at least ' if resumed_runs else ''}{total_wall / 60:.0f} min in all on this machine (2 CPU "
                 f"cores shared with other jobs{'; resumed runs counted from their resume' if resumed_runs else ''}).")
    return "\n".join(lines + [""] + notes)


if __name__ == "__main__":
    main()
