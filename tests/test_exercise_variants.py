"""The contract tests can tell each exercise's right answer from its usual wrong ones.

VARIANTS lists, per exercise, the mistakes students (and papers' codebases) make. Each is a small patch of
the reference: text substitutions in the reference body (each old text must occur exactly once, so a
variant that no longer applies fails loudly instead of testing nothing) or, rarely, a replacement
function. For every variant the patched function is swapped into its module in-process and the
exercise's contract tests (tests/exercises/test_<exercise>.py, plain functions without arguments) are
run: at least one must fail. The same machinery checks that the stub `scripts/assignment.py make`
writes fails EVERY contract test of its exercise, and that the untouched reference passes them all here
too (so a broken harness cannot make every variant look caught).

Instructor-only: `scripts/assignment.py make` leaves this file out of the student copy (it holds
pieces of the reference bodies).

    python tests/test_exercise_variants.py               # the table: variant -> the contract tests that catch it
    python tests/test_exercise_variants.py --write-doc   # ... and write it into docs/teaching.md
"""
from __future__ import annotations

import __future__
import importlib
import inspect
import re
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXERCISE_TESTS = ROOT / "tests" / "exercises"
INSTRUCTOR_TESTS = ROOT / "tests" / "instructor"
for p in (ROOT, ROOT / "tests", EXERCISE_TESTS, INSTRUCTOR_TESTS, ROOT / "scripts"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))
import assignment  # noqa: E402  (scripts/assignment.py)


@dataclass
class Patch:
    """Replace `target` ("module.func" or "module.Class.method") by its reference source with each
    (old, new) substitution applied, or by `func` when given."""
    target: str
    subs: tuple = ()
    func: object = None
    stub: bool = field(default=False, repr=False)

    def build(self):
        owner, attr = _owner(self.target)
        if self.func is not None:
            return owner, attr, self.func
        original = inspect.unwrap(owner.__dict__[attr])
        src = textwrap.dedent(inspect.getsource(original))
        if self.stub:
            src = assignment.stub_text(src, self.target)
        lines = src.splitlines(keepends=True)
        regions = assignment.find_regions(src, self.target)
        assert len(regions) <= 1, self.target
        a, b = (regions[0].begin + 1, regions[0].end) if regions else (0, len(lines))
        body = "".join(lines[a:b])      # substitutions apply to the marked body only, not the docstring
        for old, new in self.subs:
            n = body.count(old)
            assert n == 1, f"variant of {self.target} no longer applies: {old!r} occurs {n} times in its body"
            body = body.replace(old, new)
        src = "".join(lines[:a]) + body + "".join(lines[b:])
        module = sys.modules[original.__module__]
        code = compile(src, f"<variant of {self.target}>", "exec", flags=__future__.annotations.compiler_flag,
                       dont_inherit=True)
        ns: dict = {}
        exec(code, module.__dict__, ns)    # the module's globals: the variant sees what the reference sees
        return owner, attr, ns[attr]


def _owner(target):
    parts = target.split(".")
    owner = importlib.import_module(parts[0])
    for name in parts[1:-1]:
        owner = getattr(owner, name)
    return owner, parts[-1]


def sub(target, *pairs):
    return [Patch(target, tuple(pairs))]


# ----------------------------------------------------------------------------- the usual wrong variants

def _regex_box(text):   # extract_answer: a regex up to the first closing brace (no nesting)
    m = re.findall(r"\\(?:boxed|fbox)\{([^}]*)\}", text)
    return (m[-1].strip() or None) if m else None


RETURN_CACHE = "return self.k[layer, :, :, :self.pos + T], self.v[layer, :, :, :self.pos + T]"
VALID = "valid = (s <= q) & (s >= self.pad[:, None, None])"
PREFIX_TARGET = "target = list(response_ids[:prefix_len]) + ([tok.eos_id] if eos else [])"
PREFIX_PROMPT = "chat_prompt(tok, question, instruction)"
ALWAYS_INSTRUCTION = (PREFIX_PROMPT, "chat_prompt(tok, question, PREFIX_INSTRUCTION)")
ALWAYS_EOS = (PREFIX_TARGET, "target = list(response_ids[:prefix_len]) + [tok.eos_id]")
NO_PAD_FAST_PATH = "if not self.any_pad and (self.pos == 0 or T == 1):"
MB_LOSS = ("loss_sum = micro_batch_loss(model, ids.to(device), labels.to(device), **loss)\n"
           "        (loss_sum / total).backward()")
MB_COUNT = ("loss_sum = micro_batch_loss(model, ids.to(device), labels.to(device), **loss)\n"
            "        n_mb = int((labels[:, 1:] != IGNORE).sum())\n")
LR_WARM = "max(1, math.ceil(tc.warmup_ratio * total_steps))"

