"""The course kit (scripts/assignment.py): markers, the student copy, the make -> grade -> solve round trip,
and the leak test: no exercise's answer anywhere else in the student copy.

Instructor-only: `make` leaves this file out of the student copy (it needs the reference bodies).
"""
import keyword
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import assignment  # noqa: E402

KIT = [sys.executable, str(ROOT / "scripts" / "assignment.py")]

SOURCE = '''def f(x):
    """Doc."""
    y = 1
    # >>> exercise: demo
    z = x + y
    return z
    # <<< exercise: demo


class C:
    def m(self):
        # >>> exercise: other
        return 1
        # <<< exercise: other
'''


def test_markers_and_stub():
    regions = assignment.find_regions(SOURCE, "demo.py")
    assert [(r.name, r.func, r.indent) for r in regions] == [("demo", "f", "    "), ("other", "C.m", "        ")]
    out = assignment.stub_text(SOURCE, "demo.py")
    assert out.count("raise NotImplementedError") == 2 and "z = x + y" not in out and "return 1" not in out
    assert '    y = 1\n    # >>> exercise: demo\n    raise NotImplementedError("exercise demo: f in demo.py;' in out
    ns = {}
    exec(out, ns)
    with pytest.raises(NotImplementedError, match="exercise demo"):
        ns["f"](1)
    # everything outside the markers is unchanged
    keep = [s for s in SOURCE.splitlines() if s not in ("    z = x + y", "    return z", "        return 1")]
    assert [s for s in out.splitlines() if "NotImplementedError" not in s] == keep


@pytest.mark.parametrize("bad, msg", [
    ("def f():\n    # >>> exercise: a\n    return 1\n", "never closed"),
    ("def f():\n    return 1\n    # <<< exercise: a\n", "without"),
    ("def f():\n    # >>> exercise: a\n    return 1\n    # <<< exercise: b\n", "does not match"),
    ("def f():\n    # >>> exercise: a\n    # <<< exercise: a\n", "empty body"),
    ("# >>> exercise: a\nx = 1\n# <<< exercise: a\n", "outside any function"),
    ("def f():\n    # >>> exercise: a\n    # >>> exercise: b\n    x = 1\n", "opens inside"),
])
def test_bad_markers_are_refused(bad, msg):
    with pytest.raises(assignment.KitError, match=msg):
        assignment.find_regions(bad, "bad.py")


HANDOUT = ROOT / "docs" / "assignment.md"
PROBLEM = re.compile(r"^## Problem (\d+): `(\w+)`.*\((\d+) points?\)$", re.M)


def handout_sections():
    """{problem: its section of the handout, heading to the next '## '}."""
    text = HANDOUT.read_text()
    heads = list(PROBLEM.finditer(text))
    return {m[2]: text[m.start():(heads[k + 1].start() if k + 1 < len(heads) else text.index("\n## ", m.end()))]
            for k, m in enumerate(heads)}


