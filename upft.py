"""Unsupervised Prefix Fine-Tuning, function by function (Ji et al. 2025, arXiv 2503.02875).

Read next to the paper and docs/method.md (section numbers below are that file's):
  split_questions §3.1  the random split of D into D_p (prefix) and D_f (full traces, fraction p)
  upft_rollouts   §3.2  ONE sample per question from the plain prompt: L tokens decoded for D_p, a full trace for D_f
  prefix_vote     §3.3  the most frequent of N prefixes (prefix self-consistency, Fig. 2a; the paper: --num-samples 1)
  make_example    §3.4  prefix: prompt + instruction + L tokens + EOS; full: plain prompt + trace (+ EOS if finished)
  Eq. 8           §4    max E_{D_p}[log p(r_<t | x')] + E_{D_f}[log p(r | x)]: one masked cross-entropy (train.py)
Baselines through the same sampler (§7): `sft_rollouts` (one full trace per question, no filter; EM-FT's data too),
`rft_rollouts` (N full samples, one whose answer matches the label), `vote_rollouts` (the same N, the majority answer
as the label). Controls (§7.1): `build_examples(..., instruction=, eos=)`, `ablate_rollouts`. `method_rollouts` picks
the sampler of --method, `sampling_accounting` counts what it sampled. L = --prefix-len, in model tokens of the raw
response (§5); p = --structure-ratio, the fraction of FULL-trace questions ("structure tuning", §3.1). A rollout is
{"index", "kind": "prefix"|"full", "response_ids", "finished", ...}: one per question kept.
"""
from __future__ import annotations

import hashlib
from collections import Counter

import torch

from data import IGNORE, UpftError, chat_prompt, require, supervised_count
from grader import extract_answer, is_equiv, normalize
from model import generate_answers

# The paper's prefix-task template (Fig. 3 of v1), exact text, leading space included: appended to the question
# in the user turn of prefix examples only; samples are always drawn from the plain question (docs/method.md §3.4).
PREFIX_INSTRUCTION = (" Please provide the initial step towards resolving the question. This step may serve"
                      " as a foundation but might not encompass the entire solution.")