VARIANTS = [  # (exercise, the usual mistake, patches)
    # --- the split (§3.1)
    ("split_questions", "p read as the prefix fraction",
     sub("upft.split_questions", ("k = round(p * n)", "k = round((1 - p) * n)"))),
    ("split_questions", "the first k questions in file order (the official code)",
     sub("upft.split_questions", ("full = set(perm[:k])", "full = set(range(k))"))),
    ("split_questions", "the global RNG instead of the seed",
     sub("upft.split_questions", ("torch.randperm(n, generator=torch.Generator().manual_seed(seed))", "torch.randperm(n)"))),
    ("split_questions", "p * n truncated instead of rounded",
     sub("upft.split_questions", ("k = round(p * n)", "k = int(p * n)"))),
    ("split_questions", "p outside [0, 1] accepted",
     sub("upft.split_questions", ("if not 0.0 <= p <= 1.0:", "if False:"))),
    # --- sampling (docs/method.md §3.2, §2.1)
    ("sample_next", "temperature applied after the softmax",
     sub("model.sample_next", ("logits = logits.float() / temperature", "logits = logits.float()"),
         ("probs = logits.softmax(-1)\n", "probs = logits.softmax(-1) / temperature\n"))),
    ("sample_next", "top-p that can drop the most likely token",
     sub("model.sample_next", ("drop = p_sorted.cumsum(-1) - p_sorted >= top_p", "drop = p_sorted.cumsum(-1) > top_p"),
         ("drop[..., 0] = False", "pass"))),
    ("sample_next", "top-p stops before the token that crosses p",
     sub("model.sample_next", ("drop = p_sorted.cumsum(-1) - p_sorted >= top_p", "drop = p_sorted.cumsum(-1) > top_p"))),
    ("sample_next", "top-p over the unsorted vocabulary",
     sub("model.sample_next", ("p_sorted, idx = probs.sort(-1, descending=True)",
                               "p_sorted, idx = probs, torch.arange(probs.shape[-1]).expand_as(probs)"))),
    ("sample_next", "top-p on the untempered probabilities (temperature last)",
     sub("model.sample_next", ("logits = logits.float() / temperature", "logits = logits.float()"),
         ("    if u is None:", "    probs = (probs.log() / temperature).softmax(-1)\n    if u is None:"))),
    ("sample_next", "top-k by threshold: ties keep more than k",
     sub("model.sample_next", ("vals, idx = logits.topk(top_k, dim=-1)",
                               "kth = logits.topk(top_k, dim=-1).values[..., -1:]"),
         ('logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, vals)',
          'logits = logits.masked_fill(logits < kth, float("-inf"))'))),
    ("sample_next", "one draw shared by the whole batch",
     sub("model.sample_next", ("u = torch.rand(probs.shape[0], ", "u = torch.rand(1, "),
         ("cdf = probs.double().cumsum(-1)", "cdf = probs.double().cumsum(-1)\n    u = u.expand(probs.shape[0])"))),
    ("sample_next", "top-p on the top-k survivors' mass before renormalising",
     sub("model.sample_next", ("logits = logits.float() / temperature", "logits = logits.float() / temperature\n    raw = logits"),
         ("probs = logits.softmax(-1)\n", "probs = logits.softmax(-1) * (raw.softmax(-1) * (logits > float('-inf')))"
                                          ".sum(-1, keepdim=True)\n"))),
    ("sample_next", "the given uniforms ignored (a fresh draw instead)",
     sub("model.sample_next", ("    if u is None:\n", "    if True:\n"))),
    ("sample_next", "inverse CDF with the first token whose mass REACHES u (a zero-probability token at u = 0)",
     sub("model.sample_next", (", right=True)", ")"))),
    # --- attention: the KV cache (update, positions, mask)
    ("attention", "cache written at the wrong slot (always from slot 0)",
     sub("model.KVCache.update", ("self.k[layer, :, :, self.pos:self.pos + T] = k", "self.k[layer, :, :, :T] = k"),
         ("self.v[layer, :, :, self.pos:self.pos + T] = v", "self.v[layer, :, :, :T] = v"))),
    ("attention", "cache written one slot late",
     sub("model.KVCache.update", ("self.k[layer, :, :, self.pos:self.pos + T] = k",
                                  "self.k[layer, :, :, self.pos + 1:self.pos + T + 1] = k"),
         ("self.v[layer, :, :, self.pos:self.pos + T] = v", "self.v[layer, :, :, self.pos + 1:self.pos + T + 1] = v"),
         (RETURN_CACHE, "return self.k[layer, :, :, 1:self.pos + T + 1], self.v[layer, :, :, 1:self.pos + T + 1]"))),
    ("attention", "returns only the new keys/values",
     sub("model.KVCache.update", (RETURN_CACHE, "return k, v"))),
    ("attention", "returns the whole preallocated buffer (unwritten slots included)",
     sub("model.KVCache.update", (RETURN_CACHE, "return self.k[layer], self.v[layer]"))),
    ("attention", "update advances pos (once per layer)",
     sub("model.KVCache.update", (RETURN_CACHE, "self.pos += T\n    " + RETURN_CACHE))),
    ("attention", "writes every layer at once",
     sub("model.KVCache.update", ("self.k[layer, :, :, self.pos:self.pos + T] = k", "self.k[:, :, :, self.pos:self.pos + T] = k"))),
    ("attention", "positions that ignore left padding",
     sub("model.KVCache.positions", ("return (slots[None, :] - self.pad[:, None]).clamp(min=0)",
                                     "return slots[None, :].expand(len(self.pad), T)"))),
    ("attention", "positions counted from 1",
     sub("model.KVCache.positions", ("- self.pad[:, None]).clamp(min=0)", "- self.pad[:, None] + 1).clamp(min=0)"))),
    ("attention", "mask that lets queries see pad keys",
     sub("model.KVCache.mask", (VALID, "valid = (s <= q).expand(len(self.pad), -1, -1)"))),
    ("attention", "mask that is not causal",
     sub("model.KVCache.mask", (VALID, "valid = (s >= self.pad[:, None, None]) & (q >= 0)"))),
    ("attention", "pad queries see nothing (all-masked rows: NaN)",
     sub("model.KVCache.mask", ("return (valid | (s == q)).unsqueeze(1)", "return valid.unsqueeze(1)"))),
    ("attention", "no mask whenever there is no padding (chunked prefill breaks)",
     sub("model.KVCache.mask", (NO_PAD_FAST_PATH, "if not self.any_pad:"))),
    ("attention", "no mask for one-token steps even with padding",
     sub("model.KVCache.mask", (NO_PAD_FAST_PATH, "if T == 1 or (not self.any_pad and self.pos == 0):"))),
    # --- attention: the layer's forward (RoPE, GQA, the cache)
    ("attention", "no RoPE",
     sub("model.Attention.forward", ("q = q * cos + rotate_half(q) * sin", "q = q"),
         ("k = k * cos + rotate_half(k) * sin", "k = k"))),
    ("attention", "RoPE on the queries only",
     sub("model.Attention.forward", ("k = k * cos + rotate_half(k) * sin", "k = k"))),
    ("attention", "RoPE with the wrong sign (a rotation by minus the angle)",
     sub("model.Attention.forward", ("q = q * cos + rotate_half(q) * sin", "q = q * cos - rotate_half(q) * sin"),
         ("k = k * cos + rotate_half(k) * sin", "k = k * cos - rotate_half(k) * sin"))),
    ("attention", "RoPE on interleaved pairs (Meta's layout) with the rotate-half cos/sin",
     sub("model.Attention.forward",
         ("q = q * cos + rotate_half(q) * sin",
          "q = q * cos + torch.stack((-q[..., 1::2], q[..., ::2]), -1).flatten(-2) * sin"),
         ("k = k * cos + rotate_half(k) * sin",
          "k = k * cos + torch.stack((-k[..., 1::2], k[..., ::2]), -1).flatten(-2) * sin"))),
    ("attention", "the cache not used (only the new keys/values attended)",
     sub("model.Attention.forward", ("k, v = cache.update(layer, k, v)", "pass"))),
    ("attention", "never causal (is_causal always False)",
     sub("model.Attention.forward", ("is_causal=mask is None and T > 1", "is_causal=False"))),
    ("attention", "is_causal on one-token steps too (SDPA's triangle is top-left: the new token sees slot 0 only)",
     sub("model.Attention.forward", ("is_causal=mask is None and T > 1", "is_causal=mask is None"))),
    ("attention", "the cache's mask not passed to SDPA",
     sub("model.Attention.forward", ("attn_mask=mask, is_causal=mask is None and T > 1",
                                     "attn_mask=None, is_causal=T > 1"))),
    ("attention", "softmax scale 1 instead of 1/sqrt(D)",
     sub("model.Attention.forward", ("enable_gqa=self.H != self.K)", "enable_gqa=self.H != self.K, scale=1.0)"))),
    ("attention", "heads split by view alone (no transpose: tokens and heads mixed)",
     sub("model.Attention.forward",
         ("self.q_proj(x).view(B, T, self.H, self.D).transpose(1, 2)", "self.q_proj(x).view(B, self.H, T, self.D)"),
         ("self.k_proj(x).view(B, T, self.K, self.D).transpose(1, 2)", "self.k_proj(x).view(B, self.K, T, self.D)"),
         ("self.v_proj(x).view(B, T, self.K, self.D).transpose(1, 2)", "self.v_proj(x).view(B, self.K, T, self.D)"),
         ("y.transpose(1, 2).reshape(B, T, self.H * self.D)", "y.reshape(B, T, self.H * self.D)"))),
    ("attention", "keys used as the values",
     sub("model.Attention.forward", ("scaled_dot_product_attention(q, k, v,",
                                     "scaled_dot_product_attention(q, k, k,"))),
    ("attention", "key/value heads tiled over the query heads (repeat), not grouped (repeat_interleave)",
     sub("model.Attention.forward", ("scaled_dot_product_attention(q, k, v,", "scaled_dot_product_attention("
                                     "q, k.repeat(1, self.H // self.K, 1, 1), v.repeat(1, self.H // self.K, 1, 1),"))),
    # --- the KV-cached generation loop
    ("generate_loop", "the n samples share one row (the prefill neither expanded nor repeated)",
     sub("model._generate_chunk", ("if n > 1:", "if False:"))),
    ("generate_loop", "the prompts repeated n times before the prefill (n prefills per prompt, no expand)",
     sub("model._generate_chunk", ("pad = torch.tensor([Tmax - len(p) for p in prompts])",
                                   "pad = torch.tensor([Tmax - len(p) for p in prompts for _ in range(n)])"),
         ("+ list(p) for p in prompts]", "+ list(p) for p in prompts for _ in range(n)]"),
         ("cache = KVCache(model.config, B, ", "cache = KVCache(model.config, B * n, "), ("if n > 1:", "if False:"))),
    ("generate_loop", "right padding",
     sub("model._generate_chunk", ("[0] * (Tmax - len(p)) + list(p)", "list(p) + [0] * (Tmax - len(p))"))),
    ("generate_loop", "the first token drawn from the prefill's first position",
     sub("model._generate_chunk", ("model(ids.to(device), cache=cache, last_only=True)[:, -1]",
                                   "model(ids.to(device), cache=cache)[:, 0]"))),
    ("generate_loop", "prefill logits of every position (no last_only: B x T x V floats)",
     sub("model._generate_chunk", ("model(ids.to(device), cache=cache, last_only=True)[:, -1]",
                                   "model(ids.to(device), cache=cache)[:, -1]"))),
    ("generate_loop", "the stop id kept in the sample",
     sub("model._generate_chunk", ("next((i for i, t", "next((i + 1 for i, t"))),
    ("generate_loop", "only the first stop id counts",
     sub("model._generate_chunk", ("sorted(set(stop_ids))", "sorted(set(list(stop_ids)[:1]))"),
         ("stops = set(stop_ids)", "stops = set(list(stop_ids)[:1])"))),
    ("generate_loop", "stops one token early (max_new_tokens - 1 steps)",
     sub("model._generate_chunk", ("for step in range(max_new_tokens):", "for step in range(max_new_tokens - 1):"))),
    ("generate_loop", "decoding goes on after every row has stopped",
     sub("model._generate_chunk", (" or bool(done.all())", ""))),
    ("generate_loop", "finished rows never leave the batch",
     sub("model._generate_chunk", ("if int(done.sum()) * 4 >= len(live):", "if False:"))),
    ("generate_loop", "finished rows dropped from the cache but not from the row bookkeeping",
     sub("model._generate_chunk", ("live = [r for r, k in zip(live, keep.tolist()) if k]", "pass"))),
    ("generate_loop", "u drawn from the first rows' streams after rows finish (keys, not keys[live])",
     sub("model._generate_chunk", ("stream_uniforms(keys[live], step)", "stream_uniforms(keys[:len(live)], step)"))),
    ("generate_loop", "the streams' numbers counted from 1",
     sub("model._generate_chunk", ("stream_uniforms(keys[live], step)", "stream_uniforms(keys[live], step + 1)"))),
    ("generate_loop", "uniforms passed at temperature 0 (greedy)",
     sub("model._generate_chunk", ("u = None if keys is None or not temperature or temperature <= 0 else",
                                   "u = None if keys is None else"))),
    ("generate_loop", "top-k and top-p not passed to sample_next",
     sub("model._generate_chunk", ("sample_next(logits, temperature, top_k, top_p, u=u)",
                                   "sample_next(logits, temperature, u=u)"))),
    ("generate_loop", "samples grouped by sample index, not by prompt (row j * B + b)",
     sub("model._generate_chunk", ("return [rows[b * n:(b + 1) * n] for b in range(B)]",
                                   "return [rows[b::B] for b in range(B)]"))),
    # --- UPFT's rollouts: prefix voting (§3.3)
    ("upft_rollouts", "ties broken by token id",
     sub("upft.prefix_vote", ("winner = next(p for p in prefixes if counts[p] == best)",
                              "winner = min(p for p in prefixes if counts[p] == best)"))),
    ("upft_rollouts", "ties go to the prefix drawn last",
     sub("upft.prefix_vote", ("winner = next(p for p in prefixes if counts[p] == best)",
                              "winner = [p for p in prefixes if counts[p] == best][-1]"))),
    ("upft_rollouts", "votes on whole samples, not on L-token prefixes",
     sub("upft.prefix_vote", ("prefixes = [tuple(s[:L]) for s in samples]", "prefixes = [tuple(s) for s in samples]"))),
    ("upft_rollouts", "prefix cut off by one (L + 1 tokens)",
     sub("upft.prefix_vote", ("prefixes = [tuple(s[:L]) for s in samples]", "prefixes = [tuple(s[:L + 1]) for s in samples]"))),
    ("upft_rollouts", "agreement over the distinct prefixes instead of all samples",
     sub("upft.prefix_vote", ("return list(winner), best / len(prefixes)", "return list(winner), best / len(counts)"))),
    ("upft_rollouts", "agreement as a vote count",
     sub("upft.prefix_vote", ("return list(winner), best / len(prefixes)", "return list(winner), best"))),
    # --- UPFT's rollouts: the D_p / D_f sampling (§3.2)
    ("upft_rollouts", "D_p and D_f swapped (full[i] True read as a prefix question)",
     sub("upft.upft_rollouts",
         ("d_f = [i for i, f in enumerate(full) if f]", "d_f = [i for i, f in enumerate(full) if not f]"),
         ("d_p = [i for i, f in enumerate(full) if not f]", "d_p = [i for i, f in enumerate(full) if f]"))),
    ("upft_rollouts", "prefixes decoded with the full budget (max_new_tokens, then cut to L)",
     sub("upft.upft_rollouts", ("for i in d_p], prefix_len, n=num_samples",
                                "for i in d_p], max_new_tokens, n=num_samples"))),
    ("upft_rollouts", "num_samples full traces per D_f question",
     sub("upft.upft_rollouts", ("max_new_tokens, n=1, seed=seed", "max_new_tokens, n=num_samples, seed=seed"))),
    ("upft_rollouts", "no vote: the first sample's prefix kept",
     sub("upft.upft_rollouts", ("winner, agreement = prefix_vote(samples, prefix_len)",
                                "winner, agreement = list(samples[0][:prefix_len]), 1.0"))),
    ("upft_rollouts", "a prefix is never finished (not even when its sample stopped within L tokens)",
     sub("upft.upft_rollouts", ('"finished": len(winner) < prefix_len', '"finished": False'))),
    ("upft_rollouts", "a prefix of L tokens counted as finished",
     sub("upft.upft_rollouts", ("len(winner) < prefix_len", "len(winner) <= prefix_len"))),
    ("upft_rollouts", "rollouts not sorted by index (D_f's first)",
     sub("upft.upft_rollouts", ('return sorted(rollouts, key=lambda r: r["index"]), sampled',
                                "return rollouts, sampled"))),
    ("upft_rollouts", "tokens sampled = the samples' lengths (stop tokens not counted)",
     sub("upft.upft_rollouts", ("sampled = sampled_tokens(full_outs, max_new_tokens) + "
                                "sampled_tokens(pre_outs, prefix_len)",
                                "sampled = sum(len(s) for g in full_outs + pre_outs for s in g)"))),
    ("upft_rollouts", "prefix samples counted against max_new_tokens (a stop token after every L-token prefix)",
     sub("upft.upft_rollouts", ("sampled_tokens(pre_outs, prefix_len)", "sampled_tokens(pre_outs, max_new_tokens)"))),
    ("upft_rollouts", "prefixes sampled when prefixes=False",
     sub("upft.upft_rollouts", ("**sampling) if prefixes else []", "**sampling)"))),
    ("upft_rollouts", "progress left in the sampling options (passed twice)",
     sub("upft.upft_rollouts", ('sampling.pop("progress", True)', 'sampling.get("progress", True)'))),
    ("upft_rollouts", "the seed not passed to the sampler",
     sub("upft.upft_rollouts", (" n=1, seed=seed,", " n=1,"), ("n=num_samples, seed=seed,", "n=num_samples,"))),
    ("upft_rollouts", "prefix_len 0 accepted",
     sub("upft.upft_rollouts", ("require(prefix_len >= 1,", "require(prefix_len >= 0,"))),
    # --- training examples (§3.4)
    ("make_example", "no EOS after the prefix",
     sub("upft.make_example", (PREFIX_TARGET, "target = list(response_ids[:prefix_len])"))),
    ("make_example", "EOS = the pad token",
     sub("upft.make_example", (PREFIX_TARGET, "target = list(response_ids[:prefix_len]) + [tok.pad_id]"))),
    ("make_example", "prompt supervised",
     sub("upft.make_example", ("labels = ([IGNORE] * len(prompt) + target)[:max_len]", "labels = (prompt + target)[:max_len]"))),
    ("make_example", "labels shifted here too (shifted twice with the loss)",
     sub("upft.make_example", ("labels = ([IGNORE] * len(prompt) + target)[:max_len]",
                               "labels = (([IGNORE] * len(prompt) + target)[1:] + [IGNORE])[:max_len]"))),
    ("make_example", "prefix cut off by one (L - 1 tokens)",
     sub("upft.make_example", (PREFIX_TARGET, "target = list(response_ids[:prefix_len - 1]) + [tok.eos_id]"))),
    ("make_example", "prefix cut off by one (L + 1 tokens)",
     sub("upft.make_example", (PREFIX_TARGET, "target = list(response_ids[:prefix_len + 1]) + [tok.eos_id]"))),
    ("make_example", "prefix of L characters",
     sub("upft.make_example", (PREFIX_TARGET, "target = tok.encode(tok.decode(response_ids)[:prefix_len]) + [tok.eos_id]"))),
    ("make_example", "prefix of L words (the official code's whitespace split)",
     sub("upft.make_example", (PREFIX_TARGET, 'target = tok.encode(" ".join(tok.decode(response_ids).split()[:prefix_len]))'
                                              ' + [tok.eos_id]'))),
    ("make_example", "prefix decoded and re-encoded",
     sub("upft.make_example", (PREFIX_TARGET, "target = tok.encode(tok.decode(response_ids[:prefix_len])) + [tok.eos_id]"))),
    ("make_example", "instruction on the full-trace examples",
     sub("upft.make_example", ("prompt = chat_prompt(tok, question)\n", "prompt = chat_prompt(tok, question, PREFIX_INSTRUCTION)\n"))),
    ("make_example", "no instruction on the prefix examples",
     sub("upft.make_example", ("chat_prompt(tok, question, instruction)", "chat_prompt(tok, question)"))),
    ("make_example", "instruction put before the question",
     sub("upft.make_example", ("chat_prompt(tok, question, instruction)",
                               'chat_prompt(tok, instruction.strip() + " " + question)'))),
    ("make_example", "the instruction and eos parameters ignored (--no-instruction, --no-eos do nothing)",
     sub("upft.make_example", ALWAYS_INSTRUCTION, ALWAYS_EOS)),
    ("make_example", "the eos parameter ignored (always EOS)",
     sub("upft.make_example", ALWAYS_EOS)),
    ("make_example", "the instruction parameter ignored (always PREFIX_INSTRUCTION)",
     sub("upft.make_example", ALWAYS_INSTRUCTION)),
    ("make_example", "eos=False also drops the full trace's EOS",
     sub("upft.make_example", ("([tok.eos_id] if finished else [])", "([tok.eos_id] if finished and eos else [])"))),
    ("make_example", "EOS after a full trace that hit the sampling budget",
     sub("upft.make_example", ("([tok.eos_id] if finished else [])", "[tok.eos_id]"))),
    ("make_example", "EOS forced in on truncation (the official code)",
     sub("upft.make_example", ('    return {"kind": kind, "input_ids": ids, "labels": labels}',
                               "    if max_len is not None and len(prompt) + len(target) > max_len:\n"
                               "        ids[-1] = labels[-1] = tok.eos_id\n"
                               '    return {"kind": kind, "input_ids": ids, "labels": labels}'))),
    ("make_example", "an example whose prompt fills max_len is kept",
     sub("upft.make_example", ("len(prompt) >= max_len", "len(prompt) > max_len"))),
    # --- the loss (Eq. 8, §4)
    ("masked_ce_sum", "no label shift",
     sub("train.masked_ce_sum", ("rows, targets = h[:, :-1], labels[:, 1:]", "rows, targets = h, labels"))),
    ("masked_ce_sum", "label shift the wrong way",
     sub("train.masked_ce_sum", ("rows, targets = h[:, :-1], labels[:, 1:]", "rows, targets = h[:, 1:], labels[:, :-1]"))),
    ("masked_ce_sum", "mean instead of sum",
     sub("train.masked_ce_sum", ('reduction="sum"', 'reduction="mean"'))),
    ("masked_ce_sum", "normaliser = every position (prompt and padding included)",
     sub("train.masked_ce_sum", ("return loss, int(keep.sum())", "return loss, targets.numel()"))),
    ("masked_ce_sum", "normaliser = sequence length",
     sub("train.masked_ce_sum", ("return loss, int(keep.sum())", "return loss, labels.shape[1]"))),
    ("masked_ce_sum", "normaliser = batch size",
     sub("train.masked_ce_sum", ("return loss, int(keep.sum())", "return loss, labels.shape[0]"))),
    ("masked_ce_sum", "normaliser counted before the shift",
     sub("train.masked_ce_sum", ("return loss, int(keep.sum())", "return loss, int((labels != IGNORE).sum())"))),
    ("masked_ce_sum", "loss in the logits' dtype (bf16), not fp32",
     sub("train.masked_ce_sum", ("head(rows[keep])).float()", "head(rows[keep]))"))),
    ("masked_ce_sum", "the head on every position, then masked (the full logits the R1 plan cannot hold)",
     sub("train.masked_ce_sum", ("logits = (rows[keep] if head is None else head(rows[keep])).float()",
                                 "logits = (rows if head is None else head(rows)).float()[keep]"))),
    # --- gradient accumulation (§4)
    ("accumulate_grads", "each micro-batch divided by its own count",
     sub("train.accumulate_grads", (MB_LOSS, MB_COUNT + "        (loss_sum / n_mb).backward()"))),
    ("accumulate_grads", "average of the micro-batch means",
     sub("train.accumulate_grads", (MB_LOSS, MB_COUNT + "        (loss_sum / n_mb / math.ceil(len(examples) / "
                                                       "micro_batch_size)).backward()"))),
    ("accumulate_grads", "normaliser = batch size",
     sub("train.accumulate_grads", ("(loss_sum / total).backward()", "(loss_sum / len(examples)).backward()"))),
    ("accumulate_grads", "normaliser = sequence length (every token of the step)",
     sub("train.accumulate_grads", ('total = sum(supervised_count(e["labels"]) for e in examples)',
                                    'total = sum(len(e["input_ids"]) for e in examples)'))),
    ("accumulate_grads", "the given normaliser ignored (each rank its own count under torchrun)",
     sub("train.accumulate_grads", ("if normaliser is None else normaliser", ""))),
    ("accumulate_grads", "no guard for a step without supervised tokens",
     sub("train.accumulate_grads", ("if total == 0:", "if False:"))),
    ("accumulate_grads", "gradients zeroed inside (replaced, not accumulated)",
     sub("train.accumulate_grads", ("step_loss = 0.0", "model.zero_grad(set_to_none=True)\n    step_loss = 0.0"))),
    # --- the schedule (§4)
    ("lr_at", "no warmup",
     sub("train.lr_at", ("min(1.0, (step + 1) / warm)", "1.0"))),
    ("lr_at", "warmup off by one (step 0 at lr 0)",
     sub("train.lr_at", ("min(1.0, (step + 1) / warm)", "min(1.0, step / warm)"))),
    ("lr_at", "decay after warmup in the constant schedule",
     sub("train.lr_at", ('if step < warm or tc.schedule == "constant":', "if step < warm:"))),
    ("lr_at", "warmup length rounded down",
     sub("train.lr_at", (LR_WARM, "max(1, math.floor(tc.warmup_ratio * total_steps))"))),
    ("lr_at", "no warmup_ratio = 0 guard (division by zero)",
     sub("train.lr_at", (LR_WARM, "math.ceil(tc.warmup_ratio * total_steps)"))),
    ("lr_at", "cosine down to zero instead of 10%",
     sub("train.lr_at", ("(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))", "(0.5 * (1 + math.cos(math.pi * progress)))"))),
    # --- the fit loop (§4)
    ("fit", "no clipping",
     sub("train.fit", ("clip_grad_norm_(model.parameters(), tc.max_grad_norm)",
                       'clip_grad_norm_(model.parameters(), float("inf"))'))),
    ("fit", "clipped after the optimizer step",
     sub("train.fit", ("grad_norm = hooks.grad_norm(torch.nn.utils.clip_grad_norm_(model.parameters(), "
                       "tc.max_grad_norm))\n            opt.step()",
                       "opt.step()\n            grad_norm = hooks.grad_norm(torch.nn.utils.clip_grad_norm_("
                       "model.parameters(), tc.max_grad_norm))"))),
    ("fit", "the LR never set on the optimizer (tc.lr throughout)",
     sub("train.fit", ('            g["lr"] = lr\n', "            pass\n"))),
    ("fit", "lr_at called with step + 1",
     sub("train.fit", ("lr = lr_at(step, len(steps), tc)", "lr = lr_at(step + 1, len(steps), tc)"))),
    ("fit", "the schedule over max_steps instead of every epoch's steps",
     sub("train.fit", ("lr = lr_at(step, len(steps), tc)", "lr = lr_at(step, stop, tc)"))),
    ("fit", "no zero_grad (gradients add up across steps)",
     sub("train.fit", ("        opt.zero_grad(set_to_none=True)\n", ""))),
    ("fit", "an optimizer step even when nothing is supervised (n == 0)",
     sub("train.fit", ("if n > 0:", "if True:"))),
    ("fit", "weight decay 0.01 (AdamW's default)",
     sub("train.fit", ("weight_decay=0.0,", "weight_decay=0.01,"))),
    ("fit", "AdamW's default betas (0.9, 0.999)",
     sub("train.fit", ("betas=ADAM_BETAS, ", ""))),
    ("fit", "first_step's return ignored (a resumed run starts over)",
     sub("train.fit", ("start = hooks.first_step(model, opt, len(steps))",
                       "start = 0\n    hooks.first_step(model, opt, len(steps))"))),
    ("fit", "max_steps ignored",
     sub("train.fit", ("stop = min(len(steps), tc.max_steps or len(steps))", "stop = len(steps)"))),
    ("fit", "the normaliser of this process's part only (torchrun)",
     sub("train.fit", ("pad_id, n, autocast, **loss)", "pad_id, step_count(part, tc.loss_norm), autocast, **loss)"))),
    ("fit", "step_loss's return ignored (under torchrun: one process's loss)",
     sub("train.fit", ("mean = hooks.step_loss(mean, n)", "hooks.step_loss(mean, n)"))),
    ("fit", "history's steps counted from 0",
     sub("train.fit", ('"step": step + 1,', '"step": step,'))),
    ("fit", "gradient checkpointing flag not set",
     sub("train.fit", ("model.gradient_checkpointing = tc.grad_ckpt", "pass"))),
    ("fit", "model left in train mode",
     sub("train.fit", ("    model.eval()\n", ""))),
    # --- answer extraction (§6)
    ("extract_answer", r"the first \boxed{} instead of the last",
     sub("grader._last_boxed", (r'i = max(text.rfind("\\boxed"), text.rfind("\\fbox"))', r'i = text.find("\\boxed")'))),
    ("extract_answer", "a regex box: nested braces not counted",
     [Patch("grader._last_boxed", func=_regex_box)]),
    ("extract_answer", "boxes inside <think> count",
     sub("grader.extract_answer", ('text = text.rsplit("</think>", 1)[-1]', "text = text"))),
    ("extract_answer", "split at the first </think>, not the last",
     sub("grader.extract_answer", ('text.rsplit("</think>", 1)[-1]', 'text.split("</think>", 1)[-1]'))),
    ("extract_answer", "last-number fallback on every dataset",
     sub("grader.extract_answer", ('if dataset == "gsm8k" and (nums := _NUMBER.findall(text)):',
                                   "if (nums := _NUMBER.findall(text)):"))),
    ("extract_answer", "the first number instead of the last",
     sub("grader.extract_answer", ('return nums[-1].replace(",", "")', 'return nums[0].replace(",", "")'))),
    ("extract_answer", "`#### 1,000` keeps its comma",
     sub("grader.extract_answer", ('return ans.replace(",", "") if _NUMBER.fullmatch(ans) else ans', "return ans"))),
]