def test_reference_problems():
    """The handout's problems are the kit's: the same order and points (summing to 100), whole pieces to write
    (attention with RoPE and the KV cache, sampling, the generation loop, UPFT's rollouts, the fit loop)."""
    ex = assignment.exercises(ROOT)
    assert list(ex) + ["lab"] == assignment.problems(ROOT) == assignment.ORDER and len(ex) >= 7
    assert list(assignment.POINTS) == assignment.ORDER and sum(assignment.POINTS.values()) == 100  # one score of 100
    marks = PROBLEM.findall(HANDOUT.read_text())
    assert [(int(n), name) for n, name, _ in marks] == list(enumerate(assignment.ORDER, 1))
    assert {name: int(points) for _, name, points in marks} == assignment.POINTS  # "(N points)" marks: the same
    table = re.findall(r"^\| (\d+) \| `(\w+)`.*\| (\d+) \|$", HANDOUT.read_text(), re.M)
    assert [(name, int(points)) for _, name, points in table] == list(assignment.POINTS.items())
    guide = re.findall(r"^\| \d+ \| `(\w+)` \|.*\| (\d+) \|$", (ROOT / "docs" / "teaching.md").read_text(), re.M)
    assert {name: int(points) for name, points in guide} == assignment.POINTS  # the guide's table says the same
    where = {n: [f"{r.file}:{r.func}" for r in rs] for n, rs in ex.items()}
    assert where["attention"] == ["model.py:Attention.forward", "model.py:KVCache.update", "model.py:KVCache.positions",
                                  "model.py:KVCache.mask"]
    assert where["sample_next"] == ["model.py:sample_next"]
    assert where["generate_loop"] == ["model.py:_generate_chunk"]
    assert where["upft_rollouts"] == ["upft.py:prefix_vote", "upft.py:upft_rollouts"]
    assert where["accumulate_grads"] == ["train.py:accumulate_grads"]
    assert where["masked_ce_sum"] == ["train.py:masked_ce_sum"]  # one function, one file: the training path
    assert where["fit"] == ["train.py:fit"]
    assert where["extract_answer"] == ["grader.py:_last_boxed", "grader.py:extract_answer"]
    for name, rs in ex.items():
        for r in rs:
            lines = (ROOT / r.file).read_text().splitlines()
            assert not assignment.is_stub(lines[r.begin + 1:r.end])
            # a whole piece: the region is the function's whole body after its docstring
            assert lines[r.begin - 1].rstrip().endswith('"""'), f"{name}: the marker must follow {r.func}'s docstring"
            after = next((line for line in lines[r.end + 1:] if line.strip()), "")
            assert len(after) - len(after.lstrip()) < len(r.indent), f"{name}: code of {r.func} after the end marker"


def _normalised(text):
    return " ".join(text.split())


def docstring_above(lines, begin):
    """The docstring that ends on the line above a region's opening marker."""
    end = begin - 1
    if lines[end].count('"""') >= 2:
        return lines[end]
    start = next(i for i in range(end - 1, -1, -1) if '"""' in lines[i])
    return "\n".join(lines[start:end + 1])


def test_no_contract_contains_a_line_of_its_reference_body():
    """A contract (the handout's section of the problem and the docstrings above its regions) says what to
    build, not how: no line of the reference body (comments dropped, spaces collapsed, 12 characters or more)
    appears in it."""
    sections = handout_sections()
    for name, regions in assignment.exercises(ROOT).items():
        files = {r.file: (ROOT / r.file).read_text().splitlines() for r in regions}
        text = _normalised(sections[name] + "\n".join(docstring_above(files[r.file], r.begin) for r in regions))
        for r in regions:
            for line in files[r.file][r.begin + 1:r.end]:
                code = _normalised(line.split("  #")[0])
                if len(code) >= 12 and not code.startswith("#"):
                    assert code not in text, f"{name}: its contract contains the reference line {code!r}"


