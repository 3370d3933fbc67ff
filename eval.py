"""Score a model on math word problems, and run the paper's two prefix analyses (PAPER.md §1.2).

    python eval.py --model DIR --data gsm8k_test.jsonl [--limit 100] [--n 4 --temperature 0.6]
    python eval.py --model DIR --data q.jsonl --analysis prefix-consistency --num-samples 16
    python eval.py --model DIR --data q.jsonl --analysis error-position --num-samples 8 --rollouts 8

Datasets are JSONL with `question` (or `problem`) and `answer` (GSM8K text ending in `#### n`, or a
bare answer) or `expected_answer` (MATH500). The prompt is the model's own chat template around the
bare question: zero-shot, greedy by default, as in the paper (PAPER.md §5.3-5.5).

Grading has two halves. `extract_answer` finds the final answer of a response: it looks only after
`</think>` when present (R1-style), takes the last `\\boxed{}`/`\\fbox{}`, else a `#### n` line, else,
for GSM8K only, the last number (OpenAI's grade-school-math convention; on MATH a last-number guess is
usually wrong). `is_equiv` follows the MATH convention (hendrycks/math `is_equiv`, plus the checklist
in ECOSYSTEM.md §2.6): string normalisation; exact comparison of plain numbers with a relative
tolerance; tuples, intervals and matrices element by element with their brackets; sets and bare lists
in any order; then sympy. sympy only ever sees expressions written by our own small LaTeX translator,
and runs in a forked child that is killed after a timeout, so no answer can hang the grader.
One deliberate convention: `10\\%` equals `10` (MATH drops the percent sign).
"""
import argparse
import json
import math
import multiprocessing
import os
import re
import sys
import time
from collections import Counter
from fractions import Fraction

MAX_LEN = 1000        # longer "answers" are compared as plain strings only (keeps every step bounded)
REL_TOL = 1e-6        # numbers: relative tolerance (the official code uses 1e-4: 123450 == 123456)
SYMPY_TIMEOUT = 1.0   # seconds for one symbolic comparison, fork included
BUDGET = 1.5          # seconds of symbolic work per verdict (a list of 40 elements may need many)


# --- answer extraction -------------------------------------------------------------------------------

def _last_boxed(text):
    """Content of the last \\boxed{...} / \\fbox{...} (nested braces counted), or of `\\boxed 5`."""
    i = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if i < 0:
        return None
    j = i + (6 if text.startswith("\\boxed", i) else 5)
    k = len(text) - len(text[j:].lstrip(" "))
    if text[k:k + 1] == "{":
        depth = 0
        for p in range(k, len(text)):   # one linear pass; `\{` and `\}` pair up like plain braces
            depth += {"{": 1, "}": -1}.get(text[p], 0)
            if depth == 0:
                return text[k + 1:p].strip() or None
        return None                     # unbalanced: the response was cut off inside its answer
    if k > j:                           # `\boxed 5` (lm-eval's last_boxed_only_string): up to `$`/EOL
        return re.split(r"[$\n]", text[k:], maxsplit=1)[0].strip() or None
    return None


_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")   # no nested quantifiers: linear on any input


def extract_answer(text, dataset=None):
    """Final answer of a response (a string) or None. dataset="gsm8k" enables the last-number fallback."""
    if not text:
        return None
    text = text.rsplit("</think>", 1)[-1]           # R1-style: grade only what follows the reasoning
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed
    marks = re.findall(r"####[ \t]*([^\n]*)", text)
    if marks and marks[-1].strip():
        ans = marks[-1].strip().rstrip(".")
        if dataset == "gsm8k" and (nums := _NUMBER.findall(ans)):
            ans = nums[0]                            # `#### 18 dollars` -> 18
        return ans.replace(",", "") if _NUMBER.fullmatch(ans) else ans
    if dataset == "gsm8k" and (nums := _NUMBER.findall(text)):
        return nums[-1].replace(",", "")
    return None


# --- normalisation -----------------------------------------------------------------------------------

_SIMPLE = [("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\cfrac", "\\frac"), ("\\displaystyle", ""),
           ("~", " "), ("^{\\circ}", ""), ("^\\circ", ""), ("\\circ", ""), ("°", ""), ("\\degree", ""),
           ("\\%", ""), ("%", ""), ("\\$", ""), ("$", ""), ("{,}", ","), ("bmatrix", "pmatrix")]
