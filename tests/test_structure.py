"""The module boundaries a reader relies on: no import cycle between the top-level modules, no
function-level import of a project module (except commented test seams), and a grader without torch."""
import ast
import subprocess
import sys

from conftest import ROOT

MODULES = {p.stem: p for p in ROOT.glob("*.py")}


def project_imports(path):
    """(imported project module, line, is inside a function/class body, line text) for every import."""
    src = path.read_text()
    lines = src.splitlines()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            names = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module.split(".")[0]]
        else:
            continue
        for name in names:
            if name in MODULES:
                yield name, node.lineno, node.col_offset > 0, lines[node.lineno - 1]


def test_no_import_cycle():
    graph = {m: {name for name, *_ in project_imports(p)} - {m} for m, p in MODULES.items()}
    state = {}

    def visit(m, stack):
        state[m] = "open"
        for n in graph[m]:
            assert state.get(n) != "open", "import cycle: " + " -> ".join(stack + [m, n])
            if n not in state:
                visit(n, stack + [m])
        state[m] = "done"
    for m in graph:
        if m not in state:
            visit(m, [])


def test_project_imports_are_at_module_level():
    lazy = [f"{p.name}:{line}" for m, p in MODULES.items() for _, line, nested, text in project_imports(p)
            if nested and "#" not in text]
    assert lazy == []


def test_grader_does_not_import_torch():
    code = "import sys, grader; assert 'torch' not in sys.modules, 'grader imported torch'; " \
           "print(grader.is_equiv('\\\\frac{1}{2}', '0.5'))"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "True", r.stderr


ENTRY_POINTS = ["train.py", "eval.py", "scripts/show_example.py", "scripts/build_toy.py", "scripts/figures.py",
                "scripts/gpu_check.py", "tests/bench.py"]


def test_entry_points_default_to_a_passive_openmp_wait_before_torch_loads():
    """OpenMP reads OMP_WAIT_POLICY once, when torch loads it: every entry point sets the passive default
    (README, "A busy machine") with setdefault, so a user's own setting still wins, and before its first
    import of torch or of a project module that imports torch."""
    for name in ENTRY_POINTS:
        tree = ast.parse((ROOT / name).read_text())
        setting = next((n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call)
                        and ast.unparse(n.func) == "os.environ.setdefault" and n.args
                        and ast.literal_eval(n.args[0]) == "OMP_WAIT_POLICY"
                        and ast.literal_eval(n.args[1]) == "PASSIVE"), None)
        assert setting, f"{name}: no os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')"
        heavy = [n.lineno for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)) and any(
            (a.name if isinstance(n, ast.Import) else n.module or "").split(".")[0] in
            {"torch", "model", "train", "toy", "upft", "eval", "safetensors"} for a in n.names)]
        first = min(heavy, default=len((ROOT / name).read_text()))  # none at module level: loaded lazily later
        assert setting < first, f"{name}: OMP_WAIT_POLICY set at line {setting}, after an import that loads " \
                                f"torch (line {first})"
    env = {k: v for k, v in __import__("os").environ.items() if k != "OMP_WAIT_POLICY"}
    code = "import os, train; print(os.environ['OMP_WAIT_POLICY'])"
    for given, want in ((None, "PASSIVE"), ("ACTIVE", "ACTIVE")):
        e = dict(env, **({"OMP_WAIT_POLICY": given} if given else {}))
        r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=e, capture_output=True, text=True, timeout=120)
        assert r.stdout.strip() == want, r.stderr
