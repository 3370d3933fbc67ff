"""Contract of model._generate_chunk, the KV-cached generation loop of one chunk of prompts: one left-padded
prefill (last position only), n samples per prompt from it, then one token per step for the rows still going,
each sample drawing its t-th token with number t of its own random stream, cut before its first stop id.

Independent of the attention and sample_next problems: the model is a fake whose logits are a function of each
row's whole history (which it writes into and reads back from the KV cache, so the history follows the rows
through the cache's expand and select), and model.sample_next is swapped for a fake sampler that records what
it is given: the argmax of the logits, moved by int(u * V) when a uniform u is given."""
import pytest
import torch

import model

V = 12


def next_logits(history):
    """The fake model's logits after `history`: one peak, at a hash of the whole history."""
    h = 7
    for t in history:
        h = (h * 31 + t + 1) % 10007
    logits = torch.zeros(V)
    logits[h % V] = 2.0
    return logits


def draw(logits, u):
    """The fake sampler: the argmax of each row, moved by int(u * V) when u is given."""
    best = logits.argmax(-1)
    return best if u is None else (best + (torch.as_tensor(u) * V).long()) % V


class FakeLM:
    """Stands for model.Transformer: __call__(ids, cache, last_only) -> logits (B, T or 1, V), cache.pos += T.
    Its cache has one layer, one key/value head of one dimension: the key at a slot is the token written there."""

    def __init__(self):
        self.config = model.Config.from_dict(dict(vocab_size=V, hidden_size=4, intermediate_size=4, num_hidden_layers=1,
                                                  num_attention_heads=1, num_key_value_heads=1, head_dim=1))
        self.device = torch.device("cpu")
        self.calls = []

    def parameters(self):
        return iter([torch.zeros(1)])

    def __call__(self, ids, cache=None, last_only=False):
        assert cache is not None, "the model must be called with the KV cache"
        B, T = ids.shape
        tokens = cache.k[0, :, 0, :, 0]                       # (rows, slots): the token at each slot
        assert tokens.shape[0] == B, f"ids have {B} rows but the cache has {tokens.shape[0]}"
        self.calls.append(dict(rows=B, T=T, last_only=last_only, pad=cache.pad.tolist(), ids=ids.tolist()))
        tokens[:, cache.pos:cache.pos + T] = ids.float()
        out = torch.zeros(B, T, V)
        for b in range(B):
            for t in range(T):
                out[b, t] = next_logits(tokens[b, int(cache.pad[b]):cache.pos + t + 1].long().tolist())
        cache.pos += T
        return out[:, -1:] if last_only else out


class FakeSampler:
    def __init__(self):
        self.calls = []

    def __call__(self, logits, temperature=0.0, top_k=0, top_p=1.0, generator=None, u=None):
        self.calls.append(dict(rows=logits.shape[0], temperature=temperature, top_k=top_k, top_p=top_p,
                               u=None if u is None else torch.as_tensor(u).tolist()))
        return draw(logits, u)


def run(prompts, n=1, steps=8, *, temperature=0.6, stop_ids=(), seed=0, top_k=0, top_p=1.0):
    """_generate_chunk with the fake model and sampler; keys from stream_keys(prompts, seed, n), or None."""
    lm, sampler = FakeLM(), FakeSampler()
    keys = None if seed is None else model.stream_keys(prompts, seed, n)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(model, "sample_next", sampler)
        out = model._generate_chunk(lm, prompts, max_new_tokens=steps, num_samples=n, temperature=temperature,
                                    top_k=top_k, top_p=top_p, stop_ids=stop_ids, keys=keys)
    return out, lm, sampler


def alone(prompt, steps, stop_ids=(), temperature=0.6, key=None):
    """One sample as the contract defines it: the fake model and sampler on this row alone, step t drawing with
    number t of the row's own stream `key` (keys[r:r + 1]), until a stop id (left out) or `steps` tokens."""
    history, sample = list(prompt), []
    for t in range(steps):
        u = model.stream_uniforms(key, t) if key is not None and temperature > 0 else None
        tok = int(draw(next_logits(history)[None], u)[0])
        if tok in stop_ids:
            break
        sample.append(tok)
        history.append(tok)
    return sample


