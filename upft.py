"""Unsupervised Prefix Fine-Tuning, function by function (Ji et al. 2025, arXiv 2503.02875).

Read next to ../shared/docs/PAPER.md (section numbers below are that file's):
  split_questions   the random split of D into D_p (prefix) and D_f (full traces, fraction p)   §3.1, §3.5
  sample_rollouts   ONE sample per question from the plain question prompt; only L tokens are
                    decoded for D_p, full traces for D_f (the paper's cost accounting)            §3.2, §6.3
  prefix_vote       N prefixes per question, keep the most frequent (prefix self-consistency,
                    Fig. 2a, made usable; not in the paper: --num-samples 1 is the paper)          §1.2
  make_example      prefix example = prompt with the instruction + L tokens + EOS;
                    full example = plain prompt + whole trace + end-of-turn                        §3.3-3.7
  Eq. 8             max E_{D_p}[log p(r_<t | x')] + E_{D_f}[log p(r | x)]: the sum of both kinds of
                    examples under one masked cross-entropy (train.py)
Baselines in the same tool (§7): `sft` = one full self-generated trace per question, no filter;
`rft` = N full samples, keep one whose final answer matches the label (questions with none dropped).

Definitions: L = --prefix-len, in model tokens of the raw sampled response (no whitespace
normalisation: PAPER.md box, decision 1); p = --structure-ratio = fraction of FULL-trace questions.
"""
from __future__ import annotations

from collections import Counter

import torch

from data import UpftError

IGNORE = -100
# PAPER.md §3.4, exact text, leading space included; appended to the question inside the user turn,
# at training time, for prefix examples only (decision 3). Samples are always drawn without it.
PREFIX_INSTRUCTION = (" Please provide the initial step towards resolving the question. This step may serve"
                      " as a foundation but might not encompass the entire solution.")


def split_questions(n, p, seed):
    """Which questions get a full trace (D_f): a seeded random round(p * n) of them (§3.5; the official
    code takes the first ones in file order instead). Returns a list of n bools, True = full trace."""
    if not 0.0 <= p <= 1.0:
        raise UpftError(f"--structure-ratio must be in [0, 1], got {p}")
    k = round(p * n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    full = set(perm[:k])
    return [i in full for i in range(n)]


def chat_prompt(tok, question, instruction=False):
    """Token ids of the chat prompt for one user question, ending with the assistant header."""
    text = question + (PREFIX_INSTRUCTION if instruction else "")
    return tok.encode(tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True))


def prefix_vote(samples, L):
    """Most frequent L-token prefix among `samples` (token-id lists). Returns (winner, agreement), where
    agreement = share of samples whose prefix is the winner. Ties go to the prefix that was drawn first
    (the lowest sample index), a deterministic rule that does not favour any token id."""
    if not samples:
        raise ValueError("prefix_vote needs at least one sample")
    prefixes = [tuple(s[:L]) for s in samples]
    counts = Counter(prefixes)
    best = max(counts.values())
    winner = next(p for p in prefixes if counts[p] == best)  # first drawn among the tied
    return list(winner), best / len(prefixes)


def _sampled_tokens(outs, max_new_tokens):
    """Tokens the sampler actually decoded: a row shorter than the budget also decoded its stop token."""
    return sum(len(o) + (len(o) < max_new_tokens) for o in outs)


