"""The grader: find a response's final answer and decide whether it equals the reference answer.

No torch here: this file is plain Python (+ sympy in a child process), usable on its own.

`extract_answer` finds the final answer of a response: it looks only after `</think>` when present
(R1-style), takes the last `\\boxed{}`/`\\fbox{}`, else a `#### n` line, else, for GSM8K only, the last
number (OpenAI's grade-school-math convention; on MATH a last-number guess is usually wrong). This is
the paper's evaluation protocol (greedy, zero-shot, answer in the last box: docs/method.md §6).

`is_equiv` follows the MATH convention (hendrycks/math `is_equiv`, widened): string normalisation;
exact comparison of plain numbers with a relative tolerance; tuples, intervals and matrices element by
element with their brackets; sets and bare lists in any order; then sympy. sympy only ever sees
expressions written by our own small LaTeX translator, and runs in a forked child that is killed after
a timeout, so no answer can hang the grader. One deliberate convention: `10\\%` equals `10` (MATH drops
the percent sign).
"""
import math
import multiprocessing
import re
import time
from fractions import Fraction

MAX_LEN = 1000        # longer "answers" are compared as plain strings only (keeps every step bounded)
REL_TOL = 1e-6        # numbers: relative tolerance (the official code uses 1e-4: 123450 == 123456)
SYMPY_TIMEOUT = 1.0   # seconds for one symbolic comparison, fork included
BUDGET = 1.5          # seconds of symbolic work per verdict (a list of 40 elements may need many)


# --- answer extraction -------------------------------------------------------------------------------

def _last_boxed(text):
    """Content of the last \\boxed{...} / \\fbox{...} (nested braces counted), or of `\\boxed 5`.
    (Part of exercise extract_answer: you may write this helper or do it all in extract_answer.)

    Returns the stripped text between the braces of the LAST `\\boxed` or `\\fbox` in `text`, with
    nested braces counted (`\\boxed{\\frac{1}{2}}` -> `\\frac{1}{2}`); spaces before the brace are
    allowed. `\\boxed 5` (no brace) -> the text up to the next `$` or end of line. None when there is no
    box, when the box is empty, or when its braces never close (the response was cut off).
    """
    # >>> exercise: extract_answer
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
    # <<< exercise: extract_answer


_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")   # no nested quantifiers: linear on any input


def extract_answer(text, dataset=None):
    """Final answer of a response (a string) or None. dataset="gsm8k" enables the last-number fallback.
    (Exercise extract_answer, with the helper _last_boxed; docs/method.md §6: the answer is the last
    `\\boxed{}`.)

    Inputs: text, a model response (str; None or "" give None); dataset, None or "gsm8k".
    Output: the answer as a string (not normalised: is_equiv does that), or None.
    Contract, in order of precedence:
      1. If the text contains `</think>` (R1-style), look only at what follows the LAST one.
      2. The content of the LAST `\\boxed{...}` or `\\fbox{...}`, nested braces counted (see
         _last_boxed), even when an earlier box exists ("Try \\boxed{3}... no: \\boxed{5}" -> "5").
      3. Else the last `#### ...` line (GSM8K's format), stripped, a final "." removed; a plain number
         loses its thousands commas ("#### 1,234" -> "1234"); with dataset="gsm8k" only its first number
         is kept ("#### 18 dollars" -> "18").
      4. Else, for dataset="gsm8k" only, the LAST number in the text (commas removed); for any other
         dataset None (on MATH a last-number guess is usually wrong).
    """
    # >>> exercise: extract_answer
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
    # <<< exercise: extract_answer


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
    outs = []
    for side in _split_top(s, "="):
        parser = _LatexParser(_TOKEN.findall(side))
        outs.append(parser.expr())
        if parser.peek() is not None:
            raise ValueError(f"unexpected {parser.peek()!r}")
    if len(outs) > 2:
        raise ValueError("more than one '='")
    return outs[0] if len(outs) == 1 else f"Eq({outs[0]}, {outs[1]})"


