"""The course kit: a student copy of upft made from the reference code, and its grader.

    python scripts/assignment.py list                      # the problems, in the handout's order, and where they are
    python scripts/assignment.py make DIR                  # write a student copy of the repository into DIR
    python scripts/assignment.py grade [DIR]               # each problem's points and the total, N / 100
    python scripts/assignment.py grade [DIR] NAME          # every failing check of problem NAME, and how to rerun it
    python scripts/assignment.py grade DIR --tier instructor   # ... with the instructor tests too (reference only)
    python scripts/assignment.py solve DIR [NAME ...]      # put the reference answers back into DIR (all or some)
    python scripts/assignment.py key                       # the answer key: every reference body, where it goes

The problems are the handout's (docs/assignment.md): eleven exercises and the lab. An exercise is a function
body (or several) between two marker comments in the reference code, a line `# >>> exercise: NAME` after the
docstring and a line `# <<< exercise: NAME` after the body, both at the body's indentation. The lab's answers
are two files, answers/lab.json (the numbers of two runs) and answers/lab.md (the written answers).

`make` copies every file of the repository (git's tracked and untracked-but-not-ignored files, or a
walk that skips .git, runs/ and caches) except the instructor-only ones below, replaces what lies
between the markers by `raise NotImplementedError(...)`, and writes blank answers/ files; docstrings,
signatures, markers and all other code stay, so the copy imports and everything that is not an exercise
runs. Two tiers of tests: the public ones, tests/exercises/test_NAME.py, in the copy; the instructor ones,
tests/instructor/test_NAME_ref.py (against outputs the reference saved in tests/instructor/fixtures/), never
copied. `grade` runs a tier with pytest in DIR and prints one row per problem with its points (all or
nothing) and its first failing check, then the total `N / 100` (exit 0 only when every problem passes);
`grade DIR NAME` prints every failing check of NAME and the pytest command that reruns its tests alone.
Grading needs pytest (python -m pip install pytest). docs/teaching.md is the instructor's guide,
docs/answer-key/ the answer key (written answers' key points, the lab's reference answers).

Standard library only, so grading works whatever state a student's copy is in.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN = re.compile(r"^(?P<indent>[ \t]*)# >>> exercise: (?P<name>\w+)[ \t]*$")
END = re.compile(r"^(?P<indent>[ \t]*)# <<< exercise: (?P<name>\w+)[ \t]*$")
DEF = re.compile(r"^(?P<indent>[ \t]*)(?:async[ \t]+)?(?:def|class)[ \t]+(?P<name>\w+)")
# The problems of the handout (docs/assignment.md), in its order (the method's own: split, sample, vote, build the
# examples, train, evaluate; then the lab); `list` and `grade` use it. Every one but "lab" is a marked exercise.
ORDER = ["split_questions", "attention", "sample_next", "generate_loop", "upft_rollouts", "make_example",
         "masked_ce_sum", "accumulate_grads", "lr_at", "fit", "extract_answer", "lab"]
# Each problem's points in the total of 100 (the handout's "(N points)"): all or nothing, by its tests.
POINTS = {"split_questions": 4, "attention": 16, "sample_next": 10, "generate_loop": 12, "upft_rollouts": 12,
          "make_example": 8, "masked_ce_sum": 10, "accumulate_grads": 8, "lr_at": 3, "fit": 8, "extract_answer": 4,
          "lab": 5}
TESTS = Path("tests") / "exercises"
INSTRUCTOR_TESTS = Path("tests") / "instructor"
KEY = Path("docs") / "answer-key"
TIERS = ("public", "instructor")
# Never copied into a student copy, because each would hand out answers (tests/test_assignment.py's leak
# test checks that no other file does):
INSTRUCTOR_ONLY = {
    "tests/test_exercise_variants.py",  # its variants are pieces of the reference bodies
    "tests/test_assignment.py",         # the make/grade/solve round trip and the leak test read the reference
    "tests/test_loss.py",               # it writes the masked_ce_sum exercise out (per sample, entropy)
    "docs/teaching.md",                 # the instructor's guide: the usual mistakes, what the public tests miss
}
INSTRUCTOR_DIRS = (f"{INSTRUCTOR_TESTS.as_posix()}/",  # the instructor tests and the reference's saved outputs
                   f"{KEY.as_posix()}/")               # the answer key
LAB_FILES = ("lab.json", "lab.md")       # answers/: what the lab hands in (blank in a fresh copy)
LAB_QUESTIONS = 7
LAB_BLANK = "(your answer)"


def instructor_only(f: str) -> bool:
    return f in INSTRUCTOR_ONLY or f.startswith(INSTRUCTOR_DIRS)


MD_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s#]*)(#[^)\s]*)?\)")


def unlinked(text: str, file: str) -> str:
    """A markdown file of the student copy: every link to an instructor-only file (the guide, the answer key)
    becomes its plain text, since the copy does not have the file."""
    def plain(m):
        target = os.path.normpath(os.path.join(os.path.dirname(file), m[3])).replace(os.sep, "/") if m[3] else ""
        hidden = target and (instructor_only(target) or instructor_only(target + "/"))
        return m[2] if hidden and not m[1] else m[0]
    return MD_LINK.sub(plain, text)


def blank_lab() -> dict[str, str]:
    """The answers/ files of a fresh copy: the lab's numbers to fill in, and one heading per question."""
    world = {"run": None, "base": {"careful_share": None, "sampled_accuracy": None},
             "tuned": {"careful_share": None, "sampled_accuracy": None}}
    numbers = {"decision": {**world, "run": "runs/lab-decision"}, "mirror": {**world, "run": "runs/lab-mirror"}}
    text = "# The lab: UPFT on the decision world and its mirror (docs/assignment.md, problem 12)\n\n" + "".join(
        f"## Question {k}\n\n{LAB_BLANK}\n\n" for k in range(1, LAB_QUESTIONS + 1))
    return {"lab.json": json.dumps(numbers, indent=1) + "\n", "lab.md": text}


