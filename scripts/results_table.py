"""Make the toy-world results table (docs/results.md) and its digest (README.md): base; the baselines SFT,
RFT, majority vote and EM-FT; UPFT (N=1), UPFT with prefix voting (N=8), the temperature-1 control
(docs/method.md §2.1) and the controls that take UPFT apart (§7.1); over several seeds, with greedy and
sampled accuracy, each method's change against the base model paired per question, the token accounting
and the time of each run.

    python scripts/results_table.py                 # 3 seeds: the runs and table.md in runs/table/
    python scripts/results_table.py --readme        # ... and the table into docs/results.md, its digest into README.md
    python scripts/results_table.py --seeds 0 --rows SFT "UPFT (N=1)"
    python scripts/results_table.py --lr-check      # the LR sensitivity check (UPFT and SFT, one seed)

The design (rows, seeds, settings, decision rules) is docs/experiments.md; the table is printed and
written to <out>/table.md. Only with --readme: docs/results.md gets the table (between its
`<!-- results:start -->` and `<!-- results:end -->` lines) and README.md its digest (`make_digest`: base,
UPFT, SFT, RFT, EM-FT next to what the paper reports; between `<!-- digest:start -->` and
`<!-- digest:end -->`), both from the same loaded runs.

Every run is a plain `train.py` invocation with the toy defaults plus SETTINGS (shown in the output), so
any cell can be reproduced alone; every method gets the same LR, epochs, batch and evaluation. Two flags
only save time and change no number: `--base-from` (the base model's accuracy is measured once, by the
first run, and reused by the others: greedy decoding, and sampling from the evaluation seed's streams,
give the same answers every time) and `--eval-every` (accuracy on the first 100 held-out questions
during training, for docs/accuracy_vs_step.png; evaluation uses no random stream of the training).
Finished runs are reused and an interrupted one is resumed, so the script can be restarted.

Intervals: Δ is paired per question (the same held-out questions, the same base answers, and for the
sampled column the same uniform numbers: train.py --eval-seed) and its 95% interval is a hierarchical
bootstrap over seeds and questions (docs/method.md §6.1): resample the seeds with replacement, then the
questions with replacement (the same questions for every seed of a draw), take the mean paired
difference; the 2.5th and 97.5th percentiles of 4,000 draws.
"""
import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import paired  # noqa: E402  (the intervals and the decision rule)
EVAL_EVERY = 32  # optimizer steps between evaluations during training: ~5 points for the 126-step runs
# What every run of the table adds to train.py's toy defaults (docs/experiments.md): 2,000 held-out
# questions, greedy and 4 sampled answers each.
SETTINGS = ["--eval-samples", "4"]
EVAL_LIMIT = 2000  # held-out questions (--eval-limit; the decision worlds' study uses 1,000)
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
    "UPFT, no instruction and no EOS": ("upft-plain", ["--method", "upft", "--no-instruction", "--no-eos"],
                                        "control"),
    "UPFT, prefix part only (p = 0)": ("upft-p0", ["--method", "upft", "--structure-ratio", "0"], "control"),
    # 100 examples, 14 steps: evaluated every 3 steps to get as many points as the others
    "UPFT, full-trace part only": ("upft-fullonly", ["--method", "upft", "--full-only", "--eval-every", "3"],
                                   "control"),
    "UPFT, random targets": ("upft-random", ["--method", "upft", "--random-targets"], "control"),
    "UPFT, per-sample loss (official)": ("upft-sample", ["--method", "upft", "--loss-norm", "sample"], "control"),
}
# The LR sensitivity check (--lr-check): UPFT and SFT at a third and three times the table's LR, one seed.
LR_ROWS = {
    f"{method} (LR {lr})": (f"{stem}-lr{lr}", [*ROWS[method][1], "--lr", lr], "lr")
    for method, stem in (("UPFT (N=1)", "upft"), ("SFT", "sft")) for lr in ("3e-6", "3e-5")
}
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
DRAWS = 4000