_TEXT = r"\\(?:text|textnormal|textrm|mbox|mathrm)"
_UNIT = re.compile(r"(.*\d.*?)" + _TEXT + r"\{\s*[A-Za-z][A-Za-z .]*\}(\^\{?\d\}?)?")
_WRAP = re.compile(r"(?:" + _TEXT + r"|\\(?:textbf|mathbf|boldsymbol|operatorname))\{([^{}]*)\}")
_VAR_PREFIX = re.compile(r"(?:[a-zA-Z]|\\[a-zA-Z]+)(?:_\{?\w+\}?)?\s*(?:=|\\in(?![a-zA-Z]))\s*(.+)", re.S)


def _closes_at_end(s, start):
    """True if the bracket opened at s[start] is closed by the last character of s."""
    depth = 0
    for p in range(start, len(s)):
        depth += 1 if s[p] in "([{" else -1 if s[p] in ")]}" else 0
        if depth == 0:
            return p == len(s) - 1
    return False


def normalize(s):
    """Canonical string form of an answer, MATH-style (both sides of a comparison go through it)."""
    s = str(s).strip().strip("$").strip()
    if len(s) > MAX_LEN:
        return s
    s = re.sub(r"^\\\(|\\\)$|^\\\[|\\\]$", "", s).strip()
    while (m := re.match(r"\\(?:boxed|fbox)\s*\{", s)) and _closes_at_end(s, m.end() - 1):
        s = s[m.end():-1].strip()                              # a box left inside the extracted answer
    s = re.sub(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|big|Big)(?![a-zA-Z])", "", s)
    s = re.sub(r",\s*\\!\s*", ",", s)                          # `10,\! 080`: a thousands separator
    s = re.sub(r"(?<!\\)\\[,;: ]", " ", s).replace("\\!", "")  # spacing (but `\\ ` ends a matrix row)
    s = re.sub(r"\\(le|ge)(?![a-zA-Z])", r"\\\1q", s)
    for a, b in _SIMPLE:
        s = s.replace(a, b)
    s = re.sub(r"\s+", " ", s).strip()
    while (m := _UNIT.fullmatch(s)) and m.group(1).strip():    # `15\mbox{ cm}^2`, `5.4 \text{ cents}`
        s = m.group(1).strip()
    s = _WRAP.sub(r"\1", s).strip()                             # `\text{Evelyn}` -> Evelyn
    s = re.sub(r"\^\{(\w)\}", r"^\1", re.sub(r"_\{(\w+)\}", r"_\1", s))
    s = re.sub(r"\\frac\s*(\w)\s*(\w)", r"\\frac{\1}{\2}", s)       # \frac43, \frac 4 3
    s = re.sub(r"\\frac\s*(\w)\s*\{", r"\\frac{\1}{", s)            # \frac1{12}
    s = re.sub(r"\\frac\{([^{}]*)\}\s*(\w)", r"\\frac{\1}{\2}", s)  # \frac{12}5
    s = re.sub(r"\\sqrt\s*(\w)", r"\\sqrt{\1}", s)                  # \sqrt2
    if (m := _VAR_PREFIX.fullmatch(s)) and "=" not in m.group(1):   # `x = 5`, `y=2x+3`, `x \in [1,2]`
        s = m.group(1)
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):   # thousands separators, but never `1,2` or `1, 234`
        s = s.replace(",", "")
    # Spaces carry no meaning, except that `\pi r` must not turn into the command `\pir`.
    s = re.sub(r"(\\[a-zA-Z]+) (?=[a-zA-Z])", "\\1\0", s).replace(" ", "").replace("\0", " ")
    s = re.sub(r"^(?=[0-9A-F]*\d)([0-9A-F]+)_\d+$", r"\1", s)   # 204_5 -> 204: the question names the base
    return s.rstrip(".")


# --- comparison --------------------------------------------------------------------------------------

