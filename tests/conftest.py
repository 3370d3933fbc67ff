"""Shared test fixtures: tiny random checkpoints in real HF layout, built by transformers (test-only)."""
import json
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "scripts"))  # the toy world builder and the statistics (toy.py, paired.py)
SHARED_DATA = ROOT.parent / "shared" / "data"


def gsm8k(split, n):
    """The first n rows of ../shared/data/gsm8k_<split>.jsonl (the real-checkpoint tests); skip when absent."""
    from data import read_jsonl
    path = SHARED_DATA / f"gsm8k_{split}.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} not found (real GSM8K data lives outside the repository)")
    return read_jsonl(path)[:n]


def chat_template_matches(tok, hf_tok, default_system, question):
    """Our chat template renders three conversations (plain, with a system turn, multi-turn) as transformers'
    does, with and without the generation prompt; the checkpoint's default system prompt opens a conversation
    that has none. Returns the rendering of the one with a system turn ("Solve it step by step.")."""
    convs = [[{"role": "user", "content": question}],
             [{"role": "system", "content": "Solve it step by step."}, {"role": "user", "content": question}],
             [{"role": "user", "content": question}, {"role": "assistant", "content": "18"},
              {"role": "user", "content": "Why?"}]]
    for conv in convs:
        for gen in (True, False):
            assert tok.apply_chat_template(conv, add_generation_prompt=gen) == \
                hf_tok.apply_chat_template(conv, add_generation_prompt=gen, tokenize=False)
    no_system = tok.apply_chat_template(convs[0])
    assert no_system.startswith(f"<|im_start|>system\n{default_system}<|im_end|>\n<|im_start|>user\n")
    assert no_system.endswith("<|im_end|>\n<|im_start|>assistant\n")
    return tok.apply_chat_template(convs[1])


def chat(tok, question):
    """The ids of a one-turn chat prompt with the generation prompt, under `tok`'s own template."""
    return tok.encode(tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True))

torch.set_num_threads(2)

# Tiny configs in HF config.json terms. Llama: GQA, llama3 rope scaling, untied. Qwen2: q/k/v bias, tied.
LLAMA = dict(model_type="llama", vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=500000.0,
             max_position_embeddings=256, tie_word_embeddings=False, initializer_range=0.1,
             rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                               original_max_position_embeddings=32))
QWEN2 = dict(model_type="qwen2", vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=10000.0,
             max_position_embeddings=256, tie_word_embeddings=True, initializer_range=0.1)


def build_hf(cfg: dict, out: Path, seed=0, max_shard_size=None):
    """A random transformers model saved with its own save_pretrained (the reference checkpoint)."""
    transformers = pytest.importorskip("transformers")
    cfg = dict(cfg)
    cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
           "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM)}[cfg.pop("model_type")]
    torch.manual_seed(seed)
    hf = cls[1](cls[0](**cfg, attn_implementation="eager")).eval()
    with torch.no_grad():  # make norms and biases non-trivial so a mix-up cannot hide
        for name, p in hf.named_parameters():
            if name.endswith("norm.weight") or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    kw = {"max_shard_size": max_shard_size} if max_shard_size else {}
    hf.save_pretrained(out, **kw)
    return hf


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("llama")
    build_hf(LLAMA, d)
    return d


@pytest.fixture(scope="session")
def qwen_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("qwen2")
    build_hf(QWEN2, d, seed=1)
    return d


@pytest.fixture(autouse=True)
def _one_thread_for_tiny_models(request):
    """The course-kit tests run models of a few thousand parameters: one thread is fastest, and on a busy
    2-core machine two OpenMP threads per process can make them many times slower."""
    path = request.node.path
    if "exercises" not in path.parts and path.name != "test_exercise_variants.py":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny random Llama (LLAMA, seed 5) with a real (tiny, trained) tokenizer and a ChatML template,
    shared by the training and the torchrun tests (one per test module)."""
    from util_tok import make_tokenizer_dir  # tests/util_tok.py: trains a tokenizer with `tokenizers`
    d = tmp_path_factory.mktemp("tiny")
    build_hf(LLAMA, d, seed=5)
    make_tokenizer_dir(d, template="chatml", vocab_size=256)
    return d


def wait_for_checkpoint(proc, meta, step, timeout, poll=0.05):
    """Wait until `proc` has written a checkpoint at optimizer step >= `step` (its meta.json) and is
    still running, so a test can kill it mid-training. False if it finished first or time ran out."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if meta.exists() and json.loads(meta.read_text())["step"] >= step:
            break
        time.sleep(poll)
    return proc.poll() is None