def mean_ci(xs):
    """Mean and the half-width of a 95% t-interval over seeds (used by the time columns and figures)."""
    m = statistics.mean(xs)
    if len(xs) < 2:
        return m, float("nan")
    return m, T95.get(len(xs) - 1, 1.96) * statistics.stdev(xs) / len(xs) ** 0.5


def run_dir(out, name, seed):
    stem = {**ROWS, **LR_ROWS}[name][0]
    return Path(out) / f"{stem}-s{seed}"


def summary_path(results_dir, name, seed):
    return Path(results_dir) / f"{run_dir('', name, seed).name}.json"


def resumed(r):
    """Whether a run was resumed: results.json says so (older runs: the resume flag in args.json)."""
    return r["resumed"] if "resumed" in r else r["_args"].get("resume", False)


def _records(run, tag, sampled):
    path = Path(run) / f"eval_{tag}{'_sampled' if sampled else ''}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _digits(recs, sampled):
    """Per question, one character: 0/1 (greedy correct) or the number of correct samples (sampled)."""
    return "".join(str(sum(r["sample_correct"]) if sampled else int(r["correct"])) for r in recs)


def _forms(recs, sampled):
    """Per answer, its opener and whether it is right: c/h careful/hasty marker (toy.opener_of), n
    neither; upper case when right. Greedy: one letter a question; sampled: k letters a question."""
    from toy import opener_of  # here: a table made from summaries needs no torch

    def letter(text, right):
        c = {"careful": "c", "hasty": "h", None: "n"}[opener_of(text)]
        return c.upper() if right else c
    if sampled:
        return ["".join(map(letter, r["responses"], r["sample_correct"])) for r in recs]
    return "".join(letter(r["response"], r["correct"]) for r in recs)


def summarise(run):
    """A finished run's small summary, the file the tables are made from (results/<study>/<run>.json):
    its results.json and args.json, the during-training evaluations, and per held-out question the base
    and tuned correctness, greedy and sampled. The base and tuned records must be the same questions in
    the same order (checked here: a paired difference of mismatched records would be meaningless)."""
    run = Path(run)
    questions = None
    per_question = {}
    for sampled in (False, True):
        if not (run / f"eval_base{'_sampled' if sampled else ''}.jsonl").exists():
            continue
        base, tuned = _records(run, "base", sampled), _records(run, "tuned", sampled)
        keys = [[(r["index"], r.get("question")) for r in recs] for recs in (base, tuned)]
        if keys[0] != keys[1]:
            raise ValueError(f"{run}: the base and tuned {'sampled ' if sampled else ''}records are not the "
                             f"same questions in the same order")
        if questions is not None and keys[0] != questions:
            raise ValueError(f"{run}: the greedy and sampled records are not the same questions")
        questions = keys[0]
        per_question["sampled" if sampled else "greedy"] = {
            "base": _digits(base, sampled), "tuned": _digits(tuned, sampled),
            **({"k": len(base[0]["sample_correct"])} if sampled else {}),
            "forms": {"base": _forms(base, sampled), "tuned": _forms(tuned, sampled)}}
    text = "\n".join(str(q) for _, q in questions)
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {"results": json.loads((run / "results.json").read_text()),
            "args": json.loads((run / "args.json").read_text()),
            "curve": [[m["step"], m["eval_accuracy"]] for m in metrics if "eval_accuracy" in m],
            "questions": {"index": [i for i, _ in questions],
                          "sha256": hashlib.sha256(text.encode()).hexdigest()},
            **per_question}