# ----------------------------------------------------------------------------- the harness

def contract_tests(exercise, tiers=("public", "instructor")):
    """The exercise's tests, in file order: [(name, function)]: its public contract tests
    (tests/exercises/test_<exercise>.py), then its instructor tests (tests/instructor/test_<exercise>_ref.py,
    named "ref: test_...")."""
    out = []
    for tier, module_name, label in (("public", f"test_{exercise}", ""), ("instructor", f"test_{exercise}_ref", "ref: ")):
        if tier not in tiers or (tier == "instructor" and not (INSTRUCTOR_TESTS / f"{module_name}.py").is_file()):
            continue
        module = importlib.import_module(module_name)
        tests = [(label + n, f) for n, f in vars(module).items() if n.startswith("test_") and inspect.isfunction(f)]
        out += sorted(tests, key=lambda t: t[1].__code__.co_firstlineno)
    return out


def failing(exercise, patches, monkeypatch):
    """Names of the exercise's contract tests that fail with `patches` swapped in (all restored after)."""
    with monkeypatch.context() as m:
        for p in patches:
            owner, attr, fn = p.build()
            m.setattr(owner, attr, fn)
        out = []
        for name, test in contract_tests(exercise):
            try:
                test()
            except (Exception, pytest.fail.Exception) as e:
                out.append((name, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))
        return out


