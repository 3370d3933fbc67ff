"""Unsupervised Prefix Fine-Tuning, function by function (Ji et al. 2025, arXiv 2503.02875).

Read next to the paper and docs/method.md (section numbers below are that file's):
  split_questions   the random split of D into D_p (prefix) and D_f (full traces, fraction p)   §3.1
  sample_upft       ONE sample per question from the plain question prompt; only L tokens are
                    decoded for D_p, full traces for D_f (the paper's cost accounting)            §3.2
  prefix_vote       N prefixes per question, keep the most frequent (prefix self-consistency,
                    Fig. 2a, made usable; not in the paper: --num-samples 1 is the paper)          §3.3
  make_example      prefix example = prompt with the instruction + L tokens + EOS;
                    full example = plain prompt + whole trace (+ EOS if the sample finished)     §3.4
  Eq. 8             max E_{D_p}[log p(r_<t | x')] + E_{D_f}[log p(r | x)]: the sum of both kinds of
                    examples under one masked cross-entropy (train.py)                             §4
Baselines through the same sampler (§7): `sample_sft` = one full self-generated trace per question,
no filter (also the data of EM-FT, which only changes the loss: train.masked_ce_sum with entropy=True);
`sample_rft` = N full samples, keep one whose final answer matches the label (questions with none are
dropped); `sample_vote` = the same N samples, the majority answer replaces the label (no label read).
Controls that take UPFT apart (§7.1): `build_examples(..., instruction=, eos=)` and `ablate_rollouts`
(full traces only; each prefix example trained on another question's prefix). `sample_method` picks
the sampler of train.py's --method, `sampling_accounting` counts what it sampled. Every decoding goes
through model.generate_answers.

Definitions: L = --prefix-len, in model tokens of the raw sampled response (no whitespace
normalisation: §5); p = --structure-ratio = the fraction of FULL-trace questions. "Structure" is the
paper's word: Eq. 8 is UPFT "with structure tuning", the full traces that keep the model's
whole-solution structure while the prefixes train the opening; p is their share (§3.1).
A rollout is {"index", "kind": "prefix"|"full", "response_ids", "finished", ...}: one per question kept.
"""
from __future__ import annotations

import hashlib
from collections import Counter

import torch

from data import IGNORE, UpftError, chat_prompt, supervised_count
from grader import extract_answer, is_equiv, normalize
from model import generate_answers

# The paper's prefix-task template (Fig. 3 of v1), exact text, leading space included; appended to the
# question inside the user turn, at training time, for prefix examples only. Samples are always drawn
# from the plain question (docs/method.md §3.4).
PREFIX_INSTRUCTION = (" Please provide the initial step towards resolving the question. This step may serve"
                      " as a foundation but might not encompass the entire solution.")


# ----------------------------------------------------------------------------- the paper's steps

