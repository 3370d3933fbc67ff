"""Shared pieces of the contract tests (tests/exercises/test_<exercise>.py).

No network and no transformers: the tokenizer is a real byte-level BPE trained in well under a second
(tests/util_tok.py), the models are tiny seeded `model.Transformer`s. Every test is a plain function
without arguments, and calls the exercise through its module (`model.sample_next(...)`, never
`from model import sample_next`), so that tests/test_exercise_variants.py can swap a wrong variant in.
"""
from __future__ import annotations

import atexit
import functools
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
# The code under test: this repository's, or the copy `assignment.py grade` names (it runs the reference's own
# tests against a copy on the instructor tier); and tests/ (util_tok.py) beside this file.
CODE = Path(os.environ.get("UPFT_GRADE_COPY") or HERE.parents[1]).resolve()
for p in (CODE, HERE.parent):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))
from data import Tokenizer  # noqa: E402
from model import Config, Transformer  # noqa: E402
from util_tok import make_tokenizer_dir  # noqa: E402

# A tiny Llama: GQA (4 query heads over 2 key/value heads), 2 layers, untied head.
TINY = dict(model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, rope_theta=100.0)


@functools.lru_cache(maxsize=None)
def tokenizer(template="chatml"):
    """A real tokenizer checkpoint (ChatML: eos <|im_end|>, pad <|endoftext|>), built once per session."""
    d = tempfile.mkdtemp(prefix="upft-exercise-tok-")
    atexit.register(shutil.rmtree, d, True)
    make_tokenizer_dir(d, template=template, vocab_size=256)
    return Tokenizer.from_pretrained(d)


def tiny_model(seed=0, std=0.3, **overrides):
    """A tiny randomly initialised Llama (large init std, so positions and masks change the logits a lot)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return Transformer(Config.from_dict({**TINY, **overrides})).init_weights(std).eval()


def frequencies(ids, V):
    """Share of each token id among the draws `ids` (1-d)."""
    return torch.bincount(ids.flatten(), minlength=V).double() / ids.numel()
