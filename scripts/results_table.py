"""Regenerate the README's toy-world results table: base, SFT, RFT, UPFT (N=1), UPFT with voting (N=8),
and a temperature-1 UPFT control (docs/method.md §2.1: sampling at T=1 without truncation should teach nothing
in expectation), over several seeds, with the token accounting and wall time of each run.

    python scripts/results_table.py                 # 3 seeds, writes runs/table/ and updates README.md
    python scripts/results_table.py --seeds 0 --no-readme

Every run is a plain `train.py` invocation (shown in the output), so any cell can be reproduced alone.
Accuracy: greedy, on the toy world's held-out questions; mean over seeds with a 95% t-interval.
"""
import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = {  # name -> train.py flags
    "SFT": ["--method", "sft"],
    "RFT (16 samples)": ["--method", "rft", "--num-samples", "16"],
    "UPFT (N=1)": ["--method", "upft"],
    "UPFT + voting (N=8)": ["--method", "upft", "--num-samples", "8"],
    "UPFT control (T=1, no top-p)": ["--method", "upft", "--temperature", "1.0", "--top-p", "1.0"],
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--prefix-len", type=int, default=8)
    ap.add_argument("--out", default=str(ROOT / "runs" / "table"))
    ap.add_argument("--no-readme", action="store_true")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="flags passed to every train.py run")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, flags in METHODS.items():
        for seed in args.seeds:
            run_dir = out / f"{name.split()[0].lower()}{'-vote' if 'voting' in name else ''}" \
                            f"{'-t1' if 'control' in name else ''}-s{seed}"
            res_file = run_dir / "results.json"
            if not res_file.exists():  # finished runs are reused: the script can be restarted
                cmd = [sys.executable, str(ROOT / "train.py"), "--prefix-len", str(args.prefix_len),
                       "--seed", str(seed), "--out", str(run_dir), *flags, *args.extra]
                if Path(f"{run_dir}.partial").exists():  # an interrupted run: continue it
                    cmd.append("--resume")
                print("$", " ".join(cmd[1:]), flush=True)
                t = time.time()
                subprocess.run(cmd, check=True, cwd=ROOT)
                print(f"  {time.time() - t:.0f}s", flush=True)
            results.setdefault(name, []).append(json.loads(res_file.read_text()))

    first = next(iter(results.values()))
    base = [r["base"]["accuracy"] for r in first]
    rft_sampled = statistics.mean(r["accounting"]["tokens_sampled"] for r in results["RFT (16 samples)"])
    sft_sup = statistics.mean(r["accounting"]["tokens_supervised"] for r in results["SFT"])
    n_eval = first[0]["base"]["questions"]
    lines = [f"Toy world, {len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}), L = {args.prefix_len}, "
             f"p = 0.1, {first[0]['accounting']['questions']} training questions, {n_eval} held-out "
             f"questions; greedy accuracy, mean ± 95% t-interval over seeds.", "",
             "| method | accuracy (%) | Δ vs base (pts) | tokens sampled | tokens supervised | "
             "sampled / RFT | supervised / SFT | wall time (s) |",
             "|---|---|---|---|---|---|---|---|",
             f"| base | {fmt(base)} | – | – | – | – | – | – |"]
    for name, rs in results.items():
        acc = [r["tuned"]["accuracy"] for r in rs]
        delta = [a - b for a, b in zip(acc, base)]
        sampled = statistics.mean(r["accounting"]["tokens_sampled"] for r in rs)
        sup = statistics.mean(r["accounting"]["tokens_supervised"] for r in rs)
        wall = statistics.mean(r["wall_seconds"] for r in rs)
        lines.append(f"| {name} | {fmt(acc)} | {fmt(delta)} | {sampled:,.0f} | {sup:,.0f} | "
                     f"{sampled / rft_sampled:.1%} | {sup / sft_sup:.1%} | {wall:.0f} |")
    vote = results.get("UPFT + voting (N=8)")
    if vote:
        agree = statistics.mean(r["accounting"].get("mean_prefix_agreement", float("nan")) for r in vote)
        lines += ["", f"Mean agreement of the winning 8-sample prefix: {agree:.1%}."]
    upft = results["UPFT (N=1)"]
    ratio_s = statistics.mean(r["accounting"]["tokens_sampled"] for r in upft) / rft_sampled
    ratio_t = statistics.mean(r["accounting"]["tokens_supervised"] for r in upft) / sft_sup
    lines += [f"UPFT (N=1) sampled tokens / RFT's: {ratio_s:.2%} (target ≤ 2%); "
              f"supervised tokens / SFT's: {ratio_t:.1%} (target ≤ 30%)."]
    table = "\n".join(lines)
    print("\n" + table)
    (out / "table.md").write_text(table + "\n")
    if not args.no_readme:
        readme = ROOT / "README.md"
        text = readme.read_text()
        start, end = "<!-- results:start -->", "<!-- results:end -->"
        if start in text and end in text:
            text = text[:text.index(start) + len(start)] + "\n" + table + "\n" + text[text.index(end):]
            readme.write_text(text)
            print(f"updated {readme}")


if __name__ == "__main__":
    main()