SKIP_DIRS = {".git", "runs", "__pycache__", ".pytest_cache", ".venv", ".whl", ".gl"}
STUB = 'raise NotImplementedError("exercise {name}: {func} in {file}; see its docstring and docs/assignment.md")'


class KitError(Exception):
    """A one-line error for the command line."""


@dataclass
class Region:
    """Lines begin+1 .. end-1 of `file` (0-based) are the body of exercise `name`, inside `func`."""
    file: str
    name: str
    func: str
    begin: int
    end: int
    indent: str


def find_regions(text: str, file: str = "<text>") -> list[Region]:
    """Every marked region of one source file, checked: markers pair up, same name, same indentation,
    no nesting, a non-empty body, and each region sits inside a def."""
    lines = text.splitlines()
    regions, open_ = [], None
    for i, line in enumerate(lines):
        if m := BEGIN.match(line):
            if open_:
                raise KitError(f"{file}:{i + 1}: exercise {m['name']} opens inside exercise {open_[1]['name']}")
            open_ = (i, m)
        elif m := END.match(line):
            if not open_:
                raise KitError(f"{file}:{i + 1}: '# <<< exercise: {m['name']}' without its '# >>>' line")
            j, b = open_
            if m["name"] != b["name"] or m["indent"] != b["indent"]:
                raise KitError(f"{file}:{i + 1}: end marker does not match '{lines[j].strip()}' (line {j + 1})")
            if not any(s.strip() for s in lines[j + 1:i]):
                raise KitError(f"{file}:{j + 1}: exercise {b['name']} has an empty body")
            regions.append(Region(file, b["name"], _enclosing(lines, j, b["indent"], file), j, i, b["indent"]))
            open_ = None
    if open_:
        raise KitError(f"{file}:{open_[0] + 1}: exercise {open_[1]['name']} is never closed")
    return regions


def _enclosing(lines, i, indent, file):
    """Qualified name of the def that holds line i (Class.method for a method)."""
    names, width = [], len(indent.expandtabs())
    for line in reversed(lines[:i]):
        m = DEF.match(line)
        if m and len(m["indent"].expandtabs()) < width:
            names.append(m["name"])
            width = len(m["indent"].expandtabs())
            if width == 0:
                break
    if not names:
        raise KitError(f"{file}:{i + 1}: exercise marker outside any function")
    return ".".join(reversed(names))