def provenance(root=ROOT):
    """The code a run came from: the checkout's commit and whether its tree was clean (no tracked file
    changed, no untracked file outside .gitignore). None where `root` is not a git checkout."""
    def git(*a):
        r = subprocess.run(["git", *a], cwd=root, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else None
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain") if commit else None
    return {"commit": commit, "clean": None if status is None else status == ""}


def write_summary(run, path, root=ROOT):
    """Write summarise(run) to `path` atomically (a stop mid-write leaves the old file or none), with the
    provenance of the checkout `root` whose train.py made the run (the runner runs it there)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({**summarise(run), "code": provenance(root)}, separators=(",", ":")) + "\n")
    os.replace(tmp, path)


def load(results_dir, seeds, rows=None, partial=False):
    """{row name: [one entry per finished seed]} from the committed run summaries in `results_dir`, for
    the rows whose every seed has finished; with `partial`, also the rows of which only some seeds
    finished (a design's cut seeds: the table names their seeds). An entry is the run's results.json
    plus _args, _seed, _summary."""
    results = {}
    for name in rows or {**ROWS, **LR_ROWS}:
        files = [summary_path(results_dir, name, s) for s in seeds]
        done = [f for f in files if f.exists()]
        if done and (partial or len(done) == len(files)):
            results[name] = []
            for f, s in zip(files, seeds):
                if f.exists():
                    summary = json.loads(f.read_text())
                    results[name].append({**summary["results"], "_args": summary["args"], "_seed": s,
                                          "_summary": summary})
    return results


def differences(runs, sampled):
    """d[seed, question] = tuned - base correctness (greedy 1/0; sampled: the share of correct samples),
    checked to be paired: every seed's records are the same questions in the same order, with the same
    base answers."""
    kind = "sampled" if sampled else "greedy"
    first = runs[0]["_summary"]
    for r in runs[1:]:
        s = r["_summary"]
        if s["questions"] != first["questions"] or s[kind]["base"] != first[kind]["base"]:
            raise ValueError(f"seed {r['_seed']} is not paired with seed {runs[0]['_seed']}: other questions "
                             f"or other base answers")
    k = first[kind]["k"] if sampled else 1
    base = np.array([int(c) for c in first[kind]["base"]]) / k
    return np.stack([np.array([int(c) for c in r["_summary"][kind]["tuned"]]) / k - base for r in runs])


def paired_delta(runs, sampled, draws=DRAWS, seed=0):
    """The pre-registered interval (paired.hierarchical_bootstrap) as (Δ, low, high) in accuracy units."""
    iv = paired.hierarchical_bootstrap(differences(runs, sampled), draws, seed)
    return iv.delta, iv.low, iv.high


def seed_interval(runs, sampled):
    """The corrected interval the verdicts use (paired.seed_question_interval)."""
    return paired.seed_question_interval(differences(runs, sampled))


def train_run(out, seed, name, args, base_run=None):
    d = run_dir(out, name, seed)
    flags = list({**ROWS, **LR_ROWS}[name][1])
    if args.eval_every == 0:  # no evaluation during training (a row's own --eval-every goes too)
        flags = [f for i, f in enumerate(flags) if f != "--eval-every" and (i == 0 or flags[i - 1] != "--eval-every")]
    elif "--eval-every" not in flags:
        flags += ["--eval-every", str(args.eval_every)]
    cmd = [sys.executable, str(ROOT / "train.py"), "--prefix-len", str(args.prefix_len), "--seed", str(seed),
           "--out", str(d), "--eval-limit", str(args.eval_limit), *SETTINGS, *flags, *args.extra]
    if args.world:
        cmd += ["--world", args.world]
    if base_run:
        cmd += ["--base-from", str(base_run)]
    if Path(f"{d}.partial").exists():  # an interrupted run: continue it
        cmd.append("--resume")
    print("$", " ".join(cmd[1:]), flush=True)
    t = time.time()
    with open(Path(out) / f"{d.name}.log", "w") as log:
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    print(f"  {d.name}: {time.time() - t:.0f}s", flush=True)
    keep(d, summary_path(args.results, name, seed), args.commit)


def keep(run, path, commit):
    """Write a finished run's summary; with `commit`, commit it at once (a stop later loses nothing)."""
    write_summary(run, path)
    print(f"  summary: {path}", flush=True)
    if not commit:
        return
    repo = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=path.parent, capture_output=True,
                          text=True, check=True).stdout.strip()
    for attempt in range(30):  # another git command may hold the index for a moment
        status = subprocess.run(["git", "status", "--porcelain", "--", str(path)], cwd=repo, capture_output=True,
                                text=True)
        if status.returncode == 0 and not status.stdout.strip():
            return  # already committed as it is (by another commit of the repository)
        add = subprocess.run(["git", "add", str(path)], cwd=repo, capture_output=True, text=True)
        done = add.returncode == 0 and subprocess.run(
            ["git", "commit", "-q", "-m", f"results: {path.parent.name}/{path.name}", "--", str(path)],
            cwd=repo, capture_output=True, text=True).returncode == 0
        if done:
            return
        time.sleep(10)
    print(f"  could not commit {path}: commit it by hand", flush=True)


def positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--prefix-len", type=positive, default=8)
    ap.add_argument("--rows", nargs="+", choices=[*ROWS, *LR_ROWS], default=list(ROWS), metavar="ROW",
                    help="only these rows, named as in the table (default: all; the LR check's rows too, e.g. "
                         "'UPFT (N=1) (LR 3e-5)')")
    ap.add_argument("--lr-check", action="store_true", help="run the LR sensitivity rows (seed 0) instead")
    ap.add_argument("--world", help="a toy world folder (train.py --world; default: the shipped assets/toy)")
    ap.add_argument("--jobs", type=positive, default=1, help="train.py runs at the same time (each keeps its own "
                    "thread count, so the numbers do not change; on a shared machine set OMP_WAIT_POLICY=PASSIVE)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "table"), help="the run folders and table.md (default: "
                    "runs/table)")
    ap.add_argument("--results", default=str(ROOT / "results" / "toy-v5"), help="the finished runs' summaries, "
                    "which the table is made from (default: results/toy-v5, committed in the repository)")
    ap.add_argument("--commit", action="store_true", help="git-commit each run's summary as soon as it is written")
    ap.add_argument("--eval-limit", type=positive, default=EVAL_LIMIT, help=f"held-out questions evaluated "
                    f"(default: {EVAL_LIMIT})")
    ap.add_argument("--eval-every", type=int, default=EVAL_EVERY, help=f"optimizer steps between evaluations on "
                    f"100 held-out questions during training (default: {EVAL_EVERY}; 0: none)")
    ap.add_argument("--base-from", help="a finished run whose base evaluation every run reuses (default: the "
                    "first run of --out measures it)")
    ap.add_argument("--readme", action="store_true", help="also write the table into docs/results.md and its "
                    "digest into README.md (default: only print it and write <out>/table.md)")
    ap.add_argument("--table-only", action="store_true", help="run nothing: the table of the runs that finished "
                    "(a row some of whose seeds did not finish shows which did)")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="flags passed to every train.py run")
    args = ap.parse_args(argv)
    rows = list(LR_ROWS) if args.lr_check else list(dict.fromkeys(args.rows))  # run in the order given
    seeds = [args.seeds[0]] if args.lr_check else args.seeds
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    jobs = [(seed, name) for seed in seeds for name in rows]  # seed-major
    for seed, name in jobs:  # a run that finished but whose summary was not written (a stop in between)
        if (run_dir(out, name, seed) / "results.json").exists() and not summary_path(args.results, name, seed).exists():
            keep(run_dir(out, name, seed), summary_path(args.results, name, seed), args.commit)
    done = [j for j in jobs if summary_path(args.results, j[1], j[0]).exists()]
    base_run = args.base_from or next((d for d in sorted(out.iterdir())  # any finished run of --out
                                       if (d / "results.json").exists() and (d / "eval_base.json").exists()), None)
    todo = [] if args.table_only else [j for j in jobs if j not in done]  # finished runs are reused
    if base_run is None and todo:  # the first run measures the base model; the others reuse it
        seed, name = todo.pop(0)
        train_run(out, seed, name, args)
        base_run = run_dir(out, name, seed)
    with ThreadPoolExecutor(args.jobs) as pool:  # each job is its own train.py process
        for f in [pool.submit(train_run, out, seed, name, args, base_run) for seed, name in todo]:
            f.result()
    print(f"this invocation: {time.time() - t0:.0f}s")
    results = load(args.results, seeds, rows, partial=args.table_only)
    if not results:
        sys.exit(f"error: no finished run summaries in {args.results}")
    table = make_table(results, seeds, args.prefix_len, design=len(rows) * len(seeds))
    print("\n" + table)
    (out / "table.md").write_text(table + "\n")
    print(f"wrote {out / 'table.md'}")
    if args.readme:
        write_readme(ROOT / RESULTS_DOC, table, *(LR_MARKERS if args.lr_check else ()))
        if not args.lr_check:
            write_readme(ROOT / "README.md", make_digest(results, seeds), *DIGEST_MARKERS)


def write_readme(readme: Path, table: str, start="<!-- results:start -->", end="<!-- results:end -->"):
    """Put `table` between a document's `start` and `end` lines (the results document's markers unless
    told otherwise)."""
    text = readme.read_text()
    if start not in text or end not in text:
        sys.exit(f"error: {readme} has no '{start}' ... '{end}' lines to put the table between")
    readme.write_text(text[:text.index(start) + len(start)] + "\n" + table + "\n" + text[text.index(end):])
    print(f"updated {readme}")


def seeds_named(rs, n):
    """' (seeds 0, 1)' for a row of fewer than n finished seeds (a design's cut seeds), else ''."""
    if len(rs) == n:
        return ""
    return f" (seed{'s' if len(rs) > 1 else ''} {', '.join(str(r['_seed']) for r in rs)})"


RESULTS_DOC = Path("docs") / "results.md"  # the full table's document, relative to the repository root
DIGEST_MARKERS = ("<!-- digest:start -->", "<!-- digest:end -->")
LR_MARKERS = ("<!-- lr:start -->", "<!-- lr:end -->")  # the LR check's table in the results document
# The README's digest: its rows in order ("base" first), and what the paper reports for its own models
# next to each (NeurIPS Table 1, unsupervised setting on PRM-12K, for SFT and UPFT; Table 2, 16 samples
# filtered by the label, for RFT; arXiv v1 numbers them Tables 2 and 3): MATH500 greedy accuracy of
# Llama-3.1-8B-Instruct / Qwen2.5-Math-7B-Instruct, the tuned rows as the change against that base.
DIGEST_ROWS = ("UPFT (N=1)", "SFT", "RFT (16 samples)", "EM-FT")
PAPER = {"base": "51.0 / 84.0", "UPFT (N=1)": "+1.0 / +1.6", "SFT": "-2.6 / -0.6",
         "RFT (16 samples)": "+1.0 / +1.2", "EM-FT": "not in the paper"}
DIGEST_INTERVAL = ("seed-aware: the seed and question components, each with its own t quantile "
                   "(docs/method.md §6.1)")  # what row_delta's interval is


def row_delta(rs, sampled):
    """A row's Δ against the base model and its 95% interval, (Δ, low, high) in accuracy units: the one
    place the digest takes them from (the seed-aware interval the verdicts use)."""
    iv = seed_interval(rs, sampled)
    return iv.delta, iv.low, iv.high


def make_digest(results, seeds):
    """The README's digest of the table: base, UPFT (N=1), SFT, RFT, EM-FT (those that finished), greedy
    and sampled accuracy with Δ and its interval, and what the paper reports for its models."""
    b0 = next(iter(results.values()))[0]
    sampled_eval = b0.get("base_sampled") is not None
    head = "| method | greedy | Δ greedy |" + (" sampled | Δ sampled |" if sampled_eval else "")
    head += " the paper: MATH500, Llama-3.1-8B / Qwen2.5-Math-7B |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    base = f"| base | {pct(b0['base']['accuracy'])} | – |"
    base += f" {pct(b0['base_sampled']['accuracy'])} | – |" if sampled_eval else ""
    lines.append(base + f" {PAPER['base']} |")
    for name in (n for n in DIGEST_ROWS if n in results):
        rs = results[name]
        cells = [name + seeds_named(rs, len(seeds)), pct(statistics.mean(r["tuned"]["accuracy"] for r in rs))]
        for sampled in (False, True)[:1 + sampled_eval]:
            if sampled:
                cells.append(pct(statistics.mean(r["tuned_sampled"]["accuracy"] for r in rs)))
            d, lo, hi = row_delta(rs, sampled)
            cells.append(f"{pct(d, True)} [{pct(lo, True)}, {pct(hi, True)}]")
        lines.append("| " + " | ".join(cells + [PAPER[name]]) + " |")
    s = f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''} ({', '.join(map(str, seeds))})"
    k = b0["base_sampled"]["samples_per_question"] if sampled_eval else 0
    lines += ["", f"Toy world: accuracy in % on {b0['base']['questions']:,} held-out questions after training on "
              f"{b0['accounting']['questions']:,}, mean over {s} unless a row names its seeds"
              + (f"; sampled = {k} answers per question" if sampled_eval else "")
              + f"; Δ = the change against the base model paired per question, in points, [95% interval: "
              f"{DIGEST_INTERVAL}]. The paper's column: its reported MATH500 accuracy (base) and change "
              f"(tuned rows) in points, one run each with no interval (NeurIPS Tables 1 and 2; arXiv v1 "
              f"Tables 2 and 3). The full table: [docs/results.md](docs/results.md)."]
    if "UPFT (N=1)" in results:  # the seeds' spread, which an interval over few seeds summarises poorly
        per_seed = differences(results["UPFT (N=1)"], sampled=False).mean(1)
        lines[-1] += (" UPFT (N=1), Δ greedy of each seed, lowest first: "
                      + ", ".join(pct(d, True) for d in sorted(per_seed)) + ".")
    return "\n".join(lines)