class _LatexParser:
    """Recursive descent over the tokens of one side of an equation: expr = term (+|- term)*,
    term = unary ((*|/) unary | implicit product)*, unary = (-|+) unary | power, power = atom (^ exponent)? !?"""

    def __init__(self, tokens):
        self.toks, self.pos = tokens, 0

    def peek(self):
        return self.toks[self.pos] if self.pos < len(self.toks) else None

    def take(self, expected=None):
        t = self.peek()
        if t is None or (expected is not None and t != expected):
            raise ValueError(f"expected {expected!r}, got {t!r}")
        self.pos += 1
        return t

    def expr(self):
        out = self.term()
        while self.peek() in ("+", "-"):
            out = f"({out}){self.take()}({self.term()})"
        return out

    def term(self):
        out = self.unary()
        while (t := self.peek()) is not None:
            if t in ("*", "\\cdot", "\\times", "/", "\\div"):
                op = "/" if self.take() in ("/", "\\div") else "*"
                out = f"({out}){op}({self.unary()})"
            elif _FACTOR.match(t):
                out = f"({out})*({self.power()})"          # implicit product
            else:
                break
        return out

    def unary(self):
        if self.peek() in ("-", "+"):
            return ("-" if self.take() == "-" else "+") + f"({self.unary()})"
        return self.power()

    def power(self):
        out = self.atom()
        if self.peek() == "^":
            self.take()
            exponent = self.unary() if self.peek() == "-" else self.atom()
            if "**" in exponent or re.search(r"\d{5}", exponent):   # towers hang sympy: refuse early
                raise ValueError("power tower or huge exponent")
            out = f"({out})**({exponent})"
        if self.peek() == "!":
            self.take()
            out = f"factorial({out})"
        return out

    def group(self):                                  # {expr}, or one token as in \frac12
        if self.peek() != "{":
            return self.atom()
        self.take()
        out = self.expr()
        self.take("}")
        return out

    def atom(self):
        t = self.take()
        if re.fullmatch(r"\d+\.?\d*|\.\d+", t):
            if len(t) > 30:
                raise ValueError("long literal")
            return f"Rational('{t}')"
        if t.isalpha() and len(t) == 1:
            return {"i": "I", "e": "E"}.get(t, f"Symbol('{t}')")   # as in MATH: i and e are constants
        if t in ("(", "{", "|"):
            out = self.expr()
            self.take({"(": ")", "{": "}", "|": "|"}[t])
            return f"Abs({out})" if t == "|" else out
        return self.command(t)

    def command(self, t):                             # a backslash command, e.g. \frac, \sqrt, \sin
        name = t[1:]
        if name == "frac":
            return f"({self.group()})/({self.group()})"
        if name == "sqrt":
            if self.peek() != "[":
                return f"sqrt({self.group()})"
            self.take()
            n = self.expr()
            self.take("]")
            return f"root({self.group()}, {n})"
        if name in ("pi", "infty"):
            return {"pi": "pi", "infty": "oo"}[name]
        if name in _GREEK:
            return f"Symbol('{name}')"
        if name in _FUNCS:
            fn = {"ln": "log", "arcsin": "asin", "arccos": "acos", "arctan": "atan"}.get(name, name)
            if self.peek() == "^":                        # \sin^2 x = (sin x)^2
                self.take()
                e = self.atom()
                return f"({fn}({self.power()}))**({e})"
            return f"{fn}({self.power()})"
        raise ValueError(f"unsupported token {t!r}")


_SYMPY_NAMES = ("Rational", "Symbol", "I", "E", "pi", "oo", "Abs", "sqrt", "root", "factorial", "sin",
                "cos", "tan", "cot", "sec", "csc", "asin", "acos", "atan", "sinh", "cosh", "tanh", "log",
                "exp", "Eq")


def _sympy_same(a, b):
    """(In the child.) Are two translated expressions equal, or two equations equal up to a factor?"""
    import sympy  # slow to import (~1 s): only once a symbolic comparison is needed
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