def stub_text(text: str, file: str = "<text>") -> str:
    """`text` with the body of every marked region replaced by one `raise NotImplementedError(...)`."""
    lines = text.splitlines(keepends=True)
    for r in reversed(find_regions(text, file)):
        stub = r.indent + STUB.format(name=r.name, func=r.func, file=r.file) + "\n"
        lines[r.begin + 1:r.end] = [stub]
    return "".join(lines)


def is_stub(body: list[str]) -> bool:
    code = [s.strip() for s in body if s.strip() and not s.strip().startswith("#")]
    return len(code) == 1 and code[0].startswith('raise NotImplementedError("exercise ')


def source_files(root: Path) -> list[str]:
    """Relative paths of the repository's files: git's view when there is one, else a filtered walk."""
    if (root / ".git").exists() and shutil.which("git"):
        p = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           capture_output=True, text=True)
        if p.returncode == 0:
            return sorted({f for f in p.stdout.split("\0") if f and (root / f).is_file()})
    out = []
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x not in SKIP_DIRS and not x.endswith(".partial"))
        out += [str((Path(d) / f).relative_to(root)) for f in files if not f.endswith(".pyc")]
    return sorted(out)


def python_files(root: Path) -> list[str]:
    """The .py files whose markers define the exercises (the tests' own files are not searched)."""
    return [f for f in source_files(root) if f.endswith(".py") and not f.startswith("tests/")]


def exercises(root: Path) -> dict[str, list[Region]]:
    """{name: its regions}, in teaching order (names missing from ORDER come last, alphabetically)."""
    found: dict[str, list[Region]] = {}
    for f in python_files(root):
        for r in find_regions((root / f).read_text(encoding="utf-8"), f):
            found.setdefault(r.name, []).append(r)
    rank = {n: i for i, n in enumerate(ORDER)}
    return dict(sorted(found.items(), key=lambda kv: (rank.get(kv[0], len(ORDER)), kv[0])))


# ----------------------------------------------------------------------------------- the commands

def make(dest, root: Path = ROOT, log=print) -> dict[str, list[Region]]:
    """Write the student copy into `dest` (which must not exist or be empty); returns its exercises."""
    dest = Path(dest).resolve()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise KitError(f"{dest} already exists and is not empty")
    if dest == root or (root in dest.parents and dest.relative_to(root).parts[0] not in SKIP_DIRS):
        raise KitError(f"{dest} is inside the reference repository (use a folder outside it, or runs/)")
    ex = exercises(root)
    for name, regions in ex.items():
        if all(is_stub((root / r.file).read_text(encoding="utf-8").splitlines()[r.begin + 1:r.end]) for r in regions):
            raise KitError(f"{root} is already a student copy (exercise {name} is a stub)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp", dir=dest.parent))
    try:
        stubbed = {r.file for rs in ex.values() for r in rs}
        for f in source_files(root):
            if instructor_only(f):
                continue
            (tmp / f).parent.mkdir(parents=True, exist_ok=True)
            if f in stubbed:
                (tmp / f).write_text(stub_text((root / f).read_text(encoding="utf-8"), f), encoding="utf-8")
            elif f.endswith(".md"):
                (tmp / f).write_text(unlinked((root / f).read_text(encoding="utf-8"), f), encoding="utf-8")
            else:
                shutil.copy2(root / f, tmp / f)
        (tmp / "answers").mkdir(exist_ok=True)
        for name, text in blank_lab().items():  # the lab's hand-in, blank
            (tmp / "answers" / name).write_text(text, encoding="utf-8")
        if dest.exists():
            dest.rmdir()
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"student copy written to {dest}: {len(ex)} exercises stubbed ({', '.join(ex)}), the lab's answers/ "
        f"blank; grade it with: python {shlex.quote(shown(__file__))} grade {shlex.quote(str(dest))}")
    return ex


