"""The module boundaries a reader relies on. The core at the top level (upft, model, data, train, eval,
grader) is the whole method on one process and imports nothing else of the project at module level; the
package launch/ wraps it, and train.py and eval.py reach it each through one lazy door. Plus: no import
cycle, the docs' module graph generated from the imports, the core's size and function lengths, no block
shared by the core and the rest, a grader without torch, scripts that use public names only."""
import ast
import re
import subprocess
import sys

from conftest import ROOT

CORE = ("upft", "model", "data", "train", "eval", "grader")
CARD = ("upft", "model", "data", "train", "eval")  # the design card's five files
PACKAGE = "launch"
LAUNCH = {f"{PACKAGE}.{p.stem}": p for p in (ROOT / PACKAGE).glob("*.py") if p.stem != "__init__"}
SCRIPTS = {p.stem: p for p in (ROOT / "scripts").glob("*.py")}  # toy.py, paired.py and the scripts
MODULES = {**{m: ROOT / f"{m}.py" for m in CORE}, **LAUNCH}
PROJECT = set(MODULES) | {PACKAGE} | set(SCRIPTS)


def project_imports(path):
    """(imported project module, line, the function it is in or None, line text) for every import."""
    src = path.read_text()
    lines = src.splitlines()
    tree = ast.parse(src)
    where = {}
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                where.setdefault(node, fn.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module + (f".{a.name}" if node.module == PACKAGE else "") for a in node.names]
        else:
            continue
        for name in names:
            name = name if name in PROJECT else name.split(".")[0]
            if name in PROJECT:
                yield name, node.lineno, where.get(node), lines[node.lineno - 1]


def test_only_the_core_at_the_top_level():
    assert sorted(p.stem for p in ROOT.glob("*.py")) == sorted(CORE)


def test_the_core_imports_nothing_else_of_the_project_at_module_level():
    found = [f"{m}.py:{line}: {text.strip()}" for m in CORE for name, line, fn, text in project_imports(MODULES[m])
             if fn is None and name not in CORE]
    assert found == []


def test_one_door_each_in_train_and_eval_none_in_the_others():
    """Every function-level import of a project module in the core is launch/'s, in the one marked door:
    train.launcher and eval.extension. upft, model, data and grader have none."""
    doors = {m: {fn for _, _, fn, _ in project_imports(MODULES[m]) if fn} for m in CORE}
    assert doors == {"train": {"launcher"}, "eval": {"extension"}, "upft": set(), "model": set(), "data": set(),
                     "grader": set()}
    for m in ("train", "eval"):
        assert {name for name, _, fn, _ in project_imports(MODULES[m]) if fn} <= set(LAUNCH), m


def test_no_import_cycle():
    graph = {m: {name for name, _, fn, _ in project_imports(p) if not fn} - {m} for m, p in MODULES.items()}
    state = {}

    def visit(m, stack):
        state[m] = "open"
        for n in graph.get(m, ()):
            assert state.get(n) != "open", "import cycle: " + " -> ".join(stack + [m, n])
            if n not in state and n in graph:
                visit(n, stack + [m])
        state[m] = "done"
    for m in graph:
        if m not in state:
            visit(m, [])


def module_graph_table():
    """The module graph as docs/usage.md shows it: one row per module of the core and of launch/, the project
    modules it imports at module level (and, marked "lazily", in a function)."""
    rows = ["| module | imports (project modules) |", "|---|---|"]
    for m, p in sorted(MODULES.items(), key=lambda kv: (kv[0].startswith(PACKAGE), kv[0])):
        eager = sorted({name for name, _, fn, _ in project_imports(p) if not fn} - {m})
        lazy = sorted({name for name, _, fn, _ in project_imports(p) if fn} - {m} - set(eager))
        cell = ", ".join([f"`{d}`" for d in eager] + [f"`{d}` (lazily, in `{fn}`)" for d in lazy
                                                       for fn in sorted({f for n, _, f, _ in project_imports(p)
                                                                         if n == d and f})])
        rows.append(f"| `{m}` | {cell or '-'} |")
    return "\n".join(rows)