def pct(x, sign=False):
    return f"{100 * x:+.1f}" if sign else f"{100 * x:.1f}"


def make_table(results, seeds, prefix_len, design=None):
    first = next(iter(results.values()))
    b0 = first[0]
    sampled_eval = b0.get("base_sampled") is not None
    k = b0["base_sampled"]["samples_per_question"] if sampled_eval else 0
    rft = results.get("RFT (16 samples)")
    rft_sampled = statistics.mean(r["accounting"]["tokens_sampled"] for r in rft) if rft else float("nan")
    sft_sup = statistics.mean(r["accounting"]["tokens_supervised"] for r in results["SFT"]) \
        if "SFT" in results else float("nan")
    s = f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''} ({', '.join(map(str, seeds))})"
    runs = sum(len(rs) for rs in results.values())
    count = f"{runs} of the {design} runs of this table's design (rows × seeds); " if design else ""
    lines = [f"{count}{s}, L = {prefix_len}, {b0['accounting']['questions']} training questions, "
             f"{b0['base']['questions']} held-out questions; accuracy in %, mean over seeds; Δ = the paired "
             f"change against the base model in points with two 95% intervals: **seed-aware** (the seed and "
             f"question components, each with its own t quantile; with one seed, that seed's question-level "
             f"interval), each after the **pre-registered** hierarchical bootstrap over seeds and questions, which "
             f"under-covers when seeds disagree (docs/method.md §6.1)" +
             (f"; sampled = {k} answers per question at temperature {b0['_args']['eval_temperature']}, "
              f"the checkpoint's top-p" if sampled_eval else "") + ".", ""]
    head = "| method | greedy | Δ greedy, pre-registered | seed-aware |" + (
        f" sampled | Δ sampled, pre-registered | seed-aware | pass@{k} |" if sampled_eval else "")
    head += " tokens sampled | tokens supervised | sampled / RFT | supervised / SFT | sampling + training (s) |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    base = f"| base | {pct(b0['base']['accuracy'])} | – | – |"
    if sampled_eval:
        base += f" {pct(b0['base_sampled']['accuracy'])} | – | – | {pct(b0['base_sampled']['pass@n'])} |"
    lines.append(base + " – | – | – | – | – |")
    total_wall, resumed_runs, verdicts, changed = 0.0, 0, [], []
    for name, rs in results.items():
        cells = [name + seeds_named(rs, len(seeds)), pct(statistics.mean(r["tuned"]["accuracy"] for r in rs))]
        row_verdicts = []
        for sampled in [False, True] if sampled_eval else [False]:
            if sampled:
                cells.append(pct(statistics.mean(r["tuned_sampled"]["accuracy"] for r in rs)))
            fixed, old = seed_interval(rs, sampled), paired.Interval(*paired_delta(rs, sampled), len(rs))
            cells += [old.cell(), fixed.cell() + (" (questions only)" if len(rs) == 1 else "")]
            pair = [paired.verdict(old, across_seeds=False), paired.verdict(fixed)]
            row_verdicts += pair
            if pair[0] != pair[1]:
                changed.append(f"{cells[0]}, {'sampled' if sampled else 'greedy'}: {pair[0]} → {pair[1]}")
            if sampled:
                cells.append(pct(statistics.mean(r["tuned_sampled"]["pass@n"] for r in rs)))
        verdicts.append(f"| {cells[0]} | " + " | ".join(row_verdicts) + " |")
        sampled = statistics.mean(r["accounting"]["tokens_sampled"] for r in rs)
        sup = statistics.mean(r["accounting"]["tokens_supervised"] for r in rs)
        whole = [r for r in rs if not resumed(r)]  # a resumed run's clocks restart at the resume
        resumed_runs += len(rs) - len(whole)
        work = statistics.mean(r["accounting"]["sampling_seconds"] + r["accounting"]["training_seconds"]
                               for r in whole) if whole else float("nan")
        total_wall += sum(r["wall_seconds"] for r in rs)
        mark = "" if len(whole) == len(rs) else f" ({len(whole)})"
        ratio = lambda x, y: f"{x / y:.1%}" if y == y else "–"  # noqa: E731  (no RFT / SFT row: no ratio)
        cells += [f"{sampled:,.0f}", f"{sup:,.0f}", ratio(sampled, rft_sampled), ratio(sup, sft_sup),
                  (f"{work:.0f}" if whole else "–") + mark]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "The decision rule of docs/experiments.md §1 applied to each interval, in this order: helps "
              "(above +1), hurts (below -1), no effect (within ±1.5), else inconclusive; on the seed-aware "
              "interval a row of one seed is not assessable (no verdict about a method from one training run).",
              "", "| method | greedy, pre-registered | greedy, seed-aware |" +
              (" sampled, pre-registered | sampled, seed-aware |" if sampled_eval else ""),
              "|---|---|---|" + ("---|---|" if sampled_eval else ""), *verdicts, "",
              (f"Where the two analyses differ (pre-registered → seed-aware), {len(changed)} of "
               f"{len(verdicts) * (2 if sampled_eval else 1)} verdicts: " + "; ".join(changed) + "."
               if changed else "The two analyses give the same verdict everywhere.")]
    lines += ["", "Each seed on its own: the paired change against the base model in points, by seed (the spread "
              "the seed-aware interval accounts for), and the evaluation during training (the first 100 held-out "
              "questions; greedy accuracy in % at the last checkpoint, mean over seeds, and the lowest and highest "
              "of any checkpoint of any seed).", "",
              "| method | Δ greedy by seed | Δ sampled by seed | during training: end (lowest-highest) |",
              "|---|---|---|---|"]
    for name, rs in results.items():
        by_seed = lambda sampled: ", ".join(  # noqa: E731
            f"{r['_seed']}: {pct(d, True)}" for r, d in zip(rs, differences(rs, sampled).mean(1)))
        curves = [r["_summary"].get("curve") or [] for r in rs]
        during = "–" if not all(curves) else (
            f"{pct(statistics.mean(c[-1][1] for c in curves))} "
            f"({pct(min(a for c in curves for _, a in c))}-{pct(max(a for c in curves for _, a in c))})")
        lines.append(f"| {name} | {by_seed(False)} | {by_seed(True) if sampled_eval else '–'} | {during} |")
    lines += ["", "What the tuned models do under the plain prompt (greedy answers; mean over seeds): mean length "
              "in tokens, the share with no extractable answer, the share that ends after its first line.", "",
              "| method | mean tokens | no answer | one line only |", "|---|---|---|---|",
              f"| base | {b0['base']['mean_tokens']:.1f} | {pct(b0['base']['no_answer_rate'])}% | "
              f"{pct(b0['base'].get('one_line_rate', float('nan')))}% |"]
    for name, rs in results.items():
        mean = lambda k: statistics.mean(r["tuned"].get(k, float("nan")) for r in rs)  # noqa: E731
        lines.append(f"| {name} | {mean('mean_tokens'):.1f} | {pct(mean('no_answer_rate'))}% | "
                     f"{pct(mean('one_line_rate'))}% |")
    return "\n".join(lines + [""] + notes(results, rft, rft_sampled, sft_sup, resumed_runs, total_wall))


