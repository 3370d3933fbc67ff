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


def test_reference_exercises():
    ex = assignment.exercises(ROOT)
    assert list(ex) == assignment.ORDER and 8 <= len(ex) <= 10
    assert list(assignment.POINTS) == assignment.ORDER and sum(assignment.POINTS.values()) == 100  # one score of 100
    table = re.findall(r"^\| \d+ \| `(\w+)` \|.*\| (\d+) \|$", (ROOT / "docs" / "teaching.md").read_text(), re.M)
    assert {name: int(points) for name, points in table} == assignment.POINTS  # the guide's table says the same
    where = {n: [f"{r.file}:{r.func}" for r in rs] for n, rs in ex.items()}
    assert where["sample_next"] == ["model.py:sample_next"]
    assert where["kv_cache_positions_mask"] == ["model.py:KVCache.positions", "model.py:KVCache.mask"]
    assert where["accumulate_grads"] == ["train.py:accumulate_grads"]
    assert where["masked_ce_sum"] == ["train.py:masked_ce_sum"]  # one function, one file: the training path
    assert where["extract_answer"] == ["grader.py:_last_boxed", "grader.py:extract_answer"]
    for rs in ex.values():
        for r in rs:
            assert not assignment.is_stub((ROOT / r.file).read_text().splitlines()[r.begin + 1:r.end])


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
    end = next(i for i, line in enumerate(lines) if line.endswith(" exercises pass)"))
    rows = []
    for line in lines[1:end]:
        if line.startswith(" "):
            rows[-1] += " " + line.strip()
        else:
            rows.append(line)
    return {row.split()[0]: row for row in rows}


def _grade(dest, cwd=None):
    p = subprocess.run(KIT + ["grade", str(dest)], capture_output=True, text=True, timeout=900, cwd=cwd)
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

    p = subprocess.run(KIT + ["grade", name, "nosuch"], cwd=here, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr == "error: unknown exercise nosuch (known: demo)\n"


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


@pytest.mark.slow
@pytest.mark.parametrize("where", ["student", "a path with spaces/student copy"])
def test_make_grade_solve_round_trip(tmp_path, where):
    """Untouched student copy: every exercise fails (on its stub); reference bodies copied back: every one
    passes, and the copy is the reference again, byte for byte. Wherever the copy lies and whatever the current
    folder (the repository, or a folder beside the copy), the kit names it the same way: by its absolute path."""
    dest = tmp_path / where
    p = subprocess.run(KIT + ["make", str(dest)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    names = assignment.ORDER
    files = assignment.source_files(ROOT)
    copied = assignment.source_files(dest)
    assert copied == [f for f in files if f not in assignment.INSTRUCTOR_ONLY]
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
            assert " FAILED " in line and f"NotImplementedError: exercise {name}:" in line, line
            assert line.endswith("; see its docstring and docs/teaching.md"), line   # the whole message
        assert p.stdout.splitlines()[-2] == f"0 / 100 points (0/{len(names)} exercises pass)"
        assert all(line.split()[3] == f"0/{assignment.POINTS[name]}" for name, line in rows.items())
        assert p.stdout.splitlines()[-1].endswith(f"grade {shlex.quote(str(dest.resolve()))} NAME"), p.stdout

    p = subprocess.run(KIT + ["solve", str(dest)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    for f in copied:
        assert (dest / f).read_bytes() == (ROOT / f).read_bytes(), f"{f} differs from the reference after solve"
    p, rows = _grade(dest)
    print(p.stdout)
    assert p.returncode == 0, p.stdout + p.stderr
    assert list(rows) == names and all(" passed " in line for line in rows.values())
    assert p.stdout.splitlines()[-1] == f"100 / 100 points ({len(names)}/{len(names)} exercises pass)"
    assert all(line.split()[3] == f"{assignment.POINTS[name]}/{assignment.POINTS[name]}" for name, line in rows.items())


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