def test_the_docs_module_graph_is_the_codes():
    """docs/usage.md's module graph is this table, generated from the imports: it cannot drift."""
    table = module_graph_table()
    assert table in (ROOT / "docs" / "usage.md").read_text(), "docs/usage.md's module graph should read:\n" + table


def test_the_scan_sees_a_planted_lazy_import(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("import data\n\ndef door():\n    import launch.run\n    from launch import cli\n")
    assert [(n, fn) for n, _, fn, _ in project_imports(planted)] == [("data", None), ("launch.run", "door"),
                                                                    ("launch.cli", "door")]


CARD_MAX_LINES = 2000
MAX_FUNCTION_LINES = 60          # in the core; launch/ and scripts/: PACKAGE_MAX_FUNCTION_LINES
PACKAGE_MAX_FUNCTION_LINES = 80


def long_functions(path, limit):
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > limit:
            out.append(f"{path.name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    return out


def test_the_card_files_fit_in_2000_lines_and_no_function_is_longer_than_60():
    lines = {m: len(MODULES[m].read_text().splitlines()) for m in CARD}
    assert sum(lines.values()) <= CARD_MAX_LINES, lines
    assert [f for m in CORE for f in long_functions(MODULES[m], MAX_FUNCTION_LINES)] == []
    assert [f for p in list(LAUNCH.values()) + [SCRIPTS["toy"], SCRIPTS["paired"]]
            for f in long_functions(p, PACKAGE_MAX_FUNCTION_LINES)] == []


def test_the_length_check_sees_a_long_function(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("def f():\n" + "    x = 1\n" * 60 + "\ndef g():\n    pass\n")
    assert long_functions(planted, MAX_FUNCTION_LINES) == ["planted.py:1 f (61 lines)"]


# The words of the machinery a reader of the method on one process never meets in code (comments and
# docstrings may point at launch/): several processes, ranks, shards, the memory plan, the run folder.
INFRASTRUCTURE = re.compile(r"\brank|shard|fsdp|fully_shard|DTensor|full_tensor|to_local|barrier|all_reduce|all_gather|"
                            r"torch\.distributed|dist\.|world_size|partial_dir|run_folder|plan_for|usable_bytes", re.I)
FSDP = re.compile(r"fsdp|fully_shard|DTensor|full_tensor|to_local|device_mesh|torch\.distributed|\brank", re.I)


def code_lines(path):
    """(line number, text) of the code: docstrings and comments left out."""
    src = path.read_text()
    tree = ast.parse(src)
    docs = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        first = body[0] if isinstance(body, list) and body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            docs.update(range(first.lineno, first.end_lineno + 1))
    return [(i, line.split("#")[0]) for i, line in enumerate(src.splitlines(), 1)
            if i not in docs and line.split("#")[0].strip()]


def test_the_core_holds_no_rank_shard_plan_or_run_folder_code():
    """upft.py takes the questions it is given (no rank or world); model.py has no FSDP code; train.py and
    eval.py run on one process (what real runs add is in launch/)."""
    found = [f"{m}.py:{i}: {text.strip()}" for m in CORE for i, text in code_lines(MODULES[m])
             if INFRASTRUCTURE.search(text) and not (m == "model" and "shard" in text and not FSDP.search(text))]
    assert found == []
    assert [t for _, t in code_lines(MODULES["upft"]) if re.search(r"\bworld\b|\bshare\b", t)] == []


def test_the_infrastructure_pattern_finds_what_it_looks_for():
    planted = ["if dist.is_initialized():", "rank, world = share", "load_sharded_model(d)", "all_reduce([n])",
               "x = 1", "out = partial_dir(args.out)", "plan = plan_for(args)"]
    assert [bool(INFRASTRUCTURE.search(line)) for line in planted] == [True, True, True, True, False, True, True]


def test_data_holds_the_tokenizer_the_rows_and_the_writes_only():
    names = {n.name for n in ast.parse(MODULES["data"].read_text()).body
             if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.name.startswith("_")}
    assert names == {"supervised_count", "UpftError", "UpftFault", "require", "read_jsonl", "umask", "write_jsonl",
                     "write_json", "atomic_dir", "load_rows", "resolve", "Tokenizer", "chat_prompt", "sampling_filters"}


def test_one_loss_path_no_partial_no_thrown_away_count():
    """The loop calls masked_ce_sum through micro_batch_loss with the model's hidden states and its head: no
    functools.partial, no loss callback into forward, no count computed and discarded."""
    for m in CORE:
        src = MODULES[m].read_text()
        assert "partial(" not in src and "loss, _ =" not in src, m
    forward = next(n for n in ast.walk(ast.parse(MODULES["model"].read_text()))
                   if isinstance(n, ast.FunctionDef) and n.name == "forward" and n.args.args[1].arg == "input_ids")
    assert "loss_fn" not in [a.arg for a in forward.args.args + forward.args.kwonlyargs]


def blocks(path, n=6):
    """Every run of n consecutive code lines (stripped; docstrings, comments and short lines left out)."""
    lines = [t.strip() for _, t in code_lines(path) if len(t.strip()) > 12]
    return {tuple(lines[i:i + n]): i for i in range(len(lines) - n + 1)}


def test_no_block_of_six_lines_in_both_the_core_and_the_rest():
    core = {}
    for m in CORE:
        core.update({b: m for b in blocks(MODULES[m])})
    shared = [f"{core[b]} and {p.relative_to(ROOT)}: {b[0]}" for p in list(LAUNCH.values()) + list(SCRIPTS.values())
              for b in blocks(p) if b in core]
    assert shared == []


SCRIPT_FILES = sorted((ROOT / "scripts").glob("*.py")) + [ROOT / "tests" / "bench.py"]


def private_uses(path):
    """`from X import _y` and `X._y` (X a project module, under any alias) in one file: (line, text)."""
    tree = ast.parse(path.read_text())
    aliases = {}  # local name -> project module
    top = set(CORE) | {PACKAGE, "toy", "paired"}  # the modules with a public face (scripts may share privately)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases.update({a.asname or a.name: a.name for a in node.names if a.name.split(".")[0] in top})
        elif isinstance(node, ast.ImportFrom) and node.module == PACKAGE:  # from launch import plan as P
            aliases.update({a.asname or a.name: f"{PACKAGE}.{a.name}" for a in node.names})
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in top:
            found += [(node.lineno, f"from {node.module} import {a.name}") for a in node.names
                      if a.name.startswith("_")]
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__") \
                and isinstance(node.value, ast.Name) and node.value.id in aliases:
            found.append((node.lineno, f"{node.value.id}.{node.attr}"))
        elif isinstance(node, ast.Call) and ast.unparse(node.func) == "__import__" and node.args \
                and isinstance(node.args[0], ast.Constant) and node.args[0].value in top:
            found.append((node.lineno, ast.unparse(node)))
    return sorted(found)


def test_scripts_use_public_names_only():
    """scripts/ and tests/bench.py call the modules through their public names (no leading underscore,
    no __import__ of a project module): a private name may change with the module that owns it."""
    found = [f"{p.relative_to(ROOT)}:{line}: {text}" for p in SCRIPT_FILES for line, text in private_uses(p)]
    assert found == []


def test_the_private_name_check_finds_what_it_looks_for(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("from launch import plan as P\nfrom model import _generate_chunk\nimport json\n"
                       "P._param_shapes(None)\njson._default_decoder\n__import__('train')\nimport launch.plan as Q\n"
                       "Q._x\n")
    assert [line for line, _ in private_uses(planted)] == [2, 4, 6, 8]


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
            {"torch", "model", "train", "toy", "upft", "eval", "launch", "safetensors"}
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
