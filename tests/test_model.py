"""model.py against transformers (fp32, random tiny configs): logits, cache, generation, save/load, errors."""
import json
import shutil

import pytest
import torch

from conftest import LLAMA, QWEN2, build_hf
from data import UpftError
from model import Config, Transformer, generate, sample_next

transformers = pytest.importorskip("transformers")


def hf_load(d):
    return transformers.AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager",
                                                             dtype=torch.float32).eval()


def rand_ids(n, T, seed=0, vocab=256):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, T), generator=g)


# ----------------------------------------------------------------------------- 1. logits parity

@pytest.mark.parametrize("which", ["llama", "qwen2"])
def test_logits_match_transformers(which, llama_dir, qwen_dir):
    d = {"llama": llama_dir, "qwen2": qwen_dir}[which]
    ours, ref = Transformer.from_pretrained(d), hf_load(d)
    ids = rand_ids(3, 40)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), ref(ids).logits, atol=1e-4, rtol=1e-4)
    # the features the configs were picked for are really in play
    if which == "llama":
        assert ours.config.rope_type == "llama3" and ours.config.num_key_value_heads == 2
        assert ours.lm_head.weight.data_ptr() != ours.model.embed_tokens.weight.data_ptr()
    else:
        assert ours.model.layers[0].self_attn.q_proj.bias is not None
        assert ours.model.layers[0].self_attn.o_proj.bias is None
        assert ours.lm_head.weight.data_ptr() == ours.model.embed_tokens.weight.data_ptr()


def test_sharded_checkpoint(tmp_path):
    ref = build_hf(LLAMA, tmp_path, seed=3, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    ours = Transformer.from_pretrained(tmp_path)
    ids = rand_ids(2, 17, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), ref(ids).logits, atol=1e-4, rtol=1e-4)


def test_legacy_rope_keys(tmp_path, llama_dir):
    """Hub checkpoints say rope_theta + rope_scaling; transformers 5 writes rope_parameters."""
    shutil.copytree(llama_dir, tmp_path, dirs_exist_ok=True)
    cfg = json.loads((tmp_path / "config.json").read_text())
    rp = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rp.pop("rope_theta")
    cfg["rope_scaling"] = rp
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    a, b = Transformer.from_pretrained(tmp_path), Transformer.from_pretrained(llama_dir)
    torch.testing.assert_close(a.inv_freq, b.inv_freq)


# ----------------------------------------------------------------------------- 2. cache and generation

@pytest.mark.parametrize("which", ["llama", "qwen2"])
def test_cached_logits_equal_full_logits(which, llama_dir, qwen_dir):
    from model import KVCache
    model = Transformer.from_pretrained({"llama": llama_dir, "qwen2": qwen_dir}[which])
    lens = [12, 7, 3]
    prompts = [rand_ids(1, n, seed=n)[0].tolist() for n in lens]
    T = max(lens)
    ids = torch.zeros(3, T, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, T - len(p):] = torch.tensor(p)
    cache = KVCache(model.config, 3, T + 6, torch.tensor([T - n for n in lens]), "cpu", torch.float32)
    cont = rand_ids(3, 6, seed=9)
    with torch.no_grad():
        pre = model(ids, cache=cache)
        steps = [model(cont[:, i:i + 1], cache=cache)[:, 0] for i in range(6)]
        for b, p in enumerate(prompts):  # each row alone, whole sequence, no cache
            full = model(torch.tensor([p + cont[b].tolist()]))[0]
            torch.testing.assert_close(pre[b, T - len(p):], full[:len(p)], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(torch.stack([s[b] for s in steps]), full[len(p):], atol=1e-4, rtol=1e-4)
    assert not torch.isnan(pre).any()


@pytest.mark.parametrize("which", ["llama", "qwen2"])
def test_batched_greedy_equals_transformers_and_single(which, llama_dir, qwen_dir):
    d = {"llama": llama_dir, "qwen2": qwen_dir}[which]
    ours, ref = Transformer.from_pretrained(d), hf_load(d)
    prompts = [rand_ids(1, n, seed=100 + n)[0].tolist() for n in (5, 19, 11, 2, 8)]
    N = 40
    batched = generate(ours, prompts, N)  # one call, different lengths
    assert [len(r) for r in batched] == [N] * len(prompts)  # no stop ids: every row runs to N
    for p, got in zip(prompts, batched):
        assert generate(ours, [p], N)[0] == got
        with torch.no_grad():
            hf = ref.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                              max_new_tokens=N, min_new_tokens=N, do_sample=False, pad_token_id=0)
        assert hf[0, len(p):].tolist() == got
    # transformers' own left-padded batch gives the same tokens too
    T = max(map(len, prompts))
    ids = torch.tensor([[0] * (T - len(p)) + p for p in prompts])
    att = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        hf = ref.generate(ids, attention_mask=att, max_new_tokens=N, min_new_tokens=N, do_sample=False,
                          pad_token_id=0)
    assert hf[:, T:].tolist() == batched