def problems(root: Path) -> list[str]:
    """The handout's problems found in `root`: its marked exercises, in ORDER, then the lab."""
    return [*exercises(root), *(["lab"] if (root / TESTS / "test_lab.py").is_file() else [])]


def solve(dest, names=(), root: Path = ROOT, log=print) -> list[str]:
    """Copy the reference bodies of the named exercises, and for "lab" the answer key's answers/ files (default:
    every problem), into the copy at `dest`."""
    dest = Path(dest)
    ref = exercises(root)
    names = list(names) or problems(root)
    if not (dest / "train.py").is_file() or not (dest / TESTS).is_dir():
        raise KitError(f"{dest}: not a student copy of upft (no train.py or {TESTS} there)")
    if unknown := [n for n in names if n not in ref and n != "lab"]:
        raise KitError(f"unknown problem(s): {', '.join(unknown)} (known: {', '.join(problems(root))})")
    if "lab" in names:
        if not (root / KEY / "answers").is_dir():
            raise KitError(f"{root / KEY}: no answer key here (solve runs in the reference repository)")
        (dest / "answers").mkdir(exist_ok=True)
        for name in LAB_FILES:
            shutil.copyfile(root / KEY / "answers" / name, dest / "answers" / name)
        for run in sorted((root / KEY / "runs").iterdir()):   # the reference's two runs, what answers/ names
            shutil.copytree(run, dest / "runs" / run.name, dirs_exist_ok=True)
    files = sorted({r.file for n in names for r in ref.get(n, [])})
    for f in files:
        src = (root / f).read_text(encoding="utf-8").splitlines(keepends=True)
        out = (dest / f).read_text(encoding="utf-8").splitlines(keepends=True)
        theirs = find_regions("".join(out), f)
        mine = find_regions("".join(src), f)
        if [r.name for r in theirs] != [r.name for r in mine]:
            raise KitError(f"{dest / f}: its exercise markers differ from the reference's")
        for a, b in reversed(list(zip(mine, theirs))):   # from the bottom, so line numbers stay valid
            if a.name in names:
                body = src[a.begin + 1:a.end]
                if is_stub(body):
                    raise KitError(f"{root / f}: exercise {a.name} is a stub here, not a reference body")
                out[b.begin + 1:b.end] = body
        (dest / f).write_text("".join(out), encoding="utf-8")
    log(f"reference answers of {', '.join(names)} written into {dest}")
    return names


def check_pytest():
    """Grading runs pytest with this Python: one clear line when it is not installed."""
    if importlib.util.find_spec("pytest") is None:
        raise KitError("grading needs pytest: python -m pip install pytest")


class GradeTimeout(KitError):
    """The tests did not finish in time."""


def test_files(base: Path, names, tier) -> list[Path]:
    """The test files under `base` of problems `names` on one tier: tests/exercises/test_NAME.py, and on the
    instructor tier tests/instructor/test_NAME_ref.py too; those that exist."""
    files = [base / TESTS / f"test_{n}.py" for n in names]
    if tier == "instructor":
        files += [base / INSTRUCTOR_TESTS / f"test_{n}_ref.py" for n in names]
    return [f for f in files if f.is_file()]


