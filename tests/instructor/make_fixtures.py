"""Rewrite every instructor fixture from the reference implementation (this repository's code):

    python tests/instructor/make_fixtures.py            # all problems
    python tests/instructor/make_fixtures.py fit lab    # some

Each tests/instructor/test_<problem>_ref.py defines make(), the content of fixtures/<problem>.npz or .json."""
import importlib
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.pop("UPFT_GRADE_COPY", None)   # the reference's own outputs, never a copy's
import torch  # noqa: E402

import instructor_util  # noqa: E402

if __name__ == "__main__":
    torch.set_num_threads(1)
    found = sorted(p.stem.removeprefix("test_").removesuffix("_ref") for p in HERE.glob("test_*_ref.py"))
    names = sys.argv[1:] or found
    for name in names:
        module = importlib.import_module(f"test_{name}_ref")
        print(instructor_util.save(name, module.make()).relative_to(HERE.parents[1]))