# ----------------------------------------------------------------------------- the paper's steps
def split_questions(n, p, seed):
    """Which questions get a full trace (D_f of Eq. 8, the paper's p = 0.1 of them): n bools, True = full
    trace, a seeded random round(p * n) (§3.1; the official code takes the first ones in file order)."""
    # >>> exercise: split_questions
    if not 0.0 <= p <= 1.0:
        raise UpftError(f"--structure-ratio must be in [0, 1], got {p}")
    k = round(p * n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    full = set(perm[:k])
    return [i in full for i in range(n)]
    # <<< exercise: split_questions


def prefix_vote(samples, L):
    """(the most frequent L-token prefix among N samples of one question, its share of the samples); a tie
    goes to the prefix drawn first (§3.3: prefix self-consistency, Fig. 2a, as a training signal)."""
    # >>> exercise: upft_rollouts
    if not samples:
        raise ValueError("prefix_vote needs at least one sample")
    prefixes = [tuple(s[:L]) for s in samples]
    counts = Counter(prefixes)
    best = max(counts.values())
    winner = next(p for p in prefixes if counts[p] == best)  # first drawn among the tied
    return list(winner), best / len(prefixes)
    # <<< exercise: upft_rollouts


def majority_vote(answers):
    """The most common answer by normalised form (ties: the earliest), None if none: a prefix_vote of 1 token."""
    given = [a for a in answers if a is not None]
    if not given:
        return None
    forms = [normalize(a) for a in given]
    (winner,), _ = prefix_vote([[form] for form in forms], 1)
    return given[forms.index(winner)]


def upft_rollouts(model, tok, questions, full, prefix_len, num_samples=1, max_new_tokens=512, seed=0,
                  batch_size=64, prefixes=True, **sampling):
    """UPFT's self-generated data (§3.2) -> (rollouts, tokens sampled): D_f's questions (full[i] True, drawn by
    split_canonical) get one full trace, D_p's `num_samples` prefixes of only L decoded tokens (num_samples > 1: the
    most frequent wins). sampling: temperature, top_p, top_k, progress. A question's own random streams (model.generate)
    make its samples independent of the batch size and of the other questions, and its prefix the opening of the full
    trace it would get. prefixes=False (the full-trace-only control, §7.1) skips the D_p sampling, same full traces."""
    # >>> exercise: upft_rollouts
    require(prefix_len >= 1, f"--prefix-len must be a positive number of tokens, got {prefix_len}")
    d_f = [i for i, f in enumerate(full) if f]      # D_f: a full trace each
    d_p = [i for i, f in enumerate(full) if not f]  # D_p: L tokens each
    shown = sampling.pop("progress", True)  # the progress lines name what is sampled
    full_outs = generate_answers(model, tok, [questions[i] for i in d_f], max_new_tokens, n=1, seed=seed,
                                 batch_size=batch_size, progress=shown and "sample full traces (D_f)", **sampling)
    pre_outs = generate_answers(model, tok, [questions[i] for i in d_p], prefix_len, n=num_samples, seed=seed,
                                batch_size=batch_size, progress=shown and f"sample {prefix_len}-token prefixes (D_p)",
                                **sampling) if prefixes else []
    rollouts = [full_rollout(i, samples[0], max_new_tokens) for i, samples in zip(d_f, full_outs)]
    for i, samples in zip(d_p, pre_outs):  # (empty when prefixes=False)
        winner, agreement = prefix_vote(samples, prefix_len)
        rollouts.append({"index": i, "kind": "prefix", "response_ids": winner, "agreement": agreement,
                         "finished": len(winner) < prefix_len})
    sampled = sampled_tokens(full_outs, max_new_tokens) + sampled_tokens(pre_outs, prefix_len)
    return sorted(rollouts, key=lambda r: r["index"]), sampled
    # <<< exercise: upft_rollouts


def canonical_order(questions):
    """The positions of `questions` sorted by a hash of their text (ties: by position), an order independent of
    the file's: a shuffled data set gets the same split, random targets and training order (train.py)."""
    key = lambda i: (hashlib.sha256(questions[i].encode("utf-8")).digest(), i)  # noqa: E731
    return sorted(range(len(questions)), key=key)


def split_canonical(questions, p, seed):
    """split_questions over canonical_order: the split depends on the questions and seed, not the file's order."""
    full = [False] * len(questions)
    for i, f in zip(canonical_order(questions), split_questions(len(questions), p, seed)):
        full[i] = f
    return full


def make_example(tok, question, response_ids, kind, prefix_len, max_len=None, finished=True,
                 instruction=PREFIX_INSTRUCTION, eos=True):
    """One training example {"kind", "input_ids", "labels"} (labels aligned, IGNORE on the prompt), or None
    when even the prompt does not fit max_len: Eq. 8's prefix term (chat(question + instruction) + L
    sampled tokens + EOS) or full term (chat(question) + the whole trace + EOS if it finished) (§3.4)."""
    # >>> exercise: make_example
    if kind == "prefix":
        prompt = chat_prompt(tok, question, instruction)
        target = list(response_ids[:prefix_len]) + ([tok.eos_id] if eos else [])
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
    # <<< exercise: make_example


def build_examples(tok, questions, rollouts, prefix_len, max_len=None, instruction=PREFIX_INSTRUCTION, eos=True):
    """Training examples for every rollout, plus how many were dropped by max_len. A rollout with a
    "target_ids" (the random-target control, `ablate_rollouts`) is trained on those instead of its own."""
    examples, dropped = [], 0
    for r in rollouts:
        ex = make_example(tok, questions[r["index"]], r.get("target_ids", r["response_ids"]), r["kind"],
                          prefix_len, max_len, r.get("finished", True), instruction=instruction, eos=eos)
        if ex is None:
            dropped += 1
        else:
            examples.append({**ex, "index": r["index"]})
    return examples, dropped


def ablate_rollouts(rollouts, questions, full_only=False, random_targets=False, seed=0):
    """The controls that take UPFT apart (§7.1) on UPFT's own rollouts (same split, same samples) -> new rollout dicts
    (the input is not modified). full_only: keep the full traces (the fraction p), drop every prefix rollout.
    random_targets: train every prefix rollout on the prefix sampled for ANOTHER question, by a uniformly random
    derangement (seeded, over canonical_order; redrawn until none keeps its own), stored as "target_ids" / "target_from"
    (the question it came from). Masks, lengths and prompts stay; only the pairing of prompt and target is broken."""
    out = [dict(r) for r in rollouts if not (full_only and r["kind"] == "prefix")]
    if random_targets:
        place = {i: k for k, i in enumerate(canonical_order(questions))}
        pre = sorted((r for r in out if r["kind"] == "prefix"), key=lambda r: place[r["index"]])
        require(len(pre) >= 2, "the random-target control needs at least 2 prefix questions")
        g = torch.Generator().manual_seed(seed)  # its own generator: no other random stream moves
        while True:
            perm = torch.randperm(len(pre), generator=g).tolist()
            if all(j != i for i, j in enumerate(perm)):
                break
        for r, j in zip(pre, perm):
            r["target_ids"], r["target_from"] = list(pre[j]["response_ids"]), pre[j]["index"]
    return out


def supervised_tokens(examples):
    return sum(supervised_count(e["labels"]) for e in examples)


# ----------------------------------------------------------------------------- baselines (§7)
def sft_rollouts(model, tok, questions, max_new_tokens=512, seed=0, batch_size=64, **sampling):
    """SFT baseline on self-generated data: one full trace per question, no filter."""
    outs = generate_answers(model, tok, questions, max_new_tokens, n=1, seed=seed, batch_size=batch_size, **sampling)
    return [full_rollout(i, g[0], max_new_tokens) for i, g in enumerate(outs)], sampled_tokens(outs, max_new_tokens)


def rft_rollouts(model, tok, questions, golds, num_samples=16, max_new_tokens=512, seed=0, batch_size=64, **sampling):
    """Rejection-sampling fine-tuning (RFT, Eq. 1): num_samples full traces per question, keep the first whose
    final answer equals the gold one, drop questions without one -> (rollouts, tokens sampled, questions dropped)."""
    if (i := next((i for i, g in enumerate(golds) if g is None), None)) is not None:
        raise UpftError(f"--method rft needs a gold answer for every question (question {i + 1} has none)")
    outs = generate_answers(model, tok, questions, max_new_tokens, n=num_samples, seed=seed, batch_size=batch_size,
                            **sampling)
    rollouts = []
    for i, (samples, gold) in enumerate(zip(outs, golds)):
        ok = next((s for s in samples if is_equiv(extract_answer(tok.decode(s)), gold)), None)
        if ok is not None:
            rollouts.append(full_rollout(i, ok, max_new_tokens))
    return rollouts, sampled_tokens(outs, max_new_tokens), len(questions) - len(rollouts)


def vote_rollouts(model, tok, questions, num_samples=16, max_new_tokens=512, seed=0, batch_size=64, **sampling):
    """Majority-vote self-training (offline TTRL, arXiv 2504.16084; §7) -> (rollouts, tokens sampled, questions
    dropped): RFT's num_samples full traces per question (same seed, same sampler), but the pseudo-label is the most
    common extracted answer (majority_vote) and the first sample reaching it is kept; no gold answer is read. Questions
    with no extractable answer are dropped; kept ones record vote_share = agreeing samples / num_samples."""
    outs = generate_answers(model, tok, questions, max_new_tokens, n=num_samples, seed=seed, batch_size=batch_size,
                            **sampling)
    rollouts = []
    for i, samples in enumerate(outs):
        answers = [extract_answer(tok.decode(s)) for s in samples]
        vote = majority_vote(answers)
        if vote is None:
            continue  # no sample has an answer: nothing to vote on
        agree = [a is not None and normalize(a) == normalize(vote) for a in answers]
        rollouts.append({**full_rollout(i, samples[agree.index(True)], max_new_tokens), "pseudo_label": vote,
                         "vote_share": sum(agree) / len(samples)})
    return rollouts, sampled_tokens(outs, max_new_tokens), len(questions) - len(rollouts)


# ----------------------------------------------------------------------------- a method by its name
def method_rollouts(method, model, tok, questions, golds, full, prefix_len, num_samples, prefixes=True, **common):
    """The self-generated rollouts of `method` (train.py --method: upft, sft, em, vote, rft) for the questions given ->
    (rollouts, each with its question's index; tokens sampled; questions dropped). full: UPFT's D_f (split_canonical);
    golds: rft's labels (no other method reads them); common: max_new_tokens, seed, batch_size, sampling."""
    if method == "upft":
        return (*upft_rollouts(model, tok, questions, full, prefix_len, num_samples, prefixes=prefixes, **common), 0)
    if method in ("sft", "em"):  # EM-FT trains on SFT's samples; only the loss differs
        return (*sft_rollouts(model, tok, questions, **common), 0)
    if method == "vote":  # no gold answer is passed: the majority answer is the pseudo-label
        return vote_rollouts(model, tok, questions, num_samples, **common)
    return rft_rollouts(model, tok, questions, golds, num_samples, **common)


def sampling_accounting(method, questions, rollouts, sampled, dropped, num_samples):
    """accounting.json's sampling part, over every question: tokens sampled, and what the method adds (prefix
    agreement of the vote, questions dropped, mean vote share)."""
    acct = {"method": method, "questions": questions, "tokens_sampled": sampled}
    if method == "upft" and num_samples > 1:
        agree = [r["agreement"] for r in rollouts if r["kind"] == "prefix"]
        acct["mean_prefix_agreement"] = sum(agree) / max(len(agree), 1)
    if method == "rft":
        acct["questions_dropped_no_correct_sample"] = dropped
    if method == "vote":
        acct["questions_dropped_no_answer"] = dropped
        shares = [r["vote_share"] for r in rollouts]
        acct["mean_vote_share"] = sum(shares) / max(len(shares), 1)
    return acct


# ----------------------------------------------------------------------------- helpers
def full_rollout(i, ids, max_new_tokens):
    """The rollout of a full trace of question i (`finished`: it stopped before the sampling budget)."""
    return {"index": i, "kind": "full", "response_ids": ids, "finished": len(ids) < max_new_tokens}


def sampled_tokens(groups, max_new_tokens):
    """Tokens the sampler actually decoded: a sample shorter than the budget also decoded its stop token."""
    return sum(len(s) + (len(s) < max_new_tokens) for g in groups for s in g)