def run_tests(dest: Path, timeout, names, tier="public") -> tuple[dict[str, list[dict]], str]:
    """Run the tests of problems `names` of one tier with pytest, on the code of `dest`. Public: the
    copy's own tests/exercises. Instructor: this repository's tests/exercises and tests/instructor, copied outside
    both and pointed at `dest` (UPFT_GRADE_COPY), so that a copy whose tests or conftest.py were edited is graded by
    the reference's. Returns ({test module: [{test, ok, message}]}, output); GradeTimeout past `timeout` s."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        report = tmp / "report.xml"
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "UPFT_GRADE_COPY": str(dest)}
        if tier == "instructor":
            for folder in (TESTS, INSTRUCTOR_TESTS):
                shutil.copytree(ROOT / folder, tmp / folder, ignore=shutil.ignore_patterns("__pycache__"))
            shutil.copy2(ROOT / "tests" / "util_tok.py", tmp / "tests" / "util_tok.py")  # (the tests' tokenizer,
            shutil.copytree(ROOT / "tests" / "fixtures", tmp / "tests" / "fixtures")     # its chat templates)
            (tmp / "pytest.ini").write_text("[pytest]\nmarkers =\n    slow\n    real\n")
            env["PYTHONPATH"] = os.pathsep.join([str(dest), *filter(None, [os.environ.get("PYTHONPATH")])])
            base, rootdir = tmp, ["--rootdir", str(tmp), "-c", str(tmp / "pytest.ini")]
        else:
            base, rootdir = dest, ["--rootdir", str(dest)]
        paths = [str(f) for f in test_files(base, names, tier)]
        if not paths:
            return {}, ""
        cmd = [sys.executable, "-m", "pytest", *paths, "-q", "-p", "no:cacheprovider", "-m", "", *rootdir,
               "--continue-on-collection-errors", f"--junitxml={report}",
               "-o", "junit_family=xunit1"]  # (xunit1 names each case's file: the classname can be empty)
        try:
            p = subprocess.run(cmd, cwd=dest, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            raise GradeTimeout(f"the tests did not finish within {timeout}s (an endless loop?)") from None
        if not report.is_file():
            raise KitError(f"pytest wrote no report (exit {p.returncode}):\n{(p.stdout + p.stderr)[-2000:]}")
        results: dict[str, list[dict]] = {}
        for case in ET.parse(report).getroot().iter("testcase"):
            where = case.get("classname") or case.get("name") or ""
            module = Path(case.get("file") or "").stem or \
                next((part for part in where.split(".") if part.startswith("test_")), where)
            bad = next((c for c in case if c.tag in ("failure", "error")), None)
            skipped = next((c for c in case if c.tag == "skipped"), None)
            label = "ref: " if module.endswith("_ref") else ""
            results.setdefault(module.removesuffix("_ref"), []).append(
                {"test": label + (name if re.fullmatch(r"test\w*(\[.*\])?", name := case.get("name") or "")
                                  else "(import)"),
                 "ok": bad is None and skipped is None, "message": _message(bad if bad is not None else skipped)})
        return results, p.stdout + p.stderr


def run_each(dest: Path, names, timeout, tier) -> dict[str, list[dict]]:
    """run_tests of every problem at once; if that hangs, of each problem alone, a hung one failing on its own."""
    try:
        return run_tests(dest, 2 * timeout, names, tier)[0]
    except GradeTimeout:
        results = {}
        for n in names:
            try:
                results.update(run_tests(dest, timeout, [n], tier)[0])
            except GradeTimeout as e:
                results[f"test_{n}"] = [{"test": "(all)", "ok": False, "message": str(e)}]
        return results


def expected_tests(names, tier) -> dict[str, int]:
    """How many test functions each problem has in this repository's files of the tier (its floor in a report)."""
    return {n: sum(len(re.findall(r"^def test_\w+\(", f.read_text(encoding="utf-8"), re.M))
                   for f in test_files(ROOT, [n], tier)) for n in names}


def _message(node) -> str:
    """The first informative line of a failure: the exception line, not pytest's 'collection failure'
    (for an error raised while importing, with the file and line it points at)."""
    if node is None:
        return ""
    msg = (node.get("message") or "").strip()
    if not msg or msg == "collection failure" or msg.startswith("failed on"):
        lines = [s[1:].strip() for s in (node.text or "").splitlines() if s.startswith("E ")]
        msg = next((s for s in lines if re.match(r"\w+(Error|Exception)\b", s)), lines[-1] if lines else msg)
        where = [m for s in lines if (m := re.match(r'File "(.+)", line (\d+)', s))]
        if where:
            msg += f" ({Path(where[-1][1]).name}:{where[-1][2]})"
    return msg.splitlines()[0] if msg else "failed"


def wrap(text: str, indent: int) -> str:
    """`text` whole, wrapped to the terminal (120 columns when not a terminal), later lines indented."""
    width = max(40, shutil.get_terminal_size((120, 24)).columns - indent)
    lines = textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False) or [""]
    return ("\n" + " " * indent).join(lines)


