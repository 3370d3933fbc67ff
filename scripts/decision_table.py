"""The decision worlds' tables (docs/experiments.md §2), made from the committed run summaries alone.

    python scripts/decision_table.py             # print both worlds' tables and the predictions' scores
    python scripts/decision_table.py --write     # ... and write them into docs/results.md (between markers)

Per world: greedy and sampled accuracy with the paired change against the base model, the careful-opener
share of the sampled answers (4 per question) before -> after with its paired change, and accuracy
conditional on each opener; then P1-P7 of §2 scored by their rules. Every interval is the seed-aware 95%
interval (paired.py, docs/method.md §6.1). Rows whose seeds have not all finished show which they have.
"""
import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
import paired  # noqa: E402
import results_table as rt  # noqa: E402

WORLDS = {"decision": ROOT / "results" / "toy-v5-decision", "mirror": ROOT / "results" / "toy-v5-mirror"}
ARMS = ["UPFT (N=1)", "UPFT control (T=1, no top-p)", "UPFT + voting (N=8)", "UPFT, no instruction and no EOS", "SFT"]
MARKERS = ("<!-- decision:start -->", "<!-- decision:end -->")
README_MARKERS = ("<!-- control:start -->", "<!-- control:end -->")  # the README's positive-control rows


def careful_share(forms):
    """Per question, the share of its answers that open with the careful marker (forms: rt._forms)."""
    return np.array([sum(c in "cC" for c in f) / len(f) for f in forms])


def mean_share(runs, tag):
    """The careful share of the sampled answers of the base model ("base": the first run's) or of the tuned
    models ("tuned": mean over the runs' seeds)."""
    runs = runs[:1] if tag == "base" else runs
    return statistics.mean(careful_share(r["_summary"]["sampled"]["forms"][tag]).mean() for r in runs)


def share_differences(runs):
    """d[seed, question] = careful share of the tuned model's sampled answers minus the base model's."""
    base = careful_share(runs[0]["_summary"]["sampled"]["forms"]["base"])
    return np.stack([careful_share(r["_summary"]["sampled"]["forms"]["tuned"]) - base for r in runs])


def greedy_careful(run, tag):
    """Share of a run's greedy answers (base or tuned) that open with the careful marker."""
    forms = run["_summary"]["greedy"]["forms"][tag]
    return sum(c in "cC" for c in forms) / len(forms)


def conditional(forms_lists):
    """{opener: (accuracy of the answers with that opener, their count)} over all answers given."""
    letters = "".join("".join(f) for f in forms_lists)
    out = {}
    for form, c in (("careful", "c"), ("hasty", "h")):
        n = letters.count(c) + letters.count(c.upper())
        out[form] = (letters.count(c.upper()) / n if n else float("nan"), n)
    return out


def score(iv, predicted):
    """A prediction's verdict: the interval's category (paired.verdict, across seeds) against the predicted
    one ("helps" = up, "hurts" = down, "no effect")."""
    got = paired.verdict(iv)
    if got in ("inconclusive", "not assessable"):
        return got if got == "inconclusive" else "not assessable"
    return "confirmed" if got == predicted else "refuted"


def pp(x):
    return f"{100 * x:.1f}"


def world_table(name, results):
    rows = [a for a in ARMS if a in results]
    b0 = results[rows[0]][0]
    base_forms = b0["_summary"]["sampled"]["forms"]["base"]
    cb = conditional(base_forms)
    head = ("| arm | greedy | Δ greedy | greedy careful | sampled | Δ sampled | careful share | Δ careful share | "
            "Δshare × base gap | accuracy, careful answers | accuracy, hasty answers |")
    lines = [head, "|" + "---|" * (head.count("|") - 1),
             f"| base | {pp(b0['base']['accuracy'])} | – | {pp(greedy_careful(b0, 'base'))} | "
             f"{pp(b0['base_sampled']['accuracy'])} | – | "
             f"{pp(careful_share(base_forms).mean())} | – | – | {pp(cb['careful'][0])} ({cb['careful'][1]:,}) | "
             f"{pp(cb['hasty'][0])} ({cb['hasty'][1]:,}) |"]
    for arm in rows:
        rs = results[arm]
        tuned_forms = [f for r in rs for f in r["_summary"]["sampled"]["forms"]["tuned"]]
        ct = conditional(tuned_forms)
        share_after = mean_share(rs, "tuned")
        share = paired.seed_question_interval(share_differences(rs))
        lines.append(
            f"| {arm}{rt.seeds_named(rs, 3)} | {pp(statistics.mean(r['tuned']['accuracy'] for r in rs))} | "
            f"{rt.seed_interval(rs, False).cell()} | {pp(statistics.mean(greedy_careful(r, 'tuned') for r in rs))} | "
            f"{pp(statistics.mean(r['tuned_sampled']['accuracy'] for r in rs))} | "
            f"{rt.seed_interval(rs, True).cell()} | {pp(share_after)} | "
            f"{share.cell()} | {100 * share.delta * (cb['careful'][0] - cb['hasty'][0]):+.1f} | "
            f"{pp(ct['careful'][0])} ({ct['careful'][1]:,}) | {pp(ct['hasty'][0])} ({ct['hasty'][1]:,}) |")
    return "\n".join(lines), cb