def notes(results, rft, rft_sampled, sft_sup, resumed_runs, total_wall):
    out = []
    if "UPFT + voting (N=8)" in results:
        agree = statistics.mean(r["accounting"]["mean_prefix_agreement"] for r in results["UPFT + voting (N=8)"])
        out.append(f"Mean agreement of the winning 8-sample prefix: {agree:.1%}.")
    if "majority vote (16 samples)" in results:
        vs = results["majority vote (16 samples)"]
        share = statistics.mean(r["accounting"]["mean_vote_share"] for r in vs)
        drop = statistics.mean(r["accounting"]["questions_dropped_no_answer"] for r in vs)
        out.append(f"Majority vote: mean vote share of the pseudo-label {share:.1%}; {drop:.1f} questions "
                   f"per run dropped (no sample with an answer).")
    if rft:
        drop = statistics.mean(r["accounting"]["questions_dropped_no_correct_sample"] for r in rft)
        out.append(f"RFT: {drop:.1f} questions per run dropped (no correct sample among 16).")
    if "UPFT (N=1)" in results and rft and "SFT" in results:
        upft = results["UPFT (N=1)"]
        ratio_s = statistics.mean(r["accounting"]["tokens_sampled"] for r in upft) / rft_sampled
        ratio_t = statistics.mean(r["accounting"]["tokens_supervised"] for r in upft) / sft_sup
        out.append(f"UPFT (N=1) sampled tokens / RFT's: {ratio_s:.2%} (target ≤ 2%); "
                   f"supervised tokens / SFT's: {ratio_t:.1%} (target ≤ 30%).")
    runs = sum(len(rs) for rs in results.values())
    if resumed_runs:
        were = "s were" if resumed_runs > 1 else " was"
        out.append(f"{resumed_runs} run{were} interrupted and resumed (`--resume`, which reuses the samples "
                   f"and the last checkpoint and changes no number); their clocks restarted at the resume, so "
                   f"the time column averages the other runs only, their count in parentheses.")
    out.append(f"Sampling + training: without the evaluations. The {runs} runs took "
               f"{'at least ' if resumed_runs else ''}{total_wall / 60:.0f} min of wall time in all on this "
               f"machine (2 CPU cores shared with other jobs; each run evaluates its tuned model, and during "
               f"training 100 held-out questions every {EVAL_EVERY} steps; the base evaluation ran once"
               f"{'; resumed runs counted from their resume' if resumed_runs else ''}).")
    return out


if __name__ == "__main__":
    main()
