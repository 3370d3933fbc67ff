"""What the instructor tests share (tests/instructor/test_<problem>_ref.py; never in a student copy).

Each instructor test compares the code under test with outputs the REFERENCE implementation saved, on tiny
seeded inputs: tests/instructor/fixtures/<problem>.npz (arrays) or .json. `python tests/instructor/make_fixtures.py`
rewrites every fixture from the reference (run it in the reference repository, never in a student copy).

The code under test is the repository these tests lie in, or, when `scripts/assignment.py grade --tier instructor`
runs them against a student copy, that copy (UPFT_GRADE_COPY, set by grade, which copies this folder and the
reference's tests/exercises outside both: a copy's own tests and conftest.py are never run on this tier). Each test module defines `make()`, which computes its fixture's content through the code under test
(so make_fixtures.py, run on the reference, saves the reference's outputs), and plain test functions without
arguments that compare the code under test against the saved fixture.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures"
CODE = Path(os.environ.get("UPFT_GRADE_COPY") or HERE.parents[1]).resolve()  # the repository under test
# its modules first; the test helpers (helpers.py, util_tok.py) from the tests beside this folder, the reference's
for p in (HERE.parent / "exercises", HERE.parent, CODE):
    if str(p) in sys.path:
        sys.path.remove(str(p))
    sys.path.insert(0, str(p))


def save(problem: str, content: dict) -> Path:
    """Write a fixture: a dict of arrays -> <problem>.npz; anything else JSON-able -> <problem>.json."""
    FIXTURES.mkdir(exist_ok=True)
    if all(isinstance(v, np.ndarray) for v in content.values()):
        path = FIXTURES / f"{problem}.npz"
        np.savez_compressed(path, **content)
    else:
        path = FIXTURES / f"{problem}.json"
        path.write_text(json.dumps(content, indent=1, sort_keys=True) + "\n")
    return path


def load(problem: str) -> dict:
    """The saved reference outputs of `problem` (no pickles: allow_pickle=False)."""
    npz, js = FIXTURES / f"{problem}.npz", FIXTURES / f"{problem}.json"
    if npz.is_file():
        with np.load(npz, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    return json.loads(js.read_text())


def close(got, want, what, atol=1e-5, rtol=1e-4):
    """Assert two arrays agree, with a message that says where they differ most."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, the reference's is {want.shape}"
    if not np.allclose(got, want, atol=atol, rtol=rtol, equal_nan=True):
        i = np.unravel_index(np.nanargmax(np.abs(got - want)), got.shape)
        raise AssertionError(f"{what}: differs from the reference's saved output (at {tuple(map(int, i))}: "
                             f"{got[i]:.6g}, expected {want[i]:.6g})")
