"""Regenerate the pictures of docs/results.md and docs/toy-world.md (PNG files under docs/) from the toy
world and the results table's runs.

    python scripts/figures.py                      # after python scripts/results_table.py
    python scripts/figures.py --reuse-fig2         # Fig. 2 drawn from the numbers of the last full run

  docs/fig2a_toy.png           prefix self-consistency on the toy (the paper's Fig. 2a; docs/method.md §1)
  docs/fig2b_toy.png           where errors occur on the toy (the paper's Fig. 2b)
  docs/accuracy_vs_step.png    greedy accuracy on 100 held-out questions during training, per method
                               (mean over seeds; the rise-then-fall reported for self-training, §7)
  docs/accuracy_vs_tokens.png  paired accuracy change vs tokens sampled (log scale), greedy and sampled, one
                               point per method with the table's 95% interval: the paper's cost claim (§3.2)
  docs/decision_worlds.png     the decision worlds (docs/experiments.md §2): careful-opener share vs sampled
                               accuracy, base -> each arm (--decision-only draws just this one)

The two Fig. 2 analyses are eval.py's functions with docs/toy-world.md's settings (100 questions x 16 samples;
60 questions x 8 samples x 8 rollouts; temperature 0.6, 256 new tokens; eval.py's other defaults), so
they give that document's numbers; these are also written to runs/figures/*.json. matplotlib is needed
here only (requirements-plots.txt).
"""
import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts OpenMP: docs/performance.md, "A busy machine"

import results_table as rt  # noqa: E402  (the rows, their run folders and the interval)

def seeds_text(xs):
    return f"{len(xs)} seed" + ("s" if len(xs) > 1 else "")


def pyplot():
    try:  # matplotlib is optional (requirements-plots.txt, not requirements.txt): only pictures need it
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("error: the pictures need matplotlib: python3 -m pip install -r requirements-plots.txt")
    return plt


def fig2(work):
    """The paper's two prefix analyses (Fig. 2a, 2b) on the toy world's held-out questions."""
    import toy
    from data import Tokenizer, load_rows
    from launch.analyses import error_position, prefix_consistency
    from model import Transformer
    world = toy.load_world()
    tok = Tokenizer.from_pretrained(world["model_dir"])
    model = Transformer.from_pretrained(world["model_dir"])
    rows = load_rows(world["dir"] / "test.jsonl")
    common = dict(max_new_tokens=256, temperature=0.6, top_p=1.0, batch_size=64, seed=0)  # eval.py's defaults
    a = prefix_consistency(model, tok, rows[:100], 16, **common)
    b = error_position(model, tok, rows[:60], 8, 8, **common)
    for name, r in (("fig2a_toy", a), ("fig2b_toy", b)):
        (work / f"{name}.json").write_text(json.dumps(r, indent=1))