def split_questions(n, p, seed):
    """Which questions get a full trace (D_f of Eq. 8, the paper's p = 0.1 of them): n bools, True = full
    trace, a seeded random round(p * n) (§3.1; the official code takes the first ones in file order).
    Exercise: docs/teaching.md, "The contracts"."""
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
    goes to the prefix drawn first (§3.3: prefix self-consistency, Fig. 2a, as a training signal).
    Exercise: docs/teaching.md, "The contracts"."""
    # >>> exercise: prefix_vote
    if not samples:
        raise ValueError("prefix_vote needs at least one sample")
    prefixes = [tuple(s[:L]) for s in samples]
    counts = Counter(prefixes)
    best = max(counts.values())
    winner = next(p for p in prefixes if counts[p] == best)  # first drawn among the tied
    return list(winner), best / len(prefixes)
    # <<< exercise: prefix_vote


def majority_vote(answers):
    """The most common answer by normalised form (a tie goes to the earliest sample), None if there is
    none: the same vote as prefix_vote's, each answer's normalised form a one-token sample."""
    given = [a for a in answers if a is not None]
    if not given:
        return None
    forms = [normalize(a) for a in given]
    (winner,), _ = prefix_vote([[form] for form in forms], 1)
    return given[forms.index(winner)]


def sample_upft(model, tok, questions, prefix_len, structure_ratio, num_samples=1, max_new_tokens=512,
                seed=0, batch_size=64, share=None, prefixes=True, **sampling):
    """UPFT's self-generated data (§3.2): the D_f questions get one full trace, the D_p questions
    `num_samples` prefixes of only L decoded tokens each (num_samples > 1: the most frequent prefix wins).
    questions: list of str. sampling: temperature, top_p, top_k. Returns (rollouts, tokens sampled).
    Every question draws from its own random streams (model.generate), keyed by the seed and the
    question: its samples do not depend on the batch size, the order of the questions, or the number of
    processes, and its prefix is the opening of the full trace it would get (the same stream).
    share=(rank, world) (torchrun): the split is still drawn over all questions, but only questions
    rank, rank + world, ... are decoded here; the rollouts keep their global index and the token count
    is this rank's. prefixes=False (the full-trace-only control, §7.1) skips the D_p sampling; the full
    traces are the same."""
    if prefix_len < 1:
        raise UpftError(f"--prefix-len must be a positive number of tokens, got {prefix_len}")
    rank, world = share or (0, 1)
    full = split_canonical(questions, structure_ratio, seed)
    d_f = [i for i, f in enumerate(full) if f and i % world == rank]      # D_f: a full trace each
    d_p = [i for i, f in enumerate(full) if not f and i % world == rank]  # D_p: L tokens each
    # the plain question's prompt (no instruction); batch_size counts sequences in flight
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


def canonical_order(questions):
    """The positions of `questions` sorted by a hash of their text (ties: by position): an order that does
    not depend on the order of the file, so a shuffled data set gets the same split, the same random
    targets and the same training order (train.py) as the original."""
    key = lambda i: (hashlib.sha256(questions[i].encode("utf-8")).digest(), i)  # noqa: E731
    return sorted(range(len(questions)), key=key)


def split_canonical(questions, p, seed):
    """split_questions over the questions taken in canonical_order: which questions get a full trace
    then depends on the questions and the seed, not on their order in the file."""
    order = canonical_order(questions)
    full = [False] * len(questions)
    for i, f in zip(order, split_questions(len(questions), p, seed)):
        full[i] = f
    return full


def make_example(tok, question, response_ids, kind, prefix_len, max_len=None, finished=True,
                 instruction=PREFIX_INSTRUCTION, eos=True):
    """One training example {"kind", "input_ids", "labels"} (labels aligned, IGNORE on the prompt), or None
    when even the prompt does not fit max_len: Eq. 8's prefix term (chat(question + instruction) + L
    sampled tokens + EOS) or full term (chat(question) + the whole trace + EOS if it finished) (§3.4).
    Exercise: docs/teaching.md, "The contracts"."""
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


def build_examples(tok, questions, rollouts, prefix_len, max_len=None, instruction=PREFIX_INSTRUCTION,
                   eos=True):
    """Training examples for every rollout, plus how many were dropped by max_len. A rollout with a
    "target_ids" (the random-target control, `ablate_rollouts`) is trained on those instead of its own."""
    examples, dropped = [], 0
    for r in rollouts:
        ex = make_example(tok, questions[r["index"]], r.get("target_ids", r["response_ids"]), r["kind"],
                          prefix_len, max_len, r.get("finished", True), instruction=instruction, eos=eos)
        if ex is None:
            dropped += 1
            continue
        ex["index"] = r["index"]
        examples.append(ex)
    return examples, dropped


def ablate_rollouts(rollouts, questions, full_only=False, random_targets=False, seed=0):
    """The controls that take UPFT apart (§7.1), applied to UPFT's own rollouts (same split, same samples):

    full_only:      keep the full traces (the fraction p) and drop every prefix rollout.
    random_targets: every prefix rollout is trained on the prefix sampled for ANOTHER question: a
                    uniformly random derangement of the prefix rollouts (seeded, over the questions in
                    canonical_order; redrawn until no rollout keeps its own), stored as "target_ids" /
                    "target_from" (the index of the question it came from).
                    The masks, lengths and prompts stay; only the pairing of prompt and target is broken.
    Returns new rollout dicts; the input is not modified."""
    out = [dict(r) for r in rollouts if not (full_only and r["kind"] == "prefix")]
    if random_targets:
        rank = {i: k for k, i in enumerate(canonical_order(questions))}
        pre = sorted((r for r in out if r["kind"] == "prefix"), key=lambda r: rank[r["index"]])
        if len(pre) < 2:
            raise UpftError("the random-target control needs at least 2 prefix questions")
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

def sample_sft(model, tok, questions, max_new_tokens=512, seed=0, batch_size=64, **sampling):
    """SFT baseline on self-generated data: one full trace per question, no filter."""
    outs = generate_answers(model, tok, questions, max_new_tokens, n=1, seed=seed, batch_size=batch_size,
                            **sampling)
    return [full_rollout(i, g[0], max_new_tokens) for i, g in enumerate(outs)], sampled_tokens(outs, max_new_tokens)


def sample_rft(model, tok, questions, golds, num_samples=16, max_new_tokens=512, seed=0, batch_size=64,
               **sampling):
    """Rejection-sampling fine-tuning (RFT, Eq. 1): num_samples full traces per question, keep the first
    whose final answer equals the gold answer; questions without a correct sample are dropped.
    Returns (rollouts, tokens sampled, questions dropped)."""
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


def sample_vote(model, tok, questions, num_samples=16, max_new_tokens=512, seed=0, batch_size=64, **sampling):
    """Majority-vote self-training (offline TTRL, arXiv 2504.16084; §7): the same num_samples full traces
    per question as RFT (same seed, same sampler), but the pseudo-label is the most common extracted
    answer (majority_vote, ties to the earliest sample) and the first sample that reaches it is kept.
    No gold answer is taken or read. Questions whose samples have no extractable answer are
    dropped. Each kept rollout records its vote share (samples agreeing with the vote / num_samples).
    Returns (rollouts, tokens sampled, questions dropped)."""
    outs = generate_answers(model, tok, questions, max_new_tokens, n=num_samples, seed=seed, batch_size=batch_size,
                            **sampling)
    rollouts = []
    for i, samples in enumerate(outs):
        answers = [extract_answer(tok.decode(s)) for s in samples]
        vote = majority_vote(answers)
        if vote is None:
            continue  # no sample has an answer: nothing to vote on
        agree = [a is not None and normalize(a) == normalize(vote) for a in answers]
        r = full_rollout(i, samples[agree.index(True)], max_new_tokens)
        r.update(pseudo_label=vote, vote_share=sum(agree) / len(samples))
        rollouts.append(r)
    return rollouts, sampled_tokens(outs, max_new_tokens), len(questions) - len(rollouts)


# ----------------------------------------------------------------------------- a method by its name

def sample_method(method, model, tok, questions, golds, prefix_len, structure_ratio, num_samples, share=None,
                  prefixes=True, **common):
    """The self-generated rollouts of `method` (train.py --method: upft, sft, em, vote or rft), this
    process's part of them: (rollouts, each with its question's index; tokens sampled; questions dropped).
    share=(rank, world) (torchrun): questions rank, rank + world, ... only. golds: rft's labels (no other
    method reads them). common: max_new_tokens, seed, batch_size and the sampling settings."""
    if method == "upft":
        rollouts, sampled = sample_upft(model, tok, questions, prefix_len, structure_ratio, num_samples,
                                        share=share, prefixes=prefixes, **common)
        return rollouts, sampled, 0
    rank, world = share or (0, 1)
    mine = list(range(rank, len(questions), world))
    dropped = 0
    if method in ("sft", "em"):  # EM-FT trains on SFT's samples; only the loss differs
        rollouts, sampled = sample_sft(model, tok, [questions[i] for i in mine], **common)
    elif method == "vote":  # no gold answer is passed: the majority answer is the pseudo-label
        rollouts, sampled, dropped = sample_vote(model, tok, [questions[i] for i in mine], num_samples, **common)
    else:
        rollouts, sampled, dropped = sample_rft(model, tok, [questions[i] for i in mine], [golds[i] for i in mine],
                                                num_samples, **common)
    for r in rollouts:
        r["index"] = mine[r["index"]]
    return rollouts, sampled, dropped


def sampling_accounting(method, questions, rollouts, sampled, dropped, num_samples):
    """accounting.json's sampling part, over every question (all ranks' rollouts): tokens sampled, and
    what the method adds (prefix agreement of the vote, questions dropped, mean vote share)."""
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
