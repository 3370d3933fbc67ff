"""The course kit (scripts/assignment.py): markers, the student copy, and the make -> grade -> solve round trip.

Instructor-only: `make` leaves this file out of the student copy (it needs the reference bodies).
"""
import subprocess
import sys

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
    where = {n: [f"{r.file}:{r.func}" for r in rs] for n, rs in ex.items()}
    assert where["sample_next"] == ["model.py:sample_next"]
    assert where["kv_cache_positions_mask"] == ["model.py:KVCache.positions", "model.py:KVCache.mask"]
    assert where["accumulate_grads"] == ["train.py:accumulate_grads"]
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


def _grade(dest):
    p = subprocess.run(KIT + ["grade", str(dest)], capture_output=True, text=True, timeout=900)
    rows = {line.split()[0]: line for line in p.stdout.splitlines()[1:-1]}
    return p, rows


@pytest.mark.slow
def test_make_grade_solve_round_trip(tmp_path):
    """Untouched student copy: every exercise fails (on its stub); reference bodies copied back: every one
    passes, and the copy is the reference again, byte for byte."""
    dest = tmp_path / "student"
    p = subprocess.run(KIT + ["make", str(dest)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    names = assignment.ORDER
    files = assignment.source_files(ROOT)
    copied = assignment.source_files(dest)
    assert copied == [f for f in files if f not in assignment.INSTRUCTOR_ONLY]
    # the copy imports and everything that is not an exercise runs
    q = subprocess.run([sys.executable, "-c", "import model, upft, train, grader, eval, toy, data"], cwd=dest,
                       capture_output=True, text=True, timeout=120)
    assert q.returncode == 0, q.stderr
    q = subprocess.run([sys.executable, "train.py", "--help"], cwd=dest, capture_output=True, text=True, timeout=120)
    assert q.returncode == 0 and "--prefix-len" in q.stdout, q.stderr
    q = subprocess.run([sys.executable, "-c", "import grader; print(grader.is_equiv('1/2', '0.5'))"], cwd=dest,
                       capture_output=True, text=True, timeout=120)
    assert q.stdout.strip() == "True", q.stderr

    p, rows = _grade(dest)
    print(p.stdout)
    assert p.returncode == 1, p.stdout + p.stderr
    assert list(rows) == names
    for name, line in rows.items():
        assert " FAILED " in line and f"NotImplementedError: exercise {name}:" in line, line
    assert p.stdout.splitlines()[-1] == f"0/{len(names)} exercises pass"

    p = subprocess.run(KIT + ["solve", str(dest)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    for f in copied:
        assert (dest / f).read_bytes() == (ROOT / f).read_bytes(), f"{f} differs from the reference after solve"
    p, rows = _grade(dest)
    print(p.stdout)
    assert p.returncode == 0, p.stdout + p.stderr
    assert list(rows) == names and all(" passed " in line for line in rows.values())
    assert p.stdout.splitlines()[-1] == f"{len(names)}/{len(names)} exercises pass"


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
