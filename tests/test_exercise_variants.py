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
for p in (ROOT, ROOT / "tests", EXERCISE_TESTS, ROOT / "scripts"):
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
    ("sample_next", "the given uniforms ignored (a fresh draw instead)",
     sub("model.sample_next", ("    if u is None:\n", "    if True:\n"))),
    ("sample_next", "inverse CDF with the first token whose mass REACHES u (a zero-probability token at u = 0)",
     sub("model.sample_next", (", right=True)", ")"))),
    # --- the KV cache
    ("kv_cache_update", "cache written at the wrong slot (always from slot 0)",
     sub("model.KVCache.update", ("self.k[layer, :, :, self.pos:self.pos + T] = k", "self.k[layer, :, :, :T] = k"),
         ("self.v[layer, :, :, self.pos:self.pos + T] = v", "self.v[layer, :, :, :T] = v"))),
    ("kv_cache_update", "cache written one slot late",
     sub("model.KVCache.update", ("self.k[layer, :, :, self.pos:self.pos + T] = k",
                                  "self.k[layer, :, :, self.pos + 1:self.pos + T + 1] = k"),
         ("self.v[layer, :, :, self.pos:self.pos + T] = v", "self.v[layer, :, :, self.pos + 1:self.pos + T + 1] = v"),
         (RETURN_CACHE, "return self.k[layer, :, :, 1:self.pos + T + 1], self.v[layer, :, :, 1:self.pos + T + 1]"))),
    ("kv_cache_update", "returns only the new keys/values",
     sub("model.KVCache.update", (RETURN_CACHE, "return k, v"))),
    ("kv_cache_update", "returns the whole preallocated buffer (unwritten slots included)",
     sub("model.KVCache.update", (RETURN_CACHE, "return self.k[layer], self.v[layer]"))),
    ("kv_cache_update", "update advances pos (once per layer)",
     sub("model.KVCache.update", (RETURN_CACHE, "self.pos += T\n    " + RETURN_CACHE))),
    ("kv_cache_update", "writes every layer at once",
     sub("model.KVCache.update", ("self.k[layer, :, :, self.pos:self.pos + T] = k", "self.k[:, :, :, self.pos:self.pos + T] = k"))),
    ("kv_cache_positions_mask", "positions that ignore left padding",
     sub("model.KVCache.positions", ("return (slots[None, :] - self.pad[:, None]).clamp(min=0)",
                                     "return slots[None, :].expand(len(self.pad), T)"))),
    ("kv_cache_positions_mask", "positions counted from 1",
     sub("model.KVCache.positions", ("- self.pad[:, None]).clamp(min=0)", "- self.pad[:, None] + 1).clamp(min=0)"))),
    ("kv_cache_positions_mask", "mask that lets queries see pad keys",
     sub("model.KVCache.mask", (VALID, "valid = (s <= q).expand(len(self.pad), -1, -1)"))),
    ("kv_cache_positions_mask", "mask that is not causal",
     sub("model.KVCache.mask", (VALID, "valid = (s >= self.pad[:, None, None]) & (q >= 0)"))),
    ("kv_cache_positions_mask", "pad queries see nothing (all-masked rows: NaN)",
     sub("model.KVCache.mask", ("return (valid | (s == q)).unsqueeze(1)", "return valid.unsqueeze(1)"))),
    ("kv_cache_positions_mask", "no mask whenever there is no padding (chunked prefill breaks)",
     sub("model.KVCache.mask", (NO_PAD_FAST_PATH, "if not self.any_pad:"))),
    ("kv_cache_positions_mask", "no mask for one-token steps even with padding",
     sub("model.KVCache.mask", (NO_PAD_FAST_PATH, "if T == 1 or (not self.any_pad and self.pos == 0):"))),
    # --- prefix voting (§3.3)
    ("prefix_vote", "ties broken by token id",
     sub("upft.prefix_vote", ("winner = next(p for p in prefixes if counts[p] == best)",
                              "winner = min(p for p in prefixes if counts[p] == best)"))),
    ("prefix_vote", "ties go to the prefix drawn last",
     sub("upft.prefix_vote", ("winner = next(p for p in prefixes if counts[p] == best)",
                              "winner = [p for p in prefixes if counts[p] == best][-1]"))),
    ("prefix_vote", "votes on whole samples, not on L-token prefixes",
     sub("upft.prefix_vote", ("prefixes = [tuple(s[:L]) for s in samples]", "prefixes = [tuple(s) for s in samples]"))),
    ("prefix_vote", "prefix cut off by one (L + 1 tokens)",
     sub("upft.prefix_vote", ("prefixes = [tuple(s[:L]) for s in samples]", "prefixes = [tuple(s[:L + 1]) for s in samples]"))),
    ("prefix_vote", "agreement over the distinct prefixes instead of all samples",
     sub("upft.prefix_vote", ("return list(winner), best / len(prefixes)", "return list(winner), best / len(counts)"))),
    ("prefix_vote", "agreement as a vote count",
     sub("upft.prefix_vote", ("return list(winner), best / len(prefixes)", "return list(winner), best"))),
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

def contract_tests(exercise):
    """The exercise's contract tests, in file order: [(name, function)]."""
    module = importlib.import_module(f"test_{exercise}")
    tests = [(n, f) for n, f in vars(module).items() if n.startswith("test_") and inspect.isfunction(f)]
    return sorted(tests, key=lambda t: t[1].__code__.co_firstlineno)


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
    assert modules == sorted(EXERCISES), "one tests/exercises/test_<name>.py per marked exercise, and no other"
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
    lines = ["| exercise | usual wrong variant | caught by (tests/exercises/test_<exercise>.py) |", "|---|---|---|"]
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
