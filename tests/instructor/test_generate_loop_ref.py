"""Instructor tests of _generate_chunk: the code under test against the reference's saved samples
(fixtures/generate_loop.json) in a range of scenarios: n samples per prompt, stop ids, greedy with keys, no keys,
one prompt, equal lengths (no padding), max_new_tokens 0 and 1, every row stopping at once; through
model.generate too. Independent of the attention and sample_next problems: a fake model whose logits are a hash
of each row's history (written into and read back from the KV cache), and a fake sample_next."""
import instructor_util  # noqa: I001  (first: it puts the code under test on sys.path)

import pytest
import torch

import model

V = 10


class FakeLM:
    """logits (B, T or 1, V) of each row's whole history; the cache (1 layer, 1 kv head, head_dim 1) holds the
    token ids at their slots; cache.pos += T as Transformer.forward does."""

    def __init__(self):
        self.config = model.Config.from_dict(dict(vocab_size=V, hidden_size=2, intermediate_size=2, num_hidden_layers=1,
                                                  num_attention_heads=1, num_key_value_heads=1, head_dim=1))
        self.device = torch.device("cpu")
        self.calls = []

    def parameters(self):
        return iter([torch.zeros(1)])

    def __call__(self, ids, cache=None, last_only=False):
        B, T = ids.shape
        tokens = cache.k[0, :, 0, :, 0]
        self.calls.append([B, T, bool(last_only), [int(p) for p in cache.pad]])
        tokens[:, cache.pos:cache.pos + T] = ids.float()
        out = torch.zeros(B, T, V)
        for b in range(B):
            for t in range(T):
                h = 3
                for tok in tokens[b, int(cache.pad[b]):cache.pos + t + 1].long().tolist():
                    h = (h * 17 + tok * 5 + 1) % 9973
                out[b, t, h % V], out[b, t, (h // V) % V] = 1.0, 3.0
        cache.pos += T
        return out[:, -1:] if last_only else out


class FakeSampler:
    """The argmax, moved by int(u * V) when u is given; records (temperature, top_k, top_p, u given)."""

    def __init__(self):
        self.calls = []

    def __call__(self, logits, temperature=0.0, top_k=0, top_p=1.0, generator=None, u=None):
        self.calls.append([temperature, top_k, top_p, u is not None])
        best = logits.argmax(-1)
        return best if u is None else (best + (torch.as_tensor(u) * V).long()) % V


P = [[1, 2, 3, 4, 5, 6], [7], [8, 9, 0], [3, 3, 3], [4, 6]]
SCENARIOS = {  # name: (prompts, n, max_new_tokens, temperature, top_k, top_p, stop_ids, seed or None)
    "sampled": (P, 4, 12, 0.6, 20, 0.95, (2, 5), 7),
    "greedy_with_keys": (P, 2, 9, 0.0, 0, 1.0, (4,), 3),
    "no_keys": (P, 3, 5, 0.8, 0, 1.0, (1,), None),
    "one_prompt": (P[:1], 1, 6, 1.0, 0, 1.0, (), 1),
    "equal_lengths": ([[1, 2], [3, 4], [5, 6]], 2, 7, 0.7, 5, 0.9, (0, 9), 2),
    "zero_tokens": (P, 3, 0, 0.6, 0, 1.0, (2,), 0),
    "one_token": (P, 5, 1, 0.6, 0, 1.0, (), 4),
    "long_with_early_stops": (P, 6, 20, 1.0, 0, 1.0, (0, 1, 2), 5),
    "every_row_stops_at_once": (P, 2, 8, 0.6, 0, 1.0, tuple(range(V)), 6),
}


def scenario(name):
    prompts, n, steps, temperature, top_k, top_p, stop_ids, seed = SCENARIOS[name]
    lm, sampler = FakeLM(), FakeSampler()
    keys = None if seed is None else model.stream_keys(prompts, seed, n)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(model, "sample_next", sampler)
        out = model._generate_chunk(lm, prompts, max_new_tokens=steps, num_samples=n, temperature=temperature,
                                    top_k=top_k, top_p=top_p, stop_ids=stop_ids, keys=keys)
    return {"samples": out, "prefill": lm.calls[0] if lm.calls and steps else None,
            "sampler_settings": sorted({tuple(c[:3]) for c in sampler.calls}),
            "uniforms_given": sorted({c[3] for c in sampler.calls})}


def through_generate():
    lm = FakeLM()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(model, "sample_next", FakeSampler())
        return [model.generate(lm, P, 10, temperature=0.6, stop_ids=(2, 8), seed=9, num_samples=3, batch_size=bs)
                for bs in (2, None)]


def make():
    content = {name: scenario(name) for name in SCENARIOS}
    content = {name: {**v, "sampler_settings": [list(s) for s in v["sampler_settings"]]} for name, v in content.items()}
    return {"scenarios": content, "generate": through_generate()}


def test_samples_match_the_reference():
    want = instructor_util.load("generate_loop")["scenarios"]
    for name in SCENARIOS:
        got = scenario(name)["samples"]
        assert got == want[name]["samples"], \
            f"{name} {SCENARIOS[name][1:]}: expected {want[name]['samples']}, got {got}"


def test_the_prefill_and_the_sampler_calls_match_the_reference():
    want = instructor_util.load("generate_loop")["scenarios"]
    for name in SCENARIOS:
        got = scenario(name)
        if want[name]["prefill"] is not None:
            assert got["prefill"] == want[name]["prefill"], \
                f"{name}: the prefill call [rows, T, last_only, pad] should be {want[name]['prefill']}, " \
                f"got {got['prefill']}"
        for key in ("sampler_settings", "uniforms_given"):
            assert [list(s) if isinstance(s, tuple) else s for s in got[key]] == want[name][key], \
                f"{name}: {key} (temperature, top_k, top_p / u given) should be {want[name][key]}, got {got[key]}"


def test_generate_over_chunks_matches_the_reference():
    want = instructor_util.load("generate_loop")["generate"]
    got = through_generate()
    assert got == want, f"model.generate with batch_size 2 and None: expected {want}, got {got}"