def expected(prompts, n, steps, stop_ids=(), temperature=0.6, seed=0):
    keys = None if seed is None else model.stream_keys(prompts, seed, n)
    return [[alone(p, steps, stop_ids, temperature, None if keys is None else keys[b * n + j:b * n + j + 1])
             for j in range(n)] for b, p in enumerate(prompts)]


PROMPTS = [[5, 1, 4, 9, 2], [8, 3], [6, 0, 11], [10]]   # of lengths 5, 2, 3, 1: left-padded to 5


def test_each_sample_is_what_its_row_draws_alone_from_its_own_stream():
    # 4 prompts x 3 samples, stop ids 3 and 7: samples end at different steps (some at the first), so rows
    # leave the batch while the others go on; sample j of prompt b draws with stream keys[b * n + j]
    want = expected(PROMPTS, 3, 10, (3, 7), seed=1)
    lengths = sorted(len(s) for g in want for s in g)
    assert lengths[0] < 3 and lengths[-1] == 10, lengths   # (the scenario itself: early stops and full rows)
    got, _, _ = run(PROMPTS, 3, 10, stop_ids=(3, 7), seed=1)
    for b in range(len(PROMPTS)):
        for j in range(3):
            assert got[b][j] == want[b][j], (f"prompt {b}, sample {j}: expected {want[b][j]} (its own history and "
                                             f"stream, cut before stop ids 3 and 7), got {got[b][j]}")


def test_returns_per_prompt_its_n_samples_as_lists_of_ints():
    got, _, _ = run(PROMPTS, 2, 4)
    assert isinstance(got, list) and len(got) == len(PROMPTS), f"expected a list of {len(PROMPTS)} prompts, got {got!r}"
    for b, group in enumerate(got):
        assert isinstance(group, list) and len(group) == 2, f"prompt {b}: expected a list of 2 samples, got {group!r}"
        for s in group:
            assert isinstance(s, list) and all(type(t) is int for t in s), \
                f"prompt {b}: each sample must be a list of Python ints, got {s!r}"
    assert got == expected(PROMPTS, 2, 4), f"expected {expected(PROMPTS, 2, 4)}, got {got}"


def test_prefill_once_left_padded_then_one_token_per_step():
    got, lm, _ = run(PROMPTS, 3, 6)
    first, rest = lm.calls[0], lm.calls[1:]
    assert (first["rows"], first["T"], first["last_only"]) == (4, 5, True), \
        f"the first call must prefill the 4 prompts at once, padded to 5, last_only=True; got rows={first['rows']}, " \
        f"T={first['T']}, last_only={first['last_only']}"
    assert first["pad"] == [0, 3, 2, 4], f"the cache's pad must be [0, 3, 2, 4] (left padding), got {first['pad']}"
    for b, p in enumerate(PROMPTS):
        assert first["ids"][b][5 - len(p):] == p, f"prompt {b} must end the prefill row: {first['ids'][b]}"
    assert all(c["T"] == 1 and c["rows"] <= 12 for c in rest), \
        f"after the prefill, one token per call for at most 4 x 3 rows; got {[(c['rows'], c['T']) for c in rest]}"
    assert len(rest) <= 6, f"6 new tokens need at most 6 one-token calls after the prefill, got {len(rest)}"
    assert all(len(s) == 6 for g in got for s in g), "without stop ids every sample has max_new_tokens tokens"


def test_decoding_ends_once_every_row_has_stopped():
    stops = tuple(range(6))                            # half the vocabulary: every row stops within a few steps
    want = expected(PROMPTS, 3, 30, stops)
    last = max(len(s) for g in want for s in g)        # the step at which the last row draws its stop id
    assert last < 10, last
    got, lm, _ = run(PROMPTS, 3, 30, stop_ids=stops)
    assert got == want, f"expected {want}, got {got}"
    decode = lm.calls[1:]
    assert len(decode) <= last + 1, f"every row has stopped by step {last}: at most {last + 1} one-token calls " \
                                   f"after the prefill, got {len(decode)}"
    assert decode and decode[-1]["rows"] < 12, \
        f"finished rows must leave the batch: the last call still decodes {decode[-1]['rows']} of 12 rows " \
        f"(rows per call: {[c['rows'] for c in decode]})"


