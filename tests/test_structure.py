"""The module boundaries a reader relies on: no import cycle between the top-level modules, no
function-level import of a project module (except commented test seams), a grader without torch, no
function longer than a screen or two, and scripts that use the modules' public names only."""
import ast
import re
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


def module_graph_table():
    """The module graph as docs/usage.md shows it: one row per top-level module, the project modules it imports."""
    rows = ["| module | imports (project modules) |", "|---|---|"]
    for m, p in sorted(MODULES.items()):
        deps = sorted({name for name, *_ in project_imports(p)} - {m})
        rows.append(f"| `{m}` | {', '.join(f'`{d}`' for d in deps) or '-'} |")
    return "\n".join(rows)


def test_the_docs_module_graph_is_the_codes():
    """docs/usage.md's module graph is this table, generated from the imports: it cannot drift."""
    table = module_graph_table()
    assert table in (ROOT / "docs" / "usage.md").read_text(), "docs/usage.md's module graph should read:\n" + table


def test_project_imports_are_at_module_level():
    lazy = [f"{p.name}:{line}" for m, p in MODULES.items() for _, line, nested, text in project_imports(p)
            if nested and "#" not in text]
    assert lazy == []


MAX_FUNCTION_LINES = 80
TRAIN_MAX_LINES = 450
# The words of the infrastructure a reader of the method skips: several processes, their ranks and shards.
INFRASTRUCTURE = re.compile(r"rank|shard|torchrun|barrier|all_reduce|nproc|dist\.", re.I)
TRAIN_MAX_INFRASTRUCTURE_LINES = 15


def test_train_py_reads_top_to_bottom_on_one_process():
    """train.py is the method's loop and its steps: at most TRAIN_MAX_LINES lines, of which at most
    TRAIN_MAX_INFRASTRUCTURE_LINES mention the distributed machinery (comments and docstrings included);
    the run folder, resume, faults and the collectives live in runfolder.py and fsdp.py."""
    lines = (ROOT / "train.py").read_text().splitlines()
    infra = [f"{i}: {line.strip()}" for i, line in enumerate(lines, 1) if INFRASTRUCTURE.search(line)]
    assert len(lines) <= TRAIN_MAX_LINES, f"train.py has {len(lines)} lines (at most {TRAIN_MAX_LINES})"
    assert len(infra) <= TRAIN_MAX_INFRASTRUCTURE_LINES, "\n".join([f"{len(infra)} lines:"] + infra)


def test_the_infrastructure_pattern_finds_what_it_looks_for():
    planted = ["if dist.is_initialized():", "world = int(os.environ['WORLD_SIZE'])", "# under torchrun", "nproc = 2",
               "load_sharded_model(d)", "all_reduce([n])", "x = 1"]
    assert [bool(INFRASTRUCTURE.search(line)) for line in planted] == [True, False, True, True, True, True, False]


def test_no_function_is_longer_than_80_lines():
    """Every function and method of the top-level modules, docstring included, fits in 80 lines: a
    long one is split into named steps a reader can take one at a time."""
    long = []
    for m, p in MODULES.items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{p.name}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []


SCRIPTS = sorted((ROOT / "scripts").glob("*.py")) + [ROOT / "tests" / "bench.py"]


def private_uses(path):
    """`from X import _y` and `X._y` (X a project module, under any alias) in one file: (line, text)."""
    tree = ast.parse(path.read_text())
    aliases = {}  # local name -> project module
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases.update({a.asname or a.name: a.name for a in node.names if a.name.split(".")[0] in MODULES})
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in MODULES:
            found += [(node.lineno, f"from {node.module} import {a.name}") for a in node.names
                      if a.name.startswith("_")]
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__") \
                and isinstance(node.value, ast.Name) and node.value.id in aliases:
            found.append((node.lineno, f"{node.value.id}.{node.attr}"))
        elif isinstance(node, ast.Call) and ast.unparse(node.func) == "__import__" and node.args \
                and isinstance(node.args[0], ast.Constant) and node.args[0].value in MODULES:
            found.append((node.lineno, ast.unparse(node)))
    return sorted(found)


def test_scripts_use_public_names_only():
    """scripts/ and tests/bench.py call the modules through their public names (no leading underscore,
    no __import__ of a project module): a private name may change with the module that owns it."""
    found = [f"{p.relative_to(ROOT)}:{line}: {text}" for p in SCRIPTS for line, text in private_uses(p)]
    assert found == []


def test_the_private_name_check_finds_what_it_looks_for(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("import plan as P\nfrom model import _generate_chunk\nimport json\n"
                       "P._param_shapes(None)\njson._default_decoder\n__import__('train')\n")
    assert [line for line, _ in private_uses(planted)] == [2, 4, 6]


def test_grader_does_not_import_torch():
    code = "import sys, grader; assert 'torch' not in sys.modules, 'grader imported torch'; " \
           "print(grader.is_equiv('\\\\frac{1}{2}', '0.5'))"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "True", r.stderr


ENTRY_POINTS = ["train.py", "eval.py", "scripts/show_example.py", "scripts/build_toy.py", "scripts/figures.py",
                "scripts/gpu_check.py", "tests/bench.py"]


def test_entry_points_default_to_a_passive_openmp_wait_before_torch_loads():
    """OpenMP reads OMP_WAIT_POLICY once, when torch loads it: every entry point sets the passive default
    (docs/performance.md, "A busy machine") with setdefault, so a user's own setting still wins, and before
    its first import of torch or of a project module that imports torch."""
    for name in ENTRY_POINTS:
        tree = ast.parse((ROOT / name).read_text())
        setting = next((n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call)
                        and ast.unparse(n.func) == "os.environ.setdefault" and n.args
                        and ast.literal_eval(n.args[0]) == "OMP_WAIT_POLICY"
                        and ast.literal_eval(n.args[1]) == "PASSIVE"), None)
        assert setting, f"{name}: no os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')"
        heavy = [n.lineno for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)) and any(
            (a.name if isinstance(n, ast.Import) else n.module or "").split(".")[0] in
            {"torch", "model", "train", "toy", "upft", "eval", "cli", "plan", "fsdp", "safetensors"}
            for a in n.names)]
        first = min(heavy, default=len((ROOT / name).read_text()))  # none at module level: loaded lazily later
        assert setting < first, f"{name}: OMP_WAIT_POLICY set at line {setting}, after an import that loads " \
                                f"torch (line {first})"
    env = {k: v for k, v in __import__("os").environ.items() if k != "OMP_WAIT_POLICY"}
    code = "import os, train; print(os.environ['OMP_WAIT_POLICY'])"
    for given, want in ((None, "PASSIVE"), ("ACTIVE", "ACTIVE")):
        e = dict(env, **({"OMP_WAIT_POLICY": given} if given else {}))
        r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=e, capture_output=True, text=True, timeout=120)
        assert r.stdout.strip() == want, r.stderr