def test_make_refuses_a_non_empty_or_inner_folder(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("")
    with pytest.raises(assignment.KitError, match="not empty"):
        assignment.make(tmp_path / "x", log=lambda *_: None)
    with pytest.raises(assignment.KitError, match="inside the reference"):
        assignment.make(ROOT / "student", log=lambda *_: None)


def _rows(stdout):
    """The table's rows, {exercise: its row}, a wrapped message joined back into one line."""
    lines = stdout.splitlines()
    end = next(i for i, line in enumerate(lines) if line.endswith(" problems pass)"))
    rows = []
    for line in lines[1:end]:
        if line.startswith(" "):
            rows[-1] += " " + line.strip()
        else:
            rows.append(line)
    return {row.split()[0]: row for row in rows}


def _grade(dest, cwd=None, tier="public"):
    p = subprocess.run(KIT + ["grade", str(dest), "--tier", tier], capture_output=True, text=True, timeout=900,
                       cwd=cwd)
    return p, _rows(p.stdout)


DEMO = '''def demo(x):
    """Doc."""
    # >>> exercise: demo
    return x + 1
    # <<< exercise: demo
'''
DEMO_TESTS = '''import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import demo

LONG = "a long message " * 20


def test_one():
    assert demo.demo(1) == 3, "one: " + LONG + "END-OF-ONE"


def test_fine():
    assert demo.demo(0) == 1


def test_two():
    assert demo.demo(2) == 5, "two: " + LONG + "END-OF-TWO"
'''


@pytest.fixture
def demo_copy(tmp_path):
    """A two-file copy with one exercise whose tests fail twice, with messages longer than a line."""
    (tmp_path / "demo.py").write_text(DEMO)
    (tmp_path / "tests" / "exercises").mkdir(parents=True)
    (tmp_path / "tests" / "exercises" / "test_demo.py").write_text(DEMO_TESTS)
    return tmp_path


def test_grade_prints_whole_messages_and_how_to_rerun(demo_copy):
    here, name = demo_copy.parent, demo_copy.name       # run from the folder above: DIR is `name`
    named = shlex.quote(str(demo_copy.resolve()))          # the kit names it by its absolute path
    p = subprocess.run(KIT + ["grade", name], cwd=here, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stdout + p.stderr
    row = _rows(p.stdout)["demo"]
    assert " FAILED " in row and " 1/3 " in row
    assert row.endswith("test_one: AssertionError: one: " + "a long message " * 20 + "END-OF-ONE"), row
    assert p.stdout.splitlines()[-1].endswith(f"grade {named} NAME"), "the footer names `grade DIR NAME`"

    p = subprocess.run(KIT + ["grade", name, "demo"], cwd=here, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stdout + p.stderr
    out = " ".join(line.strip() for line in p.stdout.splitlines())
    assert out.startswith("demo: FAILED, 1/3 checks pass")
    for test in ("one", "two"):
        assert f"test_{test}: AssertionError: {test}: " + "a long message " * 20 + f"END-OF-{test.upper()}" in out
    assert "test_fine" not in out
    rerun = p.stdout.splitlines()[-1]
    assert rerun == f"rerun its tests: cd {named} && python -m pytest tests/exercises/test_demo.py"
    cmd = rerun.split(": ", 1)[1].replace("python -m pytest", f"{shlex.quote(sys.executable)} -m pytest")
    q = subprocess.run(cmd, shell=True, cwd=here, capture_output=True, text=True, timeout=120)
    assert q.returncode == 1 and "2 failed, 1 passed" in q.stdout, q.stdout + q.stderr

    p = subprocess.run(KIT + ["grade", "."], cwd=demo_copy, capture_output=True, text=True, timeout=120)
    assert p.stdout.splitlines()[-1].endswith("grade . NAME"), "from inside a copy, this kit's hint names it"

    p = subprocess.run(KIT + ["grade", name, "nosuch"], cwd=here, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr == "error: unknown problem nosuch (known: demo)\n"


def test_grade_name_alone_grades_this_copy():
    """`grade NAME` inside a copy: that exercise of this copy, rerun from here without a `cd`."""
    p = subprocess.run(KIT + ["grade", "lr_at"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("lr_at: passed, ") and lines[0].endswith(" checks pass")
    assert lines[-1] == "rerun its tests: python -m pytest tests/exercises/test_lr_at.py"


def test_grade_without_pytest_says_how_to_install_it(tmp_path):
    """A Python with only the standard library (the grader needs nothing else, but pytest to grade)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True, timeout=120)
    python = tmp_path / "venv" / "bin" / "python"
    p = subprocess.run([str(python), str(ROOT / "scripts" / "assignment.py"), "grade", str(ROOT)],
                       capture_output=True, text=True, timeout=120)
    assert (p.returncode, p.stdout, p.stderr) == (2, "", "error: grading needs pytest: python -m pip install pytest\n")


def wrong_variant(dest, problem):
    """Write one known wrong variant of `problem` into the (solved) copy at `dest`: the first of
    tests/test_exercise_variants.py's VARIANTS whose substitutions are one-line, applied inside the problem's
    marked body; for the lab, one written answer blanked. Returns the mistake's name."""
    import test_exercise_variants as tv
    if problem == "lab":
        path = dest / "answers" / "lab.md"
        text = path.read_text()
        start = text.index("## Question 3\n") + len("## Question 3\n")
        path.write_text(text[:start] + "\n" + assignment.LAB_BLANK + "\n\n" + text[text.index("## Question 4"):])
        return "a written answer left blank"
    mistake, patches = next((m, ps) for e, m, ps in tv.VARIANTS if e == problem and all(
        p.func is None and p.subs and all("\n" not in old for old, _ in p.subs) for p in ps))
    for patch in patches:
        module, func = patch.target.split(".", 1)
        path = dest / f"{module}.py"
        lines = path.read_text().splitlines(keepends=True)
        (r,) = [r for r in assignment.find_regions("".join(lines), path.name) if r.func == func]
        body = "".join(lines[r.begin + 1:r.end])
        for old, new in patch.subs:
            assert body.count(old) == 1, (problem, old)
            body = body.replace(old, new)
        path.write_text("".join(lines[:r.begin + 1]) + body + "".join(lines[r.end:]))
    return mistake


@pytest.mark.slow
@pytest.mark.parametrize("where", ["student", "a path with spaces/student copy"])
def test_make_grade_solve_round_trip(tmp_path, where):
    """make -> the copy imports and `train.py --help` works -> grade: 0 / 100, every problem failing (on its stub,
    or the lab's blank answers) -> solve: the copy is the reference again (the answer key's answers/ and runs) ->
    grade:
    100 / 100, in under 2 minutes, on both tiers -> known wrong variants of half the problems, then of the other
    half: exactly those problems lose their points, and only those. Wherever the copy lies and whatever the current
    folder (the repository, or a folder beside the copy), the kit names it the same way: by its absolute path."""
    dest = tmp_path / where
    p = subprocess.run(KIT + ["make", str(dest)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    names = assignment.ORDER
    files = assignment.source_files(ROOT)
    copied = assignment.source_files(dest)
    lab = [f"answers/{f}" for f in assignment.LAB_FILES]
    assert copied == sorted([f for f in files if not assignment.instructor_only(f)] + lab)
    assert not (dest / ".git").exists()
    # the copy imports and everything that is not an exercise runs
    q = subprocess.run([sys.executable, "-c", "import model, upft, train, grader, eval, data, launch.run"], cwd=dest,
                       capture_output=True, text=True, timeout=120)
    assert q.returncode == 0, q.stderr
    q = subprocess.run([sys.executable, "train.py", "--help"], cwd=dest, capture_output=True, text=True, timeout=120)
    assert q.returncode == 0 and "--prefix-len" in q.stdout, q.stderr
    q = subprocess.run([sys.executable, "-c", "import grader; print(grader.is_equiv('1/2', '0.5'))"], cwd=dest,
                       capture_output=True, text=True, timeout=120)
    assert q.stdout.strip() == "True", q.stderr

    for cwd in (None, tmp_path):  # from the repository (the tests' folder) and from beside the copy
        p, rows = _grade(dest, cwd)
        assert p.returncode == 1, p.stdout + p.stderr
        assert list(rows) == names
        for name, line in rows.items():
            if name == "lab":
                assert " FAILED " in line and "should be a fraction in [0, 1], got None" in line, line
                continue
            assert " FAILED " in line and f"NotImplementedError: exercise {name}:" in line, line
            assert line.endswith("; see its docstring and docs/assignment.md"), line   # the whole message
        assert p.stdout.splitlines()[-2] == f"0 / 100 points (0/{len(names)} problems pass)"
        assert all(line.split()[3] == f"0/{assignment.POINTS[name]}" for name, line in rows.items())
        assert p.stdout.splitlines()[-1].endswith(f"grade {shlex.quote(str(dest.resolve()))} NAME"), p.stdout

    p = subprocess.run(KIT + ["solve", str(dest)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    for f in copied:   # (markdown: its links to instructor-only files made plain text)
        want = (ROOT / assignment.KEY / f if f in lab else ROOT / f).read_bytes()
        want = assignment.unlinked(want.decode(), f).encode() if f.endswith(".md") and f not in lab else want
        assert (dest / f).read_bytes() == want, f"{f} differs from the reference after solve"
    for tier in assignment.TIERS:
        t = time.time()
        p, rows = _grade(dest, tier=tier)
        seconds = time.time() - t
        print(tier, f"{seconds:.0f} s", p.stdout)
        assert p.returncode == 0, p.stdout + p.stderr
        assert list(rows) == names and all(" passed " in line for line in rows.values())
        assert p.stdout.splitlines()[-1] == f"100 / 100 points ({len(names)}/{len(names)} problems pass)"
        assert all(line.split()[3] == f"{assignment.POINTS[n]}/{assignment.POINTS[n]}" for n, line in rows.items())
        assert seconds <= 120, f"grading the whole copy ({tier} tier) took {seconds:.0f} s (at most 120)"
    if where != "student":
        return   # the wrong variants once (the kit's behaviour does not depend on the place)
    for half in (names[0::2], names[1::2]):
        solved = tmp_path / f"solved-{half[0]}"
        shutil.copytree(dest, solved)
        mistakes = {problem: wrong_variant(solved, problem) for problem in half}
        p, rows = _grade(solved, tier="instructor")
        lost = {n for n, line in rows.items() if " FAILED " in line}
        assert lost == set(half), f"wrong variants of {mistakes}: failing {sorted(lost)}\n{p.stdout}"
        assert p.stdout.splitlines()[-2].startswith(f"{100 - sum(assignment.POINTS[n] for n in half)} / 100 points")
    # a copy that hides its mistakes: lr_at wrong with its markers deleted (still graded, out of 100); fit wrong,
    # its end marker deleted, the public test that catches the mistake renamed away, and a conftest.py that drops
    # the instructor tests: the public tier is fooled on fit only, the instructor tier on nothing
    tampered = tmp_path / "tampered"
    shutil.copytree(dest, tampered)
    train_py = tampered / "train.py"
    text = train_py.read_text()
    for old, new in (("    # >>> exercise: lr_at\n", ""), ("    # <<< exercise: lr_at\n", ""),
                     ("    # <<< exercise: fit\n", ""), ("return tc.lr * min(1.0, (step + 1) / warm)", "return tc.lr"),
                     ("model.gradient_checkpointing = tc.grad_ckpt", "pass")):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    train_py.write_text(text)
    test_fit = tampered / "tests" / "exercises" / "test_fit.py"
    test_fit.write_text(test_fit.read_text().replace("def test_train_mode_while_training_eval_mode_after(",
                                                     "def _hidden("))
    with open(tampered / "tests" / "conftest.py", "a") as f:
        f.write("\n\ndef pytest_collection_modifyitems(config, items):\n"
                "    items[:] = [i for i in items if '_ref' not in str(i.fspath)]\n")
    for tier, lost in (("public", {"lr_at"}), ("instructor", {"lr_at", "fit"})):
        p, rows = _grade(tampered, tier=tier)
        assert list(rows) == names and {n for n, line in rows.items() if " FAILED " in line} == lost, p.stdout
        assert p.stdout.splitlines()[-2].startswith(f"{100 - sum(assignment.POINTS[n] for n in lost)} / 100 points")


@pytest.mark.slow
def test_an_endless_loop_costs_its_own_problem_only(tmp_path):
    """A solved copy whose extract_answer never returns: grade (a short --timeout) reruns each problem alone, and
    only extract_answer fails, on its time limit."""
    dest = tmp_path / "student"
    assignment.make(dest, log=lambda *_: None)
    assignment.solve(dest, log=lambda *_: None)
    grader = dest / "grader.py"
    text = grader.read_text()
    i = text.index("\n", text.index("    # >>> exercise: extract_answer", text.index("def extract_answer(")))
    grader.write_text(text[:i + 1] + "    while True:\n        pass\n" + text[i + 1:])
    p = subprocess.run(KIT + ["grade", str(dest), "--timeout", "8"], capture_output=True, text=True, timeout=600)
    rows = _rows(p.stdout)
    assert p.returncode == 1 and [n for n, line in rows.items() if " FAILED " in line] == ["extract_answer"], p.stdout
    assert "did not finish within 8s" in rows["extract_answer"], rows["extract_answer"]
    assert p.stdout.splitlines()[-2].startswith(f"{100 - assignment.POINTS['extract_answer']} / 100 points")


def test_solve_refuses_what_is_not_a_student_copy(tmp_path):
    (tmp_path / "empty").mkdir()
    for where in (tmp_path / "empty", tmp_path / "nowhere"):
        p = subprocess.run(KIT + ["solve", str(where)], capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and p.stderr.startswith("error: ") and "not a student copy" in p.stderr, p.stderr
        assert len(p.stderr.splitlines()) == 1
    assert not any((tmp_path / "empty").iterdir()), "nothing written"


def test_links_to_instructor_files_become_plain_text():
    text = "[the key](answer-key/README.md), [guide](teaching.md#reading), [method](method.md), ![p](x.png)"
    assert assignment.unlinked(text, "docs/assignment.md") == "the key, guide, [method](method.md), ![p](x.png)"
    assert assignment.unlinked("[g](docs/teaching.md)", "README.md") == "g"


BLOCK_TRANSFORMERS = """
import importlib.abc, sys, time
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('transformers', 'math_verify'):
            raise ModuleNotFoundError(f'No module named {name!r} (blocked: the exercise tests must not need it)')
sys.meta_path.insert(0, Block())
import pytest
t = time.time()
rc = pytest.main(['tests/exercises', 'tests/test_exercise_variants.py', '-q', '-p', 'no:cacheprovider'])
print(f'exercise tests: {time.time() - t:.1f}s')
sys.exit(rc)
"""


@pytest.mark.slow
def test_exercise_tests_need_no_transformers():
    """What a student's machine may lack: the exercise and wrong-variant tests pass with transformers (and
    math-verify) made unimportable. (A real check: a venv with only requirements.txt + pytest, see
    docs/teaching.md.)"""
    p = subprocess.run([sys.executable, "-c", BLOCK_TRANSFORMERS], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    print(p.stdout[-400:])
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]


# ----------------------------------------------------------------------------- no answers outside the exercises
#
# A line is compared by its shape: its tokens with every name but Python's keywords made ID, every string
# and number LIT, the comment and the spaces dropped (`total = sum(x for x in xs)` -> `ID = ID ( ID for ID
# in ID )`). Lines of fewer than MIN_TOKENS tokens (`return ID`, `ID = LIT`, `if not ID :`) say too little
# and are skipped on both sides. A leak is WINDOW consecutive counted lines of a reference body (the whole
# body when it has fewer), or one body line of at least LONG tokens, found as consecutive counted lines
# of a .py or .md file of the student copy: the body itself, or the same lines with other names.
# Margins on the reference tree: no two consecutive counted lines of a body occur in the copy (no three
# even when every line counts), and the longest body line that occurs in it has 15 tokens.
TOKEN = re.compile(r"""(?P<lit>[rRbBfFuU]{0,2}(?:"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*')|\.?\d[\w.]*)"""
                   r"|(?P<name>[A-Za-z_]\w*)|(?P<op>\*\*|//|->|:=|[-+*/%@&|^<>=!]=|\S)")
MIN_TOKENS, WINDOW, LONG = 5, 3, 20


def shapes(text):
    """[(line number, shape)] of the lines of `text` that have at least MIN_TOKENS tokens."""
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        tokens = []
        for m in TOKEN.finditer(line):
            if m["op"] == "#":
                break
            tokens.append("LIT" if m["lit"] else m[0] if m["op"] or keyword.iskeyword(m[0]) else "ID")
        if len(tokens) >= MIN_TOKENS:
            out.append((i, " ".join(tokens)))
    return out


def body_windows(root):
    """{window of shapes: "exercise (file:function)"} over every reference body (each has one), and its
    long lines alone."""
    windows = {}
    for name, regions in assignment.exercises(root).items():
        for r in regions:
            lines = (root / r.file).read_text(encoding="utf-8").splitlines()[r.begin + 1:r.end]
            body = [s for _, s in shapes("\n".join(lines))]
            assert body, f"{name} in {r.func}: no line long enough to compare"
            k = min(WINDOW, len(body))
            where = f"{name} ({r.file}:{r.func})"
            windows.update({tuple(body[i:i + k]): where for i in range(len(body) - k + 1)})
            windows.update({(line,): where for line in body if len(line.split()) >= LONG})
    return windows


def leaks(copy, windows):
    """'file:line: exercise' for every window of `windows` found in the .py and .md files under `copy`."""
    found = set()
    for f in assignment.source_files(copy):
        if f.endswith((".py", ".md")):
            lines = shapes((copy / f).read_text(encoding="utf-8"))
            for k in {len(w) for w in windows}:
                for i in range(len(lines) - k + 1):
                    if (w := tuple(s for _, s in lines[i:i + k])) in windows:
                        found.add(f"{f}:{lines[i][0]}: {windows[w]}")
    return sorted(found)


@pytest.fixture(scope="module")
def student_copy(tmp_path_factory):
    dest = tmp_path_factory.mktemp("kit") / "student"
    assignment.make(dest, log=lambda *_: None)
    return dest


def test_no_exercise_answer_outside_its_markers(student_copy):
    """The student copy (tests and docs included) holds no reference body, nor the same lines renamed."""
    found = leaks(student_copy, body_windows(ROOT))
    assert not found, "exercise answers in the student copy (restructure, stub, or list the file in " \
                      "INSTRUCTOR_ONLY):\n" + "\n".join(found)


def test_the_leak_test_finds_a_renamed_copy(student_copy, tmp_path):
    """So that the leak test cannot rot into a no-op: accumulate_grads's body pasted into a function of
    another file, every variable renamed and re-indented, is found (and nothing else is)."""
    (r,) = assignment.exercises(ROOT)["accumulate_grads"]
    body = textwrap.dedent("\n".join((ROOT / r.file).read_text().splitlines()[r.begin + 1:r.end]))
    names = {"total": "n_tok", "examples": "batch", "micro_batch_size": "m", "step_loss": "acc", "device": "dev",
             "ids": "x", "labels": "y", "loss": "val", "model": "net", "normaliser": "norm", "i": "j"}
    renamed = re.sub(r"\w+", lambda m: names.get(m[0], m[0]), body)
    assert "total" not in renamed and "step_loss" not in renamed
    copy = tmp_path / "student"
    shutil.copytree(student_copy, copy)
    with open(copy / "data.py", "a") as f:
        f.write("\n\nclass Helper:\n    def step(self, net, batch, m, pad_id, loss_sum, norm=None, autocast=None):\n"
                + textwrap.indent(renamed, " " * 8) + "\n")
    found = leaks(copy, body_windows(ROOT))
    assert found and all(f.startswith("data.py:") and "accumulate_grads" in f for f in found), found


def test_no_instructor_material_in_the_copy(student_copy):
    """No answer key, instructor test, reference fixture or git history in a fresh student copy: none of their
    files, no file with a fixture's bytes, and no line of the key's written answers (8 words or more) in any
    text file."""
    files = assignment.source_files(student_copy)
    assert not (student_copy / ".git").exists()
    assert not [f for f in files if assignment.instructor_only(f) or f.startswith(".git/")], "instructor files copied"
    instructor = [f for f in assignment.source_files(ROOT) if f.startswith(assignment.INSTRUCTOR_DIRS)]
    assert any(f.startswith("tests/instructor/fixtures/") for f in instructor)  # (so the checks below check)
    assert any(f.startswith(f"{assignment.KEY.as_posix()}/answers/") for f in instructor)
    secret = {(ROOT / f).read_bytes() for f in instructor}
    assert not [f for f in files if (student_copy / f).read_bytes() in secret], "an instructor file's bytes"
    key_lines = {_normalised(line) for f in instructor if f.startswith(assignment.KEY.as_posix()) and f.endswith(".md")
                 for line in (ROOT / f).read_text().splitlines() if len(line.split()) >= 8}
    for f in files:
        if f.endswith((".py", ".md", ".json", ".txt")):
            text = _normalised((student_copy / f).read_text(encoding="utf-8"))
            found = [line for line in key_lines if line in text]
            assert not found, f"{f} holds the answer key's lines: {found[:2]}"