def stub_patches(exercise):
    regions = assignment.exercises(ROOT)[exercise]
    return [Patch(f"{Path(r.file).stem}.{r.func}", stub=True) for r in regions]


EXERCISES = list(assignment.exercises(ROOT))


def test_every_exercise_has_contract_tests_and_variants():
    assert len(EXERCISES) >= 8, EXERCISES
    modules = sorted(p.stem.removeprefix("test_") for p in EXERCISE_TESTS.glob("test_*.py"))
    assert modules == sorted(EXERCISES + ["lab"]), \
        "one tests/exercises/test_<name>.py per marked exercise and the lab, and no other"
    assert {v[0] for v in VARIANTS} == set(EXERCISES), "every exercise lists its usual wrong variants"
    for ex in EXERCISES:
        tests = contract_tests(ex)
        assert tests, ex
        for name, fn in tests:
            assert not inspect.signature(fn).parameters, f"{ex}: {name} must take no arguments (fixtures break the harness)"


@pytest.mark.parametrize("exercise", EXERCISES)
def test_reference_passes_and_stub_fails_every_check(exercise, monkeypatch):
    assert failing(exercise, [], monkeypatch) == [], "the reference must pass its contract tests in-process too"
    names = [n for n, _ in contract_tests(exercise)]
    stubbed = failing(exercise, stub_patches(exercise), monkeypatch)
    assert [n for n, _ in stubbed] == names, f"checks that pass on the stub: {set(names) - {n for n, _ in stubbed}}"
    assert all("NotImplementedError" in msg for _, msg in stubbed)