def sample_rollouts(model, tok, rows, method="upft", prefix_len=8, structure_ratio=0.1, num_samples=1,
                    max_new_tokens=512, temperature=0.6, top_p=1.0, top_k=0, seed=0, batch_size=64,
                    grade=None):
    """Self-generated data for `method`. rows: [{"question", "gold"?}]. Returns (rollouts, accounting).

    upft: D_f questions get one full trace; D_p questions get num_samples prefixes of L tokens (only L
          decoded), and with num_samples > 1 the most frequent prefix wins (prefix_vote).
    sft:  one full trace per question.   rft: num_samples full traces, keep the first correct one
          (needs `grade(response_text, gold) -> bool` and a gold answer per row).
    """
    from model import generate
    if prefix_len < 1:
        raise UpftError(f"--prefix-len must be a positive number of tokens, got {prefix_len}")
    stop = tok.eos_ids
    sampling = dict(temperature=temperature, top_p=top_p, top_k=top_k, stop_ids=stop, progress=True)
    # batch_size counts sequences in flight; with n samples per prompt a chunk holds batch_size // n prompts
    chunk = lambda n: max(1, batch_size // n)  # noqa: E731
    prompts = [chat_prompt(tok, r["question"]) for r in rows]  # plain question: no instruction (decision 3)
    n = len(rows)
    acct = {"method": method, "questions": n, "tokens_sampled": 0}
    out = []
    if method == "upft":
        full = split_questions(n, structure_ratio, seed)
        fi = [i for i in range(n) if full[i]]
        pi = [i for i in range(n) if not full[i]]
        full_outs = generate(model, [prompts[i] for i in fi], max_new_tokens, seed=seed,
                             batch_size=chunk(1), **sampling)
        pre_outs = generate(model, [prompts[i] for i in pi], prefix_len, seed=seed + 1,
                            num_samples=num_samples, batch_size=chunk(num_samples), **sampling)
        acct["tokens_sampled"] = (_sampled_tokens(full_outs, max_new_tokens)
                                  + _sampled_tokens(pre_outs, prefix_len))
        for i, o in zip(fi, full_outs):
            out.append({"index": i, "kind": "full", "response_ids": o,
                        "finished": len(o) < max_new_tokens})
        for j, i in enumerate(pi):
            samples = pre_outs[j * num_samples:(j + 1) * num_samples]
            winner, agreement = prefix_vote(samples, prefix_len)
            out.append({"index": i, "kind": "prefix", "response_ids": winner, "agreement": agreement,
                        "finished": len(winner) < prefix_len})
    elif method in ("sft", "rft"):
        k = 1 if method == "sft" else num_samples
        outs = generate(model, prompts, max_new_tokens, seed=seed, num_samples=k, batch_size=chunk(k),
                        **sampling)
        acct["tokens_sampled"] = _sampled_tokens(outs, max_new_tokens)
        dropped = 0
        for i in range(n):
            samples = outs[i * k:(i + 1) * k]
            if method == "rft":
                if rows[i].get("gold") is None:
                    raise UpftError(f"--method rft needs a gold answer for every question (row {i + 1} has none)")
                ok = [s for s in samples if grade(tok.decode(s), rows[i]["gold"])]
                if not ok:
                    dropped += 1
                    continue
                samples = ok
            out.append({"index": i, "kind": "full", "response_ids": samples[0],
                        "finished": len(samples[0]) < max_new_tokens})
        if method == "rft":
            acct["questions_dropped_no_correct_sample"] = dropped
    else:
        raise UpftError(f"unknown --method {method!r} (upft, sft or rft)")
    out.sort(key=lambda r: r["index"])
    for r in out:
        r["question"] = rows[r["index"]]["question"]
        r["response"] = tok.decode(r["response_ids"])
    return out, acct


def make_example(tok, question, response_ids, kind, prefix_len, max_len=None, finished=True):
    """One training example {"input_ids", "labels", "kind"} (labels aligned with input_ids, IGNORE on
    the prompt), or None when even the prompt does not fit max_len.

    prefix: chat(question + instruction) + first L response tokens + EOS; L + 1 supervised tokens
            (fewer if the sample stopped before L tokens; EOS is still supervised right after it).
    full:   chat(question) + response + end-of-turn (EOS); every answer token supervised. A trace that
            hit the sampling budget without stopping gets no EOS (we do not teach stopping mid-thought).
    Truncation: a sequence longer than max_len is cut at max_len from the right, without forcing an
    EOS (the official code forces one: PAPER.md §9.7); examples whose prompt leaves no room are dropped.
    """
    if kind == "prefix":
        prompt = chat_prompt(tok, question, instruction=True)
        target = list(response_ids[:prefix_len]) + [tok.eos_id]
    elif kind == "full":
        prompt = chat_prompt(tok, question)
        target = list(response_ids) + ([tok.eos_id] if finished else [])
    else:
        raise ValueError(kind)
    if max_len is not None and len(prompt) >= max_len:
        return None
    ids = (prompt + target)[:max_len]
    labels = ([IGNORE] * len(prompt) + target)[:max_len]
    return {"kind": kind, "input_ids": ids, "labels": labels}


def build_examples(tok, rollouts, prefix_len, max_len=None):
    """Training examples for every rollout, plus how many were dropped by max_len."""
    examples, dropped = [], 0
    for r in rollouts:
        ex = make_example(tok, r["question"], r["response_ids"], r["kind"], prefix_len, max_len,
                          r.get("finished", True))
        if ex is None:
            dropped += 1
            continue
        ex["index"] = r["index"]
        examples.append(ex)
    return examples, dropped


def supervised_tokens(examples):
    return sum(sum(1 for t in e["labels"] if t != IGNORE) for e in examples)
