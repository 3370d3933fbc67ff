"""Does a toy world's base model read UPFT's prefix instruction (and, in a decision world, does its opening
decide)? The gates of the toy worlds, in one command.

    python scripts/gates.py                          # the shipped world (assets/toy), first 500 test questions
    python scripts/gates.py --world runs/pilot --limit 500 --out runs/pilot/gates.json

UPFT trains its prefix examples under the paper's instruction (upft.PREFIX_INSTRUCTION, appended to the
question: docs/method.md §3.4) on openings sampled from the PLAIN question (§3.2). That only measures
what the paper measured if the base model reads the instruction as English: its own plain opening must
stay likely under it. On the first --limit held-out questions (the world's test.jsonl):

  gate "opening"   the base model's own opening (its first 8 tokens, sampled from the plain prompt at the
                   checkpoint's generation_config temperature / top-p, seed 0) costs <= 0.5 nats/token
                   (mean over all opening tokens) under chat_prompt(question + PREFIX_INSTRUCTION);
                   the same tokens' cost under the plain prompt is printed beside it;
  gate "accuracy"  plain-prompt greedy accuracy in [0.45, 0.75] (room to gain and to lose).

The decision worlds (toy.py: "decision", "mirror"; docs/experiments.md §2) add three gates:

  gate "gap"       greedy accuracy with the careful marker prefilled minus with the hasty one >= 10 points;
  gate "share"     the base model's sampled share of the careful opener (first 8 tokens at the generation
                   config's temperature / top-p, seed 0) in [0.60, 0.75] (decision) or [0.25, 0.40]
                   (mirror), under the plain prompt and under the UPFT instruction (two gates).

Reported, not gated: what the base model does under the instruction (greedy): mean response length
in tokens, the share of responses that stop after their first line and after their first step (the
toy's first step is the opening line and one operation: toy.target_of), the share whose first line is
the plain greedy response's first line, and the accuracy. Prints a table, writes the figures as JSON
(default: gates.json in the world folder), exits 0 when every gate holds, 1 otherwise.
"""
import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import torch  # noqa: E402

import toy  # noqa: E402
from data import Tokenizer, chat_prompt, write_json  # noqa: E402
from grader import extract_answer, is_equiv  # noqa: E402
from model import Transformer, generate  # noqa: E402
from upft import PREFIX_INSTRUCTION, make_example  # noqa: E402

OPENING_TOKENS = 8      # L = 8, the toy's default prefix length
MAX_OPENING_NLL = 0.5   # nats per token
ACCURACY_RANGE = (0.45, 0.75)
MIN_GAP = 0.10          # decision worlds: careful minus hasty, forced-opener greedy accuracy
SHARE_RANGE = {"decision": (0.60, 0.75), "mirror": (0.25, 0.40)}  # sampled share of the careful opener


def greedy(model, tok, rows, instruction, max_new_tokens, batch_size):
    """Greedy responses under chat_prompt(question + instruction): token-id lists and correctness."""
    prompts = [chat_prompt(tok, r["question"], instruction) for r in rows]
    outs = generate(model, prompts, max_new_tokens, stop_ids=tok.eos_ids, batch_size=batch_size)
    texts = [tok.decode(o, skip_special_tokens=True) for o in outs]
    correct = [is_equiv(extract_answer(t), r["answer"]) for t, r in zip(texts, rows)]
    return outs, texts, correct


@torch.inference_mode()
def opening_nll(model, tok, questions, openings, instruction, batch_size):
    """Mean negative log-likelihood per token of `openings` (token-id lists) after chat_prompt(question +
    instruction): the sequences are built as UPFT's prefix examples are (make_example, without EOS)."""
    total, count = 0.0, 0
    for i in range(0, len(questions), batch_size):
        exs = [make_example(tok, q, o, "prefix", len(o), instruction=instruction, eos=False)
               for q, o in zip(questions[i:i + batch_size], openings[i:i + batch_size])]
        T = max(len(e["input_ids"]) for e in exs)
        ids = torch.full((len(exs), T), tok.pad_id, dtype=torch.long)
        labels = torch.full((len(exs), T), -100, dtype=torch.long)
        for b, e in enumerate(exs):  # right padding: pads come after every real token
            ids[b, :len(e["input_ids"])] = torch.tensor(e["input_ids"])
            labels[b, :len(e["labels"])] = torch.tensor(e["labels"])
        logp = model(ids).log_softmax(-1)[:, :-1]          # position t predicts token t + 1
        target = labels[:, 1:]
        mask = target != -100
        picked = logp.gather(-1, target.clamp(min=0)[..., None])[..., 0]
        total -= float(picked[mask].sum())
        count += int(mask.sum())
    return total / max(count, 1)