@pytest.mark.parametrize("exercise", EXERCISES)
def test_no_other_problem_runs_this_exercise(exercise, monkeypatch):
    """With this exercise stubbed, every OTHER exercise's tests (both tiers) still pass: they never run its code,
    so a wrong variant of it can cost its own points only (grade's all-or-nothing points per problem)."""
    with monkeypatch.context() as m:
        for p in stub_patches(exercise):
            owner, attr, fn = p.build()
            m.setattr(owner, attr, fn)
        broken = {other: failing(other, [], monkeypatch) for other in EXERCISES if other != exercise}
    assert not any(broken.values()), {k: v for k, v in broken.items() if v}


@pytest.mark.parametrize("exercise, mistake, patches", VARIANTS, ids=[f"{e}: {m}" for e, m, _ in VARIANTS])
def test_wrong_variant_is_caught(exercise, mistake, patches, monkeypatch):
    caught = failing(exercise, patches, monkeypatch)
    assert caught, f"{exercise}: no contract test fails on the wrong variant '{mistake}'"


def table(markdown=True):
    """variant -> the contract tests that catch it."""
    mp = pytest.MonkeyPatch()
    rows = []
    for exercise, mistake, patches in VARIANTS:
        caught = failing(exercise, patches, mp)
        rows.append((exercise, mistake, ", ".join(n.removeprefix("test_") for n, _ in caught) or "NOT CAUGHT"))
    lines = ["| problem | usual wrong variant | caught by (tests/exercises/test_<problem>.py; ref: tests/instructor/test_<problem>_ref.py) |", "|---|---|---|"]
    lines += [f"| `{e}` | {m.replace('|', '/')} | {c} |" for e, m, c in rows]
    return "\n".join(lines)