def test_stop_ids_per_row(llama_dir):
    model = Transformer.from_pretrained(llama_dir)
    prompts = [rand_ids(1, n, seed=n)[0].tolist() for n in (4, 9, 6)]
    free = generate(model, prompts, 20)
    # stop each row on a token it really produces at some step; two stop ids at once
    stops = (free[0][5], free[1][2])
    cut = generate(model, prompts, 20, stop_ids=stops)
    for f, c in zip(free, cut):
        first = next((i for i, t in enumerate(f) if t in stops), len(f))
        assert c == f[:first]
    assert len(cut[1]) <= 2 and len(cut[0]) <= 5


def test_chunked_batches_equal_one_batch(qwen_dir):
    model = Transformer.from_pretrained(qwen_dir)
    prompts = [rand_ids(1, n, seed=n)[0].tolist() for n in (3, 8, 5, 12, 1, 7)]
    assert generate(model, prompts, 12, batch_size=4) == generate(model, prompts, 12)


# ----------------------------------------------------------------------------- 3. save round trip

@pytest.mark.parametrize("which", ["llama", "qwen2"])
def test_save_pretrained_roundtrip(which, llama_dir, qwen_dir, tmp_path):
    ours = Transformer.from_pretrained({"llama": llama_dir, "qwen2": qwen_dir}[which])
    with torch.no_grad():  # change the weights so the check is not just file copying
        ours.model.layers[0].mlp.up_proj.weight.mul_(1.5)
    ours.save_pretrained(tmp_path / "out")
    assert not [p for p in tmp_path.iterdir() if p.name != "out"]  # no temp folder left behind
    back = hf_load(tmp_path / "out")
    ids = rand_ids(2, 15)
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, ours(ids), atol=1e-4, rtol=1e-4)
    ours2 = Transformer.from_pretrained(tmp_path / "out")
    assert ours2.config.to_dict() == ours.config.to_dict()


def test_save_sharded_roundtrip(llama_dir, tmp_path):
    ours = Transformer.from_pretrained(llama_dir)
    ours.save_pretrained(tmp_path / "out", max_shard_bytes=60_000)
    assert (tmp_path / "out" / "model.safetensors.index.json").is_file()
    back = hf_load(tmp_path / "out")
    ids = rand_ids(1, 9)
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, ours(ids), atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- 5. sampling invariants