def predictions(name, results, cb):
    """P1-P7 of docs/experiments.md §2 for one world: (prediction, measured interval, verdict) rows."""
    up = "helps" if name == "decision" else "hurts"  # the majority opener's direction for the careful share
    out = []

    def add(label, iv, predicted, note=""):
        out.append(f"| {label} | {iv.cell()}{note} | {predicted.replace('helps', 'up').replace('hurts', 'down')} "
                   f"| {score(iv, predicted)} |")
    if "UPFT (N=1)" in results:
        rs = results["UPFT (N=1)"]
        share = paired.seed_question_interval(share_differences(rs))
        add("P1 UPFT (N=1): careful share", share, up)
        size = share.delta * (cb["careful"][0] - cb["hasty"][0])
        add("P2 UPFT (N=1): sampled accuracy", rt.seed_interval(rs, True), up,
            f" (Δshare × base gap = {100 * size:+.1f})")
        add("P5 UPFT (N=1): greedy accuracy", rt.seed_interval(rs, False), "no effect")
    if "UPFT (N=1)" in results and "UPFT + voting (N=8)" in results:
        one = {r["_seed"]: r for r in results["UPFT (N=1)"]}
        vote = [r for r in results["UPFT + voting (N=8)"] if r["_seed"] in one]
        d = np.stack([careful_share(r["_summary"]["sampled"]["forms"]["tuned"]) -
                      careful_share(one[r["_seed"]]["_summary"]["sampled"]["forms"]["tuned"]) for r in vote])
        add("P3 voting minus N=1: careful share", paired.seed_question_interval(d), up)
    for label, arm, predicted in (("P4 T = 1 control: careful share", "UPFT control (T=1, no top-p)", "no effect"),
                                  ("P6 no instruction, no EOS: careful share", "UPFT, no instruction and no EOS", up),
                                  ("P7 SFT: careful share", "SFT", up)):
        if arm in results:
            add(label, paired.seed_question_interval(share_differences(results[arm])), predicted)
    return out


def report():
    parts = []
    for name, folder in WORLDS.items():
        results = rt.load(folder, [0, 1, 2], rows=ARMS, partial=True)
        if not results:
            parts.append(f"### The {name} world\n\nNo finished runs yet (results/{folder.name}).")
            continue
        table, cb = world_table(name, results)
        b0 = next(iter(results.values()))[0]
        parts.append(f"### The {name} world\n\n{b0['base']['questions']:,} held-out questions; accuracy and "
                     f"shares in %, mean over seeds (a row names its seeds when not all 3 finished); Δ = the "
                     f"paired change against the base model in points [seed-aware 95% interval]; careful share = "
                     f"the share of the 4 sampled answers per question that open with the careful marker (greedy careful: the "
                     f"share of greedy answers that do); Δshare × base gap = the change of sampled accuracy expected "
                     f"if only the share moved (the base model's careful minus hasty accuracy, from its sampled "
                     f"answers, times Δ careful share); the "
                     f"conditional accuracies count sampled answers (their number in parentheses).\n\n{table}\n\n"
                     "| prediction (§2) | measured Δ, points [95%] | predicted | verdict |\n|---|---|---|---|\n"
                     + "\n".join(predictions(name, results, cb)))
    return "\n\n".join(parts)


def readme_rows():
    """The README's positive-control lines, one per world: UPFT (N=1)'s careful share and accuracy, base ->
    tuned, with the seed-aware intervals and P1/P2's verdicts; None until both worlds have a UPFT run."""
    worlds = {name: rt.load(folder, [0, 1, 2], rows=["UPFT (N=1)"], partial=True).get("UPFT (N=1)")
              for name, folder in WORLDS.items()}
    if not all(worlds.values()):
        return None
    head = ("| UPFT (N=1) in | careful share, base → tuned | Δ careful share | sampled, base → tuned | Δ sampled "
            "| Δ greedy |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, rs in worlds.items():
        up = "helps" if name == "decision" else "hurts"
        share = paired.seed_question_interval(share_differences(rs))
        sampled = rt.seed_interval(rs, True)
        before, after = mean_share(rs, "base"), mean_share(rs, "tuned")
        label = {"decision": "the decision world (careful opener preferred)",
                 "mirror": "its mirror (hasty opener preferred)"}[name]
        lines.append(f"| {label}{rt.seeds_named(rs, 3)} | {pp(before)} → {pp(after)} | {share.cell()} "
                     f"(P1: {score(share, up)}) | {pp(rs[0]['base_sampled']['accuracy'])} → "
                     f"{pp(statistics.mean(r['tuned_sampled']['accuracy'] for r in rs))} | {sampled.cell()} "
                     f"(P2: {score(sampled, up)}) | {rt.seed_interval(rs, False).cell()} |")
    q = worlds["decision"][0]["base"]["questions"]
    lines += ["", f"The positive control (docs/experiments.md §2): {q:,} held-out questions per world, 3 seeds "
              "unless a row names its seeds; shares and accuracy in %, sampled = 4 answers per question; Δ in "
              "points against each world's own base model, paired per question [seed-aware 95% interval]; "
              "P1 and P2 scored by the rules fixed before the runs. Every arm and prediction: "
              "[docs/results.md](docs/results.md#the-decision-worlds-the-positive-control-and-its-mirror)."]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="also write the tables into docs/results.md and the "
                    "positive-control rows into README.md")
    args = ap.parse_args(argv)
    text = report()
    print(text)
    if args.write:
        rt.write_readme(ROOT / "docs" / "results.md", text, *MARKERS)
        rows = readme_rows()
        if rows:
            print("\n" + rows)
            rt.write_readme(ROOT / "README.md", rows, *README_MARKERS)


if __name__ == "__main__":
    main()