def fig2_draw(plt, docs, work):
    a, b = (json.loads((work / f"{name}.json").read_text()) for name in ("fig2a_toy", "fig2b_toy"))

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(a["prefix_len"], a["avg_samples_per_prefix"], marker="o", color="tab:red")
    ax.axhline(16, color="0.7", lw=0.8, ls="--")
    ax.set(xscale="log", xlabel="prefix length t (tokens)", ylabel="samples sharing the prefix (of 16)",
           title=f"Prefix self-consistency on the toy (Fig. 2a)\n{a['questions']} held-out questions, "
                 "16 samples each, T = 0.6", ylim=(0, 17))
    ax.set_xticks(a["prefix_len"], [str(t) for t in a["prefix_len"]])
    fig.tight_layout()
    fig.savefig(docs / "fig2a_toy.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    for kind, color in (("correct", "tab:green"), ("incorrect", "tab:red")):
        r = b[kind]
        x = [max(t, 0.5) for t in r["prefix_len"]]  # t = 0 (no prefix) drawn at 0.5 on the log axis
        ax.plot(x, r["success_rate"], marker="o", color=color, label=f"from {'an' if kind[0] == 'i' else 'a'} "
                f"{kind} sample")
        for t, y, n in zip(x, r["success_rate"], r["trajectories"]):
            if n < b["questions_used"]:  # only the longer samples reach this t
                ax.annotate(f"n={n}", (t, y), xytext=(-28, 4), textcoords="offset points", fontsize=7, color=color)
    ts = b["correct"]["prefix_len"]
    ax.set_xscale("log")
    ax.set_xticks([max(t, 0.5) for t in ts], [str(t) for t in ts])
    ax.set(xlabel="prefix length t (tokens)", ylabel="rollouts reaching the right answer", ylim=(0, 1),
           title=f"Where errors occur on the toy (Fig. 2b)\n{b['questions_used']} questions with a correct and "
                 f"an incorrect sample,\n{b['rollouts']} rollouts per prefix, T = 0.6")
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(docs / "fig2b_toy.png", dpi=120)
    plt.close(fig)


def curves(results, name):
    """Mean over the row's seeds of the during-training evaluations, point by point (x: the mean step)."""
    per_seed = [r["_summary"]["curve"] for r in results[name]]
    n = min(len(p) for p in per_seed)
    return ([statistics.mean(p[i][0] for p in per_seed) for i in range(n)],
            [100 * statistics.mean(p[i][1] for p in per_seed) for i in range(n)])


def accuracy_vs_step(plt, results, seeds, docs):
    groups = [("Baselines and UPFT", [n for n in results if rt.ROWS[n][2] != "control"]),
              ("UPFT and the controls that take it apart", [n for n in results if n == "UPFT (N=1)"] +
               [n for n in results if rt.ROWS[n][2] == "control"])]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.4), sharey=True)
    colors = [c for i, c in enumerate(plt.get_cmap("tab10").colors) if i != 3]  # red is UPFT's
    for ax, (title, names) in zip(axes, groups):
        for k, name in enumerate(n for n in names if n != "UPFT (N=1)"):
            x, y = curves(results, name)
            ax.plot(x, y, marker="o", ms=3.5, lw=1.4, color=colors[k % len(colors)], label=name + rt.seeds_named(results[name], len(seeds)))
        if "UPFT (N=1)" in names:
            x, y = curves(results, "UPFT (N=1)")
            ax.plot(x, y, marker="o", ms=4, lw=2.4, color="tab:red", label="UPFT (N=1)")
        ax.set(title=title, xlabel="optimizer step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    axes[0].set_ylabel("greedy accuracy, first 100 held-out questions (%)")
    fig.suptitle(f"Accuracy during training on the toy (mean over {seeds_text(seeds)}, or the seeds a row names; "
                 f"step 0 = the base model)",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(docs / "accuracy_vs_step.png", dpi=120)
    plt.close(fig)


def accuracy_vs_tokens(plt, results, docs):
    """Paired Δ vs base (greedy, and sampled when evaluated) against tokens sampled, with the table's
    seed-aware intervals (a row of one seed: its question-level interval)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter
    first = next(iter(results.values()))
    most = max(results.values(), key=len)  # rows with cut seeds name theirs in the legend
    kinds = [("greedy", False)] + ([("sampled", True)] if first[0].get("base_sampled") else [])
    fig, axes = plt.subplots(1, len(kinds), figsize=(7 * len(kinds) + 3, 5.2), sharey=True, squeeze=False)
    markers, cmap = "osD^v<>pPXh*d", plt.get_cmap("tab20")
    for ax, (label, sampled) in zip(axes[0], kinds):
        seen = []  # x of the points drawn so far: points at (nearly) the same cost are spread sideways
        for k, (name, rs) in enumerate(results.items()):
            iv = rt.seed_interval(rs, sampled)
            d, lo, hi = 100 * iv.delta, 100 * iv.low, 100 * iv.high
            x = statistics.mean(r["accounting"]["tokens_sampled"] for r in rs)
            near = sum(abs(x / s - 1) < 0.15 for s in seen)
            seen.append(x)
            ax.errorbar(x * 1.07 ** near, d, yerr=[[d - lo], [hi - d]], fmt=markers[k % len(markers)],
                        color="tab:red" if name == "UPFT (N=1)" else cmap(k % 20), capsize=3, ms=7,
                        label=f"{name}{rt.seeds_named(rs, len(most))}: {d:+.1f} [{lo:+.1f}, {hi:+.1f}]")
        ax.axhline(0, color="0.5", lw=0.8)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1e6:g}M" if v >= 1e6 else f"{v / 1e3:g}k"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set(xlabel="tokens sampled per run (log scale)", title=f"{label} accuracy")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2,
                  title=f"Δ {label} vs base (points) [95%]", title_fontsize=7)
    axes[0][0].set_ylabel("paired change vs base (points)")
    fig.suptitle(f"Accuracy change vs sampling cost on the toy ({seeds_text(most)}; 95% intervals: seed-aware, "
                 f"a row of one seed over its questions only)", fontsize=11)
    fig.tight_layout()
    fig.savefig(docs / "accuracy_vs_tokens.png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def decision_picture(plt, docs):
    """docs/decision_worlds.png: careful-opener share (x) vs sampled accuracy (y), base -> each arm (mean over
    its seeds) as arrows, the decision world and its mirror side by side (docs/experiments.md §2)."""
    import decision_table as dt
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2), sharey=True)
    colors = dict(zip(dt.ARMS, ["tab:red", "tab:gray", "tab:purple", "tab:orange", "tab:blue"]))
    drawn = False
    for ax, (name, folder) in zip(axes, dt.WORLDS.items()):
        results = rt.load(folder, [0, 1, 2], rows=dt.ARMS, partial=True)
        ax.set(title=f"the {name} world", xlabel="careful-opener share of sampled answers (%)")
        ax.grid(alpha=0.3)
        if not results:
            ax.text(0.5, 0.5, "no finished runs", transform=ax.transAxes, ha="center")
            continue
        drawn = True
        b0 = next(iter(results.values()))[0]
        x0 = 100 * dt.mean_share([b0], "base")
        y0 = 100 * b0["base_sampled"]["accuracy"]
        ax.plot([x0], [y0], "ko", ms=7, label="base")
        points = {arm: (100 * dt.mean_share(rs, "tuned"),
                        100 * statistics.mean(r["tuned_sampled"]["accuracy"] for r in rs)) for arm, rs in results.items()}
        cb = dt.conditional(b0["_summary"]["sampled"]["forms"]["base"])  # the base model's accuracy per opener
        gap = cb["careful"][0] - cb["hasty"][0]  # accuracy = base + Δshare x gap if only the share moved (P2)
        xs = [min(x0, *(x for x, _ in points.values())) - 1, max(x0, *(x for x, _ in points.values())) + 1]
        ax.plot(xs, [y0 + (x - x0) * gap for x in xs], "k--", lw=0.8, alpha=0.5,
                label=f"only the share moves (slope: base careful − hasty accuracy, {100 * gap:.1f} points)")
        for arm, (x, y) in points.items():
            ax.annotate("", (x, y), (x0, y0), arrowprops=dict(arrowstyle="->", color=colors[arm], lw=1.8))
            ax.plot([x], [y], "o", color=colors[arm], ms=6, label=f"{arm}{rt.seeds_named(results[arm], 3)}")
        ax.legend(fontsize=7.5, loc="best")
    axes[0].set_ylabel("sampled accuracy (%, 4 answers per question)")
    fig.suptitle("Where UPFT moves the opening: base -> tuned, mean over seeds (1,000 held-out questions)", fontsize=11)
    fig.tight_layout()
    fig.savefig(docs / "decision_worlds.png", dpi=120)
    plt.close(fig)
    return drawn


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--results", default=str(ROOT / "results" / "toy-v5"), help="the results table's run "
                    "summaries (results_table.py --results)")
    ap.add_argument("--docs", default=str(ROOT / "docs"))
    ap.add_argument("--reuse-fig2", action="store_true", help="draw Fig. 2 from runs/figures/*.json (written "
                    "by an earlier run of this script) instead of rerunning the two analyses")
    ap.add_argument("--decision-only", action="store_true", help="draw only the decision worlds' picture")
    args = ap.parse_args()
    plt = pyplot()
    if args.decision_only:
        decision_picture(plt, Path(args.docs))
        print(f"wrote {Path(args.docs) / 'decision_worlds.png'}")
        return
    t0 = time.time()
    docs, work = Path(args.docs), ROOT / "runs" / "figures"
    work.mkdir(parents=True, exist_ok=True)
    if not args.reuse_fig2:
        fig2(work)
    fig2_draw(plt, docs, work)
    results = rt.load(args.results, args.seeds, rows=rt.ROWS, partial=True)  # a cut seed leaves its row in
    if results:
        accuracy_vs_step(plt, results, args.seeds, docs)
        accuracy_vs_tokens(plt, results, docs)
    else:
        print(f"no finished table runs in {args.results}: only the Fig. 2 pictures were drawn")
    print(f"wrote the pictures to {docs} in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