def shown(path) -> str:
    """A path as the kit prints it: "." for the current folder, else absolute, so that what it says does not
    depend on where the repository or the copy lies relative to the current folder."""
    path = Path(path).resolve()
    return "." if path == Path.cwd().resolve() else str(path)


def kit_dir(dest) -> str:
    """How `grade` names the copy in a command it prints: not at all when it is this kit's own repository (what
    `grade NAME` grades), else its path (absolute, or "." for the current folder)."""
    return "" if Path(dest).resolve() == ROOT else f" {shlex.quote(shown(dest))}"


def rerun_command(dest: Path, name: str, tier="public") -> str:
    """The shell command that runs the tests of problem `name` alone, from the current folder."""
    if tier == "instructor":
        return f"python {shlex.quote(shown(__file__))} grade{kit_dir(dest)} {name} --tier instructor"
    cmd = f"python -m pytest {TESTS / f'test_{name}.py'}"
    where = shown(dest)
    return cmd if where == "." else f"cd {shlex.quote(where)} && {cmd}"


def outcomes(names, results, expected=None) -> dict[str, tuple[bool, str, list[dict]]]:
    """{problem: (passed, "k/n" checks passed, its failing checks)}; no tests at all, or (expected: {problem: the
    number of its tests}) fewer than expected, is a failure."""
    out = {}
    for name in names:
        cases = results.get(f"test_{name}", [])
        failed = [c for c in cases if not c["ok"]]
        checks = f"{len(cases) - len(failed)}/{len(cases)}"
        if not cases:
            failed = [{"test": "no tests found", "message": str(TESTS / f"test_{name}.py")}]
        elif expected and len(cases) < expected.get(name, 0):
            failed.append({"test": "tests missing", "message": f"{len(cases)} of its {expected[name]} tests ran"})
        out[name] = (not failed, checks, failed)
    return out


def graded_problems(dest: Path) -> list[str]:
    """What `grade` scores: in a copy of upft (train.py there) every problem of ORDER, whatever markers the copy
    still has, so that deleting or breaking one changes nothing but that problem's own tests' verdict; elsewhere
    (another kit's copy) the problems its markers and tests name."""
    if (dest / "train.py").is_file():
        return list(ORDER)
    if not (names := problems(dest)):
        raise KitError(f"{dest}: no exercise markers found (is it a copy of upft?)")
    return names


def grade(dest=ROOT, name=None, timeout=120, log=print, tier="public") -> bool:
    """Grade the copy at `dest` on one tier: one row per problem, or with `name` every failing check of that
    problem; True when every graded problem passes. timeout: seconds per problem (an endless loop fails its own)."""
    dest = Path(dest).resolve()
    if not dest.is_dir():
        raise KitError(f"{dest}: no such folder")
    names = graded_problems(dest)
    if name is not None and name not in names:
        raise KitError(f"unknown problem {name} (known: {', '.join(names)})")
    if tier == "instructor" and not (ROOT / INSTRUCTOR_TESTS).is_dir():
        raise KitError("--tier instructor needs the instructor tests: run the kit of the reference repository")
    check_pytest()
    chosen = names if name is None else [name]
    expected = expected_tests(chosen, tier) if tier == "instructor" else None
    found = outcomes(chosen, run_each(dest, chosen, timeout, tier), expected)
    return table(dest, found, log) if name is None else one_exercise(dest, name, found[name], log, tier)


def table(dest, outcome, log) -> bool:
    """One row per exercise (its result, checks passed, points, first failing check), then the score."""
    w = max(len(n) for n in outcome)
    log(f"{'problem':<{w}}  {'result':<6}  {'checks':>6}  {'points':>6}  first failing check")
    for name, (ok, checks, failed) in outcome.items():
        points = f"{POINTS.get(name, 0) if ok else 0}/{POINTS.get(name, 0)}"
        first = "" if ok else wrap(f"{failed[0]['test']}: {failed[0]['message']}", w + 26)
        log(f"{name:<{w}}  {'passed' if ok else 'FAILED':<6}  {checks:>6}  {points:>6}  {first}".rstrip())
    passed = sum(ok for ok, _, _ in outcome.values())
    score = sum(POINTS.get(name, 0) for name, (ok, _, _) in outcome.items() if ok)
    log(f"{score} / {sum(POINTS.get(name, 0) for name in outcome)} points ({passed}/{len(outcome)} problems pass)")
    if passed < len(outcome):
        log(f"every failing check of one problem, and how to rerun its tests: "
            f"python {shlex.quote(shown(__file__))} grade{kit_dir(dest)} NAME")
    return passed == len(outcome)