def gate_figures(model, tok, rows, seed=0, max_new_tokens=256, batch_size=128):
    """Every figure of the gates for `rows` ({"question", "answer"}): a dict, "gates" holding the verdicts."""
    gen = tok.generation_config
    temperature, top_p, top_k = gen.get("temperature", 1.0), gen.get("top_p", 1.0), gen.get("top_k", 0)
    questions = [r["question"] for r in rows]
    # 1. the model's own openings from the plain prompt, as UPFT samples them (§3.2)
    openings = generate(model, [chat_prompt(tok, q) for q in questions], OPENING_TOKENS, temperature=temperature,
                        top_p=top_p, top_k=top_k, stop_ids=tok.eos_ids, seed=seed, batch_size=batch_size)
    nll_plain = opening_nll(model, tok, questions, openings, "", batch_size)
    nll_instr = opening_nll(model, tok, questions, openings, PREFIX_INSTRUCTION, batch_size)
    # 2. greedy, plain prompt and under the instruction
    _, plain_texts, plain_ok = greedy(model, tok, rows, "", max_new_tokens, batch_size)
    outs, texts, instr_ok = greedy(model, tok, rows, PREFIX_INSTRUCTION, max_new_tokens, batch_size)
    n = max(len(rows), 1)
    first_line = [t.strip().split("\n")[0] for t in texts]
    # a decision world's marker line (toy.opener_of) comes before the first step: not counted as a line here
    lines = [len(t.strip().split("\n")) - (toy.opener_of(t) is not None) if len(o) < max_new_tokens else None
             for o, t in zip(outs, texts)]
    acc = sum(plain_ok) / n
    return {
        "questions": len(rows),
        "opening": {"tokens": OPENING_TOKENS, "seed": seed, "temperature": temperature, "top_p": top_p,
                    "top_k": top_k, "nll_plain": nll_plain, "nll_instructed": nll_instr},
        "plain": {"accuracy": acc},
        "instructed": {
            "accuracy": sum(instr_ok) / n,
            "mean_tokens": sum(len(o) for o in outs) / n,
            "stops_after_first_line": lines.count(1) / n,
            "stops_after_first_step": lines.count(2) / n,
            "first_line_as_plain": sum(a == p.strip().split("\n")[0] for a, p in zip(first_line, plain_texts)) / n,
            "no_answer": sum(extract_answer(t) is None for t in texts) / n,
        },
        "gates": {
            "opening": {"value": nll_instr, "max": MAX_OPENING_NLL, "ok": nll_instr <= MAX_OPENING_NLL},
            "accuracy": {"value": acc, "range": list(ACCURACY_RANGE),
                         "ok": ACCURACY_RANGE[0] <= acc <= ACCURACY_RANGE[1]},
        },
    }


def opener_share(model, tok, rows, instruction, seed=0, batch_size=128):
    """Share of the careful opener among the base model's sampled openings (OPENING_TOKENS tokens at the
    generation config's temperature / top-p), and the share with neither marker."""
    gen = tok.generation_config
    outs = generate(model, [chat_prompt(tok, r["question"], instruction) for r in rows], OPENING_TOKENS,
                    temperature=gen.get("temperature", 1.0), top_p=gen.get("top_p", 1.0), top_k=gen.get("top_k", 0),
                    stop_ids=tok.eos_ids, seed=seed, batch_size=batch_size)
    forms = [toy.opener_of(tok.decode(o, skip_special_tokens=True)) for o in outs]
    n = max(len(rows), 1)
    return {"careful": forms.count("careful") / n, "hasty": forms.count("hasty") / n, "neither": forms.count(None) / n}


def forced_accuracy(model, tok, rows, form, max_new_tokens=256, batch_size=128):
    """Plain-prompt greedy accuracy with the answer's first line prefilled with `form`'s marker."""
    head = tok.encode(toy.MARKERS[form] + "\n")
    outs = generate(model, [chat_prompt(tok, r["question"]) + head for r in rows], max_new_tokens,
                    stop_ids=tok.eos_ids, batch_size=batch_size)
    return sum(is_equiv(extract_answer(tok.decode(o, skip_special_tokens=True)), r["answer"])
               for o, r in zip(outs, rows)) / max(len(rows), 1)