def _split_top(s, sep):
    """Split s at the occurrences of sep that are outside all brackets."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        if s[i] in "([{":
            depth += 1
        elif s[i] in ")]}":
            depth -= 1
        elif depth == 0 and s.startswith(sep, i):
            parts.append(s[start:i])
            i = start = i + len(sep)
            continue
        i += 1
    return parts + [s[start:]]


def _structure(s):
    """(kind, shape, items) of a matrix, tuple/interval, set, union or bare list; None for a scalar."""
    if m := re.fullmatch(r"\\begin\{pmatrix\}(.*)\\end\{pmatrix\}", s):
        rows = [r.split("&") for r in m.group(1).split("\\\\") if r]
        return ("matrix", [len(r) for r in rows], [c for r in rows for c in r])
    if len(parts := _split_top(s, "\\cup")) > 1:
        return ("set", "", parts)
    if s.startswith("\\{") and s.endswith("\\}") and _closes_at_end(s, 1):
        return ("set", "", _split_top(s[2:-2], ","))
    if s[:1] in "([" and s[-1:] in ")]" and _closes_at_end(s, 0):
        return ("seq", s[0] + s[-1], _split_top(s[1:-1], ","))   # `(3,4]` != `[3,4]`: brackets kept
    if len(parts := _split_top(s, ",")) > 1:
        return ("set", "", parts)                                # "enter all solutions": any order
    return None


def is_equiv(pred, gold):
    """True if answer `pred` matches reference `gold`. Returns within about BUDGET + 0.1 seconds."""
    if pred is None or gold is None:
        return False
    p, g = normalize(pred), normalize(gold)
    if len(p) > MAX_LEN or len(g) > MAX_LEN:
        return p == g
    try:
        return _equiv(p, g, time.monotonic() + BUDGET)
    except RecursionError:                 # 500 nested brackets: not worth a verdict
        return False


def _equiv(p, g, deadline):
    if p.replace(" ", "") == g.replace(" ", ""):
        return True
    if time.monotonic() > deadline:        # out of time (e.g. a long list): no verdict = not equal
        return False
    sp, sg = _structure(p), _structure(g)
    if sp and sp[0] == "seq" and len(sp[2]) == 1:
        return _equiv(sp[2][0], g, deadline)                     # `(5)` is just 5
    if sg and sg[0] == "seq" and len(sg[2]) == 1:
        return _equiv(p, sg[2][0], deadline)
    if sp or sg:
        if not (sp and sg) or sp[:2] != sg[:2] or len(sp[2]) != len(sg[2]):
            return False
        if sp[0] != "set":
            return all(_equiv(a, b, deadline) for a, b in zip(sp[2], sg[2]))
        left = list(sg[2])                  # any order: greedy matching, identical strings first
        for a in sorted(sp[2], key=lambda a: a not in left):
            hit = a if a in left else next((b for b in left if _equiv(a, b, deadline)), None)
            if hit is None:
                return False
            left.remove(hit)
        return True
    a, b = _to_fraction(p), _to_fraction(g)
    if a is not None and b is not None:
        return abs(a - b) <= Fraction(REL_TOL) * max(abs(a), abs(b))   # exact, so no float overflow
    try:   # a mixed number is a sum, but the translator would read `1\frac45` as a product
        ta = f"Rational('{a}')" if a is not None else latex_to_sympy(p)
        tb = f"Rational('{b}')" if b is not None else latex_to_sympy(g)
    except (ValueError, RecursionError):   # outside the subset: the string comparison above decided
        return False
    return ta == tb or _sympy_equal(ta, tb, min(SYMPY_TIMEOUT, deadline - time.monotonic()))


def _to_fraction(s):
    """Exact value of a plain number: 25, 025, -1.5, .5, 3/4, \\frac{3}{4}, -\\frac{3}{4}, 1\\frac{4}{5}."""
    m = re.fullmatch(r"(-?)(\d+)?\\frac\{(-?\d+(?:\.\d+)?)\}\{(-?\d+(?:\.\d+)?)\}", s)
    try:
        if m:
            sign, whole, num, den = m.groups()
            value = Fraction(whole or 0) + Fraction(num) / Fraction(den)   # mixed number 1\frac45
            return -value if sign else value
        if re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)(/\d+)?", s):
            return Fraction(s)
    except (ValueError, ZeroDivisionError):   # 1/0, or more than 4300 digits
        return None
    return None


# --- LaTeX -> sympy: a small recursive-descent translator whose output is a Python expression -------

_FUNCS = {"sin", "cos", "tan", "cot", "sec", "csc", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh",
          "ln", "log", "exp"}
_GREEK = {"alpha", "beta", "gamma", "delta", "theta", "lambda", "mu", "phi", "omega", "sigma", "tau"}
_TOKEN = re.compile(r"\\[a-zA-Z]+|\d+\.?\d*|\.\d+|\S")
_FACTOR = re.compile(r"[\w(]|\.\d|\\(?:frac|sqrt|pi|infty|" + "|".join(_FUNCS | _GREEK) + r")$")


def latex_to_sympy(s):
    """Translate the common LaTeX subset (numbers, + - * / ^ !, \\frac, \\sqrt, \\pi, \\infty, |x|,
    functions, Greek letters, implicit products such as 2\\sqrt{3} or 3x, at most one `=`) into a
    sympy expression string. Raises ValueError on anything else (the caller then says "not equal")."""
    if len(s) > 200 or re.search(r"[a-zA-Z]{3}", re.sub(r"\\[a-zA-Z]+", " ", s)):
        raise ValueError("too long, or a word rather than a product of variables")
    toks, pos = [], [0]

    def peek():
        return toks[pos[0]] if pos[0] < len(toks) else None

    def take(expected=None):
        t = peek()
        if t is None or (expected is not None and t != expected):
            raise ValueError(f"expected {expected!r}, got {t!r}")
        pos[0] += 1
        return t

    def expr():
        out = term()
        while peek() in ("+", "-"):
            out = f"({out}){take()}({term()})"
        return out

    def term():
        out = unary()
        while (t := peek()) is not None:
            if t in ("*", "\\cdot", "\\times", "/", "\\div"):
                op = "/" if take() in ("/", "\\div") else "*"
                out = f"({out}){op}({unary()})"
            elif _FACTOR.match(t):
                out = f"({out})*({power()})"          # implicit product
            else:
                break
        return out

    def unary():
        if peek() in ("-", "+"):
            return ("-" if take() == "-" else "+") + f"({unary()})"
        return power()

    def power():
        out = atom()
        if peek() == "^":
            take()
            exponent = unary() if peek() == "-" else atom()
            if "**" in exponent or re.search(r"\d{5}", exponent):   # towers hang sympy: refuse early
                raise ValueError("power tower or huge exponent")
            out = f"({out})**({exponent})"
        if peek() == "!":
            take()
            out = f"factorial({out})"
        return out

    def group():                                      # {expr}, or one token as in \frac12
        if peek() != "{":
            return atom()
        take()
        out = expr()
        take("}")
        return out

    def atom():
        t = take()
        if re.fullmatch(r"\d+\.?\d*|\.\d+", t):
            if len(t) > 30:
                raise ValueError("long literal")
            return f"Rational('{t}')"
        if t.isalpha() and len(t) == 1:
            return {"i": "I", "e": "E"}.get(t, f"Symbol('{t}')")   # as in MATH: i and e are constants
        if t in ("(", "{", "|"):
            out = expr()
            take({"(": ")", "{": "}", "|": "|"}[t])
            return f"Abs({out})" if t == "|" else out
        name = t[1:]
        if name == "frac":
            return f"({group()})/({group()})"
        if name == "sqrt":
            if peek() != "[":
                return f"sqrt({group()})"
            take()
            n = expr()
            take("]")
            return f"root({group()}, {n})"
        if name in ("pi", "infty"):
            return {"pi": "pi", "infty": "oo"}[name]
        if name in _GREEK:
            return f"Symbol('{name}')"
        if name in _FUNCS:
            fn = {"ln": "log", "arcsin": "asin", "arccos": "acos", "arctan": "atan"}.get(name, name)
            if peek() == "^":                            # \sin^2 x = (sin x)^2
                take()
                e = atom()
                return f"({fn}({power()}))**({e})"
            return f"{fn}({power()})"
        raise ValueError(f"unsupported token {t!r}")

    outs = []
    for side in _split_top(s, "="):
        toks[:], pos[0] = _TOKEN.findall(side), 0
        outs.append(expr())
        if peek() is not None:
            raise ValueError(f"unexpected {peek()!r}")
    if len(outs) > 2:
        raise ValueError("more than one '='")
    return outs[0] if len(outs) == 1 else f"Eq({outs[0]}, {outs[1]})"


_SYMPY_NAMES = ("Rational", "Symbol", "I", "E", "pi", "oo", "Abs", "sqrt", "root", "factorial", "sin",
                "cos", "tan", "cot", "sec", "csc", "asin", "acos", "atan", "sinh", "cosh", "tanh", "log",
                "exp", "Eq")


def _sympy_same(a, b):
    """(In the child.) Are two translated expressions equal, or two equations equal up to a factor?"""
    import sympy
    ns = {k: getattr(sympy, k) for k in _SYMPY_NAMES}
    x, y = (eval(e, {"__builtins__": {}}, ns) for e in (a, b))   # only ever our translator's output
    if isinstance(x, sympy.Equality) or isinstance(y, sympy.Equality):
        if not (isinstance(x, sympy.Equality) and isinstance(y, sympy.Equality)):
            return False
        q = sympy.simplify((x.lhs - x.rhs) / (y.lhs - y.rhs))   # 2x+2=0 is x+1=0
        return q.is_number and q.is_finite and q != 0
    if x == y or sympy.expand(x - y) == 0:
        return True
    if not (x.free_symbols or y.free_symbols):
        vx, vy = complex(sympy.N(x, 30)), complex(sympy.N(y, 30))
        finite = math.isfinite(abs(vx)) and math.isfinite(abs(vy))   # oo equals only oo (x == y above)
        return finite and abs(vx - vy) <= REL_TOL * max(abs(vx), abs(vy))
    return sympy.simplify(x - y) == 0


def _sympy_worker(a, b, conn):
    try:
        conn.send(bool(_sympy_same(a, b)))
    except Exception:                     # any sympy failure means "not shown to be equal"
        conn.send(False)


_SYMPY_CACHE = {}   # finished verdicts: majority votes and the analyses grade the same strings often


def _sympy_equal(a, b, timeout):
    """_sympy_same in a forked child that is killed after `timeout` seconds (no verdict = not equal)."""
    if (a, b) in _SYMPY_CACHE or timeout <= 0:
        return _SYMPY_CACHE.get((a, b), False)
    import sympy  # noqa: F401  (imported here once, so that every forked child already has it)
    try:
        ctx = multiprocessing.get_context("fork")
        recv, send = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_sympy_worker, args=(a, b, send), daemon=True)
        child.start()
    except (ValueError, AssertionError, OSError):   # no fork on this platform, or we are a daemon
        return False
    try:
        if recv.poll(timeout):
            if len(_SYMPY_CACHE) > 100_000:
                _SYMPY_CACHE.clear()
            _SYMPY_CACHE[a, b] = recv.recv()
        return _SYMPY_CACHE.get((a, b), False)
    except EOFError:
        return False
    finally:
        child.kill()
        child.join()
        recv.close()
        send.close()


# --- data --------------------------------------------------------------------------------------------

def load_eval_rows(path, limit=None, require_answer=True):
    """JSONL -> [{"question", "gold", "dataset"}], dataset being "gsm8k" for `#### n` answers, else None.
    A row without a question, or without an answer when require_answer, raises UpftError naming the
    file and line. Training files (train.py) may omit answers: their gold is then None."""
    from data import UpftError, read_jsonl
    out = []
    for i, row in enumerate(read_jsonl(path)[:limit]):
        question = next((row[k] for k in ("question", "problem") if row.get(k) is not None), None)
        answer = next((row[k] for k in ("answer", "expected_answer") if row.get(k) is not None), None)
        gsm8k = isinstance(answer, str) and "####" in answer
        gold = str(answer).rsplit("####", 1)[-1].strip().replace(",", "") if gsm8k else str(answer).strip()
        if answer is None and not require_answer:
            gold = None   # a training question without an answer (fine unless the method is rft)
        missing = ("'question' (or 'problem')" if not isinstance(question, str) or not question.strip()
                   else "'answer' (or 'expected_answer')" if gold == "" or (answer is None and require_answer)
                   else None)
        if missing:   # read_jsonl skips blank lines, so count them again to name the real line
            with open(path, encoding="utf-8") as f:
                line = [n for n, text in enumerate(f, 1) if text.strip()][i]
            raise UpftError(f"{path}:{line}: row has no {missing} (keys: {', '.join(row) or 'none'})")
        out.append({"question": question, "gold": gold, "dataset": "gsm8k" if gsm8k else None})
    return out


# --- evaluation --------------------------------------------------------------------------------------

def wilson(k, n, z=1.96):
    """Wilson score interval for k successes in n trials (sane at 0% and 100%, unlike p +- z*se)."""
    if n == 0:
        return [0.0, 1.0]
    p, d = k / n, 1 + z * z / n
    centre, half = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return [max(0.0, centre - half), min(1.0, centre + half)]


def majority_vote(answers):
    """Most frequent answer by normalised form; a tie goes to the earliest sample; None if no answer."""
    keys = [normalize(a) for a in answers if a is not None]
    if not keys:
        return None
    best = Counter(keys).most_common(1)[0][0]   # most_common keeps first-seen order among ties
    return next(a for a in answers if a is not None and normalize(a) == best)


def evaluate(model, tok, rows, max_new_tokens, batch_size=64, n=1, temperature=0.0, top_p=1.0, seed=0,
             progress=True):
    """Generate n responses per row ({question, gold[, dataset]}), grade them -> (records, summary).

    summary["accuracy"] is the share of correct responses for n == 1 and the mean pass@1 for n > 1
    (then "maj@n" grades the majority answer). batch_size counts sequences: batch_size // n prompts."""
    import upft
    from model import generate
    outs = generate(model, [upft.chat_prompt(tok, r["question"]) for r in rows], max_new_tokens,
                    temperature=temperature, top_p=top_p, stop_ids=tok.eos_ids, seed=seed, num_samples=n,
                    batch_size=max(1, batch_size // n), progress=progress)
    records = []
    for i, row in enumerate(rows):
        ids = outs[i * n:(i + 1) * n]
        texts = [tok.decode(x, skip_special_tokens=True) for x in ids]
        answers = [extract_answer(t, row.get("dataset")) for t in texts]
        correct = [is_equiv(a, row["gold"]) for a in answers]
        rec = {"index": i, "question": row["question"], "gold": row["gold"]}
        if n == 1:
            rec.update(response=texts[0], answer=answers[0], correct=correct[0], tokens=len(ids[0]))
        else:
            vote = majority_vote(answers)
            rec.update(responses=texts, answers=answers, sample_correct=correct, tokens=[len(x) for x in ids],
                       majority_answer=vote, correct=is_equiv(vote, row["gold"]))
        records.append(rec)
    return records, summarize(records, n, max_new_tokens)


def summarize(records, n, max_new_tokens):
    """Metrics of evaluate()'s records. 95% intervals: Wilson for a share of questions; for pass@1
    (n > 1) a normal approximation over the per-question means."""
    N, k = max(len(records), 1), sum(r["correct"] for r in records)
    answers = [a for r in records for a in (r["answers"] if n > 1 else [r["answer"]])]
    lengths = [t for r in records for t in (r["tokens"] if n > 1 else [r["tokens"]])]
    s = {"questions": len(records), "samples_per_question": n,
         "no_answer_rate": sum(a is None for a in answers) / max(len(answers), 1),
         "truncated_rate": sum(t >= max_new_tokens for t in lengths) / max(len(lengths), 1),
         "mean_tokens": sum(lengths) / max(len(lengths), 1)}
    if n == 1:
        return {"accuracy": k / N, "accuracy_ci95": wilson(k, len(records)), "correct": k,
                "ci_method": "Wilson score", **s}
    per_q = [sum(r["sample_correct"]) / n for r in records]
    mean = sum(per_q) / N
    half = 1.96 * math.sqrt(sum((x - mean) ** 2 for x in per_q) / max(N - 1, 1) / N)
    return {"accuracy": mean, "pass@1": mean, "pass@1_ci95": [max(0.0, mean - half), min(1.0, mean + half)],
            "maj@n": k / N, "maj@n_ci95": wilson(k, len(records)), "majority_correct": k,
            "ci_method": "pass@1: normal approximation over per-question means; maj@n: Wilson score", **s}


# --- the paper's analyses (PAPER.md §1.2, Fig. 2) ---------------------------------------------------

GRID = [2 ** k for k in range(10)]   # prefix lengths t = 1, 2, 4, ..., 512 tokens


def prefix_consistency(model, tok, rows, num_samples, max_new_tokens, temperature=0.6, top_p=1.0,
                       batch_size=64, seed=0):
    """Fig. 2a: for each t, M / (number of distinct t-token prefixes among the M samples of a question),
    averaged over questions. A sample shorter than t takes part with its whole, shorter, sequence."""
    import upft
    from model import generate
    M = num_samples
    outs = generate(model, [upft.chat_prompt(tok, r["question"]) for r in rows], max_new_tokens,
                    temperature=temperature, top_p=top_p, stop_ids=tok.eos_ids, seed=seed, num_samples=M,
                    batch_size=max(1, batch_size // M), progress=True)
    grid = [t for t in GRID if t <= max(map(len, outs), default=0)]
    avg = [sum(M / len({tuple(s[:t]) for s in outs[i * M:(i + 1) * M]}) for i in range(len(rows)))
           / max(len(rows), 1) for t in grid]
    return {"analysis": "prefix-consistency", "questions": len(rows), "samples_per_question": M,
            "prefix_len": grid, "avg_samples_per_prefix": avg}


def error_position(model, tok, rows, num_samples, rollouts, max_new_tokens, temperature=0.6, top_p=1.0,
                   batch_size=64, seed=0):
    """Fig. 2b: take the first correct and the first incorrect of M samples per question (questions
    lacking either are skipped); for t = 0 and each t of GRID shorter than the trajectory, run K
    rollouts from its first t tokens and report the share that reach the gold answer. Rollouts get
    the remaining budget, max_new_tokens - t, so every response has the same length limit."""
    import upft
    from model import generate
    kw = dict(temperature=temperature, top_p=top_p, stop_ids=tok.eos_ids, progress=True)
    prompts = [upft.chat_prompt(tok, r["question"]) for r in rows]
    outs = generate(model, prompts, max_new_tokens, seed=seed, num_samples=num_samples,
                    batch_size=max(1, batch_size // num_samples), **kw)

    def right(i, ids):
        text = tok.decode(ids, skip_special_tokens=True)
        return is_equiv(extract_answer(text, rows[i].get("dataset")), rows[i]["gold"])

    picked = []   # (kind, question index, sample ids)
    for i in range(len(rows)):
        samples = outs[i * num_samples:(i + 1) * num_samples]
        ok = [right(i, s) for s in samples]
        if True in ok and False in ok:
            picked += [("correct", i, samples[ok.index(True)]), ("incorrect", i, samples[ok.index(False)])]
    rates = {(kind, t): [] for kind in ("correct", "incorrect") for t in [0] + GRID}
    for t in [0] + GRID:                      # one batched generate per prefix length
        jobs = [(kind, i, s) for kind, i, s in picked if t == 0 or t < len(s)]
        if not jobs or max_new_tokens - t < 1:
            continue
        conts = generate(model, [prompts[i] + s[:t] for _, i, s in jobs], max_new_tokens - t, seed=seed + t + 1,
                         num_samples=rollouts, batch_size=max(1, batch_size // rollouts), **kw)
        for j, (kind, i, s) in enumerate(jobs):
            rates[kind, t].append(sum(right(i, s[:t] + c) for c in conts[j * rollouts:(j + 1) * rollouts])
                                  / rollouts)
    result = {"analysis": "error-position", "questions": len(rows), "questions_used": len(picked) // 2,
              "samples_per_question": num_samples, "rollouts": rollouts}
    for kind in ("correct", "incorrect"):
        ts = [t for t in [0] + GRID if rates[kind, t]]
        result[kind] = {"prefix_len": ts, "trajectories": [len(rates[kind, t]) for t in ts],
                        "success_rate": [sum(rates[kind, t]) / len(rates[kind, t]) for t in ts]}
    return result


def plot(result, path):
    """A PNG of an analysis when matplotlib is installed (it is optional); returns the path or None."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.5))
    if result["analysis"] == "prefix-consistency":
        ax.plot(result["prefix_len"], result["avg_samples_per_prefix"], marker="o")
        ax.set_ylabel("samples sharing a prefix")
    else:
        for kind in ("correct", "incorrect"):
            ax.plot(result[kind]["prefix_len"], result[kind]["success_rate"], marker="o", label=kind)
        ax.set_ylabel("rollout success rate")
        ax.legend()
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("prefix length t (tokens)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --- command line ------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Evaluate a checkpoint on a JSONL math dataset, or run the "
                                            "paper's prefix analyses.")
    p.add_argument("--model", required=True, help="checkpoint directory or Hugging Face id")
    p.add_argument("--data", required=True, help="JSONL with question/problem and answer/expected_answer")
    p.add_argument("--out", help="predictions JSONL (summary JSON beside it) or analysis JSON; default "
                                 "<data stem>.preds.jsonl or <data stem>.<analysis>.json")
    p.add_argument("--n", type=int, default=1, help="samples per question (> 1: pass@1 and majority vote)")
    p.add_argument("--temperature", type=float, help="default 0 (greedy) for evaluation, 0.6 for analyses")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--limit", type=int, help="only the first K questions")
    p.add_argument("--batch-size", type=int, default=64, help="sequences decoded together")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--analysis", choices=["prefix-consistency", "error-position"])
    p.add_argument("--num-samples", type=int, default=16, help="analyses: samples per question (M)")
    p.add_argument("--rollouts", type=int, default=8, help="error-position: rollouts per prefix (K)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    return p.parse_args(argv)


def run(args):
    from data import UpftError, write_json, write_jsonl
    for name in ("n", "max_new_tokens", "batch_size", "num_samples", "rollouts", "limit"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UpftError(f"--{name.replace('_', '-')} must be at least 1")
    if args.temperature is None:
        args.temperature = 0.6 if args.analysis else 0.0
    if args.temperature < 0 or not 0 < args.top_p <= 1:
        raise UpftError("--temperature must be >= 0 and --top-p in (0, 1]")
    rows = load_eval_rows(args.data, args.limit)     # bad input fails here, before the slow model load
    if args.n > 1 and args.temperature == 0:
        print("warning: --n > 1 with --temperature 0 gives n identical greedy samples", file=sys.stderr)
    import torch
    from data import Tokenizer
    from model import Transformer
    tok = Tokenizer.from_pretrained(args.model)
    model = Transformer.from_pretrained(args.model, device=args.device, dtype=getattr(torch, args.dtype))
    stem = os.path.splitext(os.path.basename(args.data))[0]
    common = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                  batch_size=args.batch_size, seed=args.seed)
    if args.analysis:
        if args.analysis == "prefix-consistency":
            result = prefix_consistency(model, tok, rows, args.num_samples, **common)
        else:
            result = error_position(model, tok, rows, args.num_samples, args.rollouts, **common)
        out = args.out or f"{stem}.{args.analysis}.json"
        write_json(out, {**result, "args": vars(args)})
        png = plot(result, os.path.splitext(out)[0] + ".png")
        print(json.dumps(result, indent=1))
        print(f"wrote {out}" + (f" and {png}" if png else " (no plot: matplotlib is not installed)"))
        return
    records, summary = evaluate(model, tok, rows, n=args.n, **common)
    out = args.out or f"{stem}.preds.jsonl"
    summary_path = os.path.splitext(out)[0] + ".summary.json"
    write_jsonl(out, records)
    write_json(summary_path, {**summary, "args": vars(args)})
    pct = "{:.1%}".format
    what, (lo, hi) = ((f"accuracy {pct(summary['accuracy'])}", summary["accuracy_ci95"]) if args.n == 1
                      else (f"pass@1 {pct(summary['pass@1'])}", summary["pass@1_ci95"]))
    print(f"{what} on {len(rows)} questions, 95% CI [{pct(lo)}, {pct(hi)}] ({summary['ci_method']})")
    if args.n > 1:
        print(f"maj@{args.n} {pct(summary['maj@n'])}, 95% CI [{pct(summary['maj@n_ci95'][0])}, "
              f"{pct(summary['maj@n_ci95'][1])}]")
    print(f"wrote {out} and {summary_path}")


def main(argv=None):
    from data import UpftError
    try:
        run(parse_args(argv))
    except UpftError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