def one_exercise(dest, name, outcome, log, tier="public") -> bool:
    ok, checks, failed = outcome
    log(f"{name}: {'passed' if ok else 'FAILED'}, {checks} checks pass")
    for case in failed:
        log("  " + wrap(f"{case['test']}: {case['message']}", 4))
    log(f"rerun its tests: {rerun_command(dest, name, tier)}")
    return ok


def list_exercises(root: Path = ROOT, log=print):
    ex = exercises(root)
    for i, name in enumerate(problems(root), 1):
        where = ", ".join(f"{r.file}:{r.func}" for r in ex[name]) if name in ex else "answers/lab.json, answers/lab.md"
        log(f"{i:2}. {name:<18} {POINTS.get(name, 0):3} points  {where}")


def key(root: Path = ROOT, log=print):
    """The answer key's code: every problem's reference body, where it goes (the rest: docs/answer-key/)."""
    if not (root / KEY).is_dir():
        raise KitError(f"{root}: no answer key here (a student copy has none)")
    ex = exercises(root)
    log(f"# The reference answers, problem by problem (written answers, the lab: {shown(root / KEY)})")
    for i, name in enumerate(problems(root), 1):
        log(f"\n## {i}. {name} ({POINTS.get(name, 0)} points)")
        for r in ex.get(name, []):
            lines = (root / r.file).read_text(encoding="utf-8").splitlines()
            log(f"\n{r.file}:{r.begin + 2}, in {r.func}:\n```python\n" + "\n".join(lines[r.begin + 1:r.end]) + "\n```")
        if name == "lab":
            log(f"\n{shown(root / KEY / 'answers')}: " + ", ".join(LAB_FILES))


def main(argv=None):
    ap = argparse.ArgumentParser(description="upft course kit: student copy, grader and answer key.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the problems in the handout's order, their points and where they are")
    p = sub.add_parser("make", help="write a student copy (exercise bodies stubbed, the lab's answers blank) into DIR")
    p.add_argument("dir")
    p = sub.add_parser("grade", help="run the tests of DIR (default: this copy) and print each problem's points and "
                       "the total; with NAME, every failing check of that problem and how to rerun its tests")
    p.add_argument("dir", nargs="?", default=str(ROOT))
    p.add_argument("name", nargs="?", help="one problem (grade NAME alone: in this copy)")
    p.add_argument("--tier", choices=TIERS, default="public", help="public: the copy's own tests (the default); "
                   "instructor: also the instructor tests, against the reference's saved outputs (reference only)")
    p.add_argument("--timeout", type=int, default=120, help="seconds per problem: a problem whose tests run longer "
                   "(an endless loop?) fails alone (default: 120)")
    p = sub.add_parser("solve", help="write the reference answers of the named problems (default: all) into DIR")
    p.add_argument("dir")
    p.add_argument("names", nargs="*")
    sub.add_parser("key", help="print the answer key's code: every problem's reference body and where it goes")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "list":
            list_exercises()
        elif args.cmd == "make":
            make(args.dir)
        elif args.cmd == "solve":
            solve(args.dir, args.names)
        elif args.cmd == "key":
            key()
        else:
            dest, name = args.dir, args.name
            if name is None and not Path(dest).is_dir() and re.fullmatch(r"\w+", dest):
                dest, name = str(ROOT), dest      # `grade lr_at`: a problem of this copy
            sys.exit(0 if grade(dest, name, args.timeout, tier=args.tier) else 1)
    except KitError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