def decision_figures(model, tok, rows, world, seed=0, max_new_tokens=256, batch_size=128):
    """The decision worlds' figures and gates (careful/hasty accuracy gap, the careful opener's share)."""
    acc = {form: forced_accuracy(model, tok, rows, form, max_new_tokens, batch_size) for form in toy.MARKERS}
    share = {"plain": opener_share(model, tok, rows, "", seed, batch_size),
             "instructed": opener_share(model, tok, rows, PREFIX_INSTRUCTION, seed, batch_size)}
    lo, hi = SHARE_RANGE[world]
    gates = {"gap": {"value": acc["careful"] - acc["hasty"], "min": MIN_GAP, "ok": acc["careful"] - acc["hasty"] >= MIN_GAP}}
    for where, sh in share.items():
        gates[f"share_{where}"] = {"value": sh["careful"], "range": [lo, hi], "ok": lo <= sh["careful"] <= hi}
    return {"forced_accuracy": acc, "careful_share": share, "gates": gates}


def report(f):
    o, i, g = f["opening"], f["instructed"], f["gates"]
    mark = {True: "holds", False: "FAILS"}
    lines = []
    if "decision" in f:
        d, dg = f["decision"], f["decision"]["gates"]
        lines = [f"gate gap       forced careful {d['forced_accuracy']['careful']:.1%} vs hasty "
                 f"{d['forced_accuracy']['hasty']:.1%} greedy: {dg['gap']['value'] * 100:+.1f} points "
                 f"(>= {MIN_GAP * 100:.0f}): {mark[dg['gap']['ok']]}"]
        for where in ("plain", "instructed"):
            gate, sh = dg[f"share_{where}"], d["careful_share"][where]
            lines.append(f"gate share     careful opener {sh['careful']:.1%} of sampled openings, {where} prompt "
                         f"({gate['range'][0]:.0%}-{gate['range'][1]:.0%}; hasty {sh['hasty']:.1%}, neither "
                         f"{sh['neither']:.1%}): {mark[gate['ok']]}")
    return "\n".join([
        f"{f['questions']} held-out questions", *lines,
        f"gate opening   {o['nll_instructed']:.3f} nats/token under the UPFT instruction (<= {MAX_OPENING_NLL}; "
        f"plain prompt {o['nll_plain']:.3f}): {mark[g['opening']['ok']]}",
        f"gate accuracy  {f['plain']['accuracy']:.1%} plain greedy ({ACCURACY_RANGE[0]:.0%}-{ACCURACY_RANGE[1]:.0%}): "
        f"{mark[g['accuracy']['ok']]}",
        f"reported       under the instruction (greedy): accuracy {i['accuracy']:.1%}, {i['mean_tokens']:.1f} tokens "
        f"on average, {i['stops_after_first_line']:.1%} stop after the first line, {i['stops_after_first_step']:.1%} "
        f"after the first step, {i['first_line_as_plain']:.1%} "
        f"open with the plain first line, {i['no_answer']:.1%} give no boxed answer",
    ])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", default=str(toy.WORLD_DIR), help="a built toy world (default: the shipped one)")
    ap.add_argument("--limit", type=int, default=500, help="the first K held-out questions")
    ap.add_argument("--seed", type=int, default=0, help="the seed of the sampled openings")
    ap.add_argument("--max-new-tokens", type=int, default=256, help="greedy budget (train.py's toy default)")
    ap.add_argument("--out", help="where the figures go (default: WORLD/gates.json)")
    args = ap.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    t0 = time.time()
    world = toy.load_world(args.world)
    model = Transformer.from_pretrained(world["model_dir"])
    tok = Tokenizer.from_pretrained(world["model_dir"])
    rows = world["test"][:args.limit]
    f = gate_figures(model, tok, rows, seed=args.seed, max_new_tokens=args.max_new_tokens)
    name = world["build"].get("world")
    if name in SHARE_RANGE:
        f["decision"] = decision_figures(model, tok, rows, name, seed=args.seed, max_new_tokens=args.max_new_tokens)
    f.update(world=str(args.world), version=world["build"]["version"], seconds=round(time.time() - t0, 1))
    print(report(f))
    write_json(Path(args.out) if args.out else Path(args.world) / "gates.json", f)
    gates = [*f["gates"].values(), *f.get("decision", {}).get("gates", {}).values()]
    return 0 if all(g["ok"] for g in gates) else 1


if __name__ == "__main__":
    sys.exit(main())