def test_sampling_invariants(llama_dir):
    logits = torch.randn(64, 50, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    assert torch.equal(sample_next(logits, 0.0), logits.argmax(-1))
    assert torch.equal(sample_next(logits, 1.0, top_k=1, generator=g), logits.argmax(-1))
    assert torch.equal(sample_next(logits, 0.7, top_p=1e-9, generator=g), logits.argmax(-1))  # >= 1 kept
    # top-k keeps exactly k even with ties
    tied = torch.zeros(1000, 10)
    ks = sample_next(tied, 1.0, top_k=3, generator=g)
    assert len(set(ks.tolist())) == 3
    # top-p: keeps the smallest set reaching p
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log().expand(2000, 4)
    draws = sample_next(probs, 1.0, top_p=0.75, generator=g)
    assert set(draws.tolist()) == {0, 1}

    model = Transformer.from_pretrained(llama_dir)
    prompts = [[5, 6, 7], [9, 10, 11, 12, 13]]
    a = generate(model, prompts, 10, temperature=1.0, seed=7, num_samples=3)
    b = generate(model, prompts, 10, temperature=1.0, seed=7, num_samples=3)
    assert a == b and len(a) == 2 and all(len(g) == 3 for g in a)  # per prompt, its 3 samples
    assert generate(model, prompts, 10, temperature=1.0, top_k=1, seed=3) == generate(model, prompts, 10)
    # n samples: prefill once, expand, and every row draws its own first token
    (rows,) = generate(model, [[1, 2, 3]], 4, temperature=1.0, seed=0, num_samples=8)
    assert len({tuple(r) for r in rows}) > 1
    assert len({r[0] for r in rows}) > 1


# ----------------------------------------------------------------------------- 6. bad input

def test_bad_config(tmp_path, llama_dir):
    with pytest.raises(UpftError, match="config.json"):
        Transformer.from_pretrained(tmp_path)
    for change, msg in [({"model_type": "mistral"}, "model_type"),
                        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}}, "rope"),
                        ({"use_sliding_window": True}, "sliding"),
                        ({"hidden_act": "gelu"}, "hidden_act")]:
        d = tmp_path / f"bad{len(msg)}{msg}"
        shutil.copytree(llama_dir, d)
        cfg = json.loads((d / "config.json").read_text())
        cfg.update(change)
        (d / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(UpftError, match=msg) as e:
            Transformer.from_pretrained(d)
        assert "config.json" in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UpftError, match="not valid JSON"):
        Transformer.from_pretrained(tmp_path)


def _edit_weights(src, dst, fn):
    from safetensors.torch import load_file, save_file
    shutil.copytree(src, dst)
    sd = load_file(dst / "model.safetensors")
    fn(sd)
    save_file(sd, dst / "model.safetensors", metadata={"format": "pt"})


def test_bad_weights(tmp_path, llama_dir):
    key = "model.layers.0.mlp.up_proj.weight"
    _edit_weights(llama_dir, tmp_path / "missing", lambda sd: sd.pop(key))
    with pytest.raises(UpftError, match=f"missing tensor.*{key}"):
        Transformer.from_pretrained(tmp_path / "missing")
    _edit_weights(llama_dir, tmp_path / "extra", lambda sd: sd.update({"model.bogus": torch.zeros(2)}))
    with pytest.raises(UpftError, match="unexpected tensor.*model.bogus"):
        Transformer.from_pretrained(tmp_path / "extra")
    _edit_weights(llama_dir, tmp_path / "shape", lambda sd: sd.update({key: torch.zeros(3, 3)}))
    with pytest.raises(UpftError, match=f"{key} has shape \\(3, 3\\)"):
        Transformer.from_pretrained(tmp_path / "shape")
    shutil.copytree(llama_dir, tmp_path / "trunc")
    f = tmp_path / "trunc" / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(UpftError, match="model.safetensors"):
        Transformer.from_pretrained(tmp_path / "trunc")
    shutil.copytree(llama_dir, tmp_path / "none")
    (tmp_path / "none" / "model.safetensors").rename(tmp_path / "none" / "pytorch_model.bin")
    with pytest.raises(UpftError, match="pickle"):
        Transformer.from_pretrained(tmp_path / "none")


def test_config_roundtrip_keeps_unknown_keys():
    cfg = Config.from_dict({**QWEN2, "initializer_range": 0.02, "use_cache": True})
    d = cfg.to_dict()
    assert d["use_cache"] is True and d["architectures"] == ["Qwen2ForCausalLM"]
    assert Config.from_dict(d).to_dict() == d