def test_stop_ids_end_a_sample_and_are_left_out():
    first = [alone(p, 1)[0] for p in PROMPTS[:2]]          # the first token each of 2 prompts draws
    got, _, _ = run(PROMPTS[:2], 1, 5, temperature=0.0, stop_ids=(first[0],), seed=1)
    assert got[0] == [[]], f"a sample whose first token is a stop id is empty, got {got[0]}"
    want = alone(PROMPTS[1], 5, (first[0],), 0.0)
    assert got[1] == [want], f"prompt 1: expected {want}, got {got[1]}"
    for stops in ((3, 7), (7, 3, 3), [9, 3, 7]):
        got, _, _ = run(PROMPTS, 2, 10, stop_ids=stops)
        want = expected(PROMPTS, 2, 10, set(stops))
        assert got == want, f"stop ids {stops}: every sample ends before its first stop id, any of them; " \
                            f"expected {want}, got {got}"


def test_max_new_tokens_is_respected():
    got, _, _ = run(PROMPTS, 2, 0)
    assert got == [[[], []]] * 4, f"max_new_tokens=0: every sample is empty, got {got}"
    for steps in (1, 2, 7):
        got, _, _ = run(PROMPTS, 2, steps)
        assert got == expected(PROMPTS, 2, steps), f"max_new_tokens={steps}: expected {expected(PROMPTS, 2, steps)}, " \
                                                   f"got {got}"


def test_greedy_draws_without_uniforms():
    got, _, sampler = run(PROMPTS, 2, 6, temperature=0.0, stop_ids=(3,), seed=5)
    assert sampler.calls and all(c["u"] is None for c in sampler.calls), \
        "temperature 0 (greedy) must call sample_next with u=None, even when keys are given"
    assert all(c["temperature"] == 0.0 for c in sampler.calls), "the temperature must reach sample_next"
    want = expected(PROMPTS, 2, 6, (3,), temperature=0.0)
    assert got == want, f"greedy: expected {want}, got {got}"


def test_without_keys_sample_next_draws_its_own_numbers():
    _, _, sampler = run(PROMPTS, 2, 4, temperature=0.6, seed=None)
    assert sampler.calls and all(c["u"] is None for c in sampler.calls), \
        "keys=None: sample_next must be called with u=None (it draws from torch's generator)"


def test_sampling_settings_reach_sample_next():
    _, _, sampler = run(PROMPTS, 2, 4, temperature=0.7, top_k=5, top_p=0.9)
    got = {(c["temperature"], c["top_k"], c["top_p"]) for c in sampler.calls}
    assert got == {(0.7, 5, 0.9)}, f"every call of sample_next must get temperature 0.7, top_k 5, top_p 0.9; got {got}"


def test_the_uniforms_of_each_row_are_its_own_stream():
    # whatever rows have left the batch, the u given for a row at step t is number t of that row's own stream
    # keys[r:r + 1] (row r = b * n + j: sample j of prompt b); every row still going at step t gets one
    n, steps = 3, 10
    keys = model.stream_keys(PROMPTS, 1, n)
    want = [s for g in expected(PROMPTS, n, steps, (3, 7), seed=1) for s in g]
    _, _, sampler = run(PROMPTS, n, steps, stop_ids=(3, 7), seed=1)
    for t, call in enumerate(sampler.calls):
        u = call["u"]
        assert u is not None and len(u) == call["rows"], f"step {t}: expected one u per row drawn, got {u}"
        streams = {r: model.stream_uniforms(keys[r:r + 1], t).item() for r in range(len(want))}
        going = [r for r in range(len(want)) if t <= len(want[r])]     # rows that draw a token at step t
        assert set(u) <= set(streams.values()), f"step {t}: each u must be number {t} of a row's stream; got {u}"
        missing = [r for r in going if streams[r] not in u]
        assert not missing, f"step {t}: rows {missing} are still going but did not get number {t} of their " \
                            f"streams {[streams[r] for r in missing]}; u = {u}"


def test_generate_gives_each_prompt_the_same_samples_in_any_chunking():
    lm = FakeLM()
    want = [expected([p], 2, 6, (3,), seed=4)[0] for p in PROMPTS]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(model, "sample_next", FakeSampler())
        for bs in (None, 1, 3):
            got = model.generate(lm, PROMPTS, 6, temperature=0.6, stop_ids=(3,), seed=4, num_samples=2, batch_size=bs)
            assert got == want, f"batch_size={bs}: each prompt's samples must be its own: expected {want}, got {got}"