DOC = ROOT / "docs" / "teaching.md"
DOC_BLOCK = re.compile(r"(<!-- variants:start -->\n)(.*?)(<!-- variants:end -->)", re.S)


def test_teaching_guide_lists_every_variant():
    """docs/teaching.md's table names exactly these variants (its last column comes from `table()`)."""
    block = DOC_BLOCK.search(DOC.read_text()).group(2)
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in block.splitlines()[2:]]
    assert [(r[0].strip("`"), r[1]) for r in rows] == [(e, m.replace("|", "/")) for e, m, _ in VARIANTS], \
        "docs/teaching.md is out of date: python tests/test_exercise_variants.py --write-doc"


def test_readme_counts_the_variants():
    found = re.findall(r"catch each of (\d+)\s+usual\s+wrong\s+variants", (ROOT / "README.md").read_text())
    assert found == [str(len(VARIANTS))], f"README.md's course section should say {len(VARIANTS)} variants"


if __name__ == "__main__":
    import torch
    torch.set_num_threads(1)   # tiny models: one thread is fastest (see tests/conftest.py)
    t = table()
    if "--write-doc" in sys.argv:
        DOC.write_text(DOC_BLOCK.sub(lambda m: m.group(1) + t + "\n" + m.group(3), DOC.read_text()))
    print(t)
