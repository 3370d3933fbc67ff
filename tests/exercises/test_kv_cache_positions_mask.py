"""Contract of model.KVCache.positions and KVCache.mask for a left-padded batch: each row gets the
positions it would have alone, never sees a pad key, a pad query sees itself; and cached, left-padded
decoding gives the logits of each row's own full forward pass. (The last two tests run the tiny model
through the cache, so they also need exercise kv_cache_update.)"""
import torch

import model
from helpers import TINY, tiny_model


def cache(pad, max_len=16):
    return model.KVCache(model.Config.from_dict(TINY), len(pad), max_len, torch.tensor(pad), "cpu", torch.float32)


def test_positions_start_at_each_rows_first_real_token():
    c = cache([2, 0, 1])
    got = c.positions(4)
    assert got.tolist() == [[0, 0, 0, 1], [0, 1, 2, 3], [0, 0, 1, 2]], \
        f"pad=[2, 0, 1], prefill of 4: positions are slot - pad (pads at 0); got {got.tolist()}"
    c.pos = 4
    assert c.positions(1).tolist() == [[2], [4], [3]], f"pos 4, one new token: got {c.positions(1).tolist()}"
    c.pos = 5
    assert c.positions(2).tolist() == [[3, 4], [5, 6], [4, 5]], f"pos 5, two new tokens: got {c.positions(2).tolist()}"


def test_mask_is_causal_and_hides_pad_keys():
    c = cache([1, 0])
    m = c.mask(3)
    assert m is not None and m.dtype == torch.bool and tuple(m.shape) == (2, 1, 3, 3), \
        f"expected a bool mask (B, 1, T, S) = (2, 1, 3, 3), got {None if m is None else (m.dtype, tuple(m.shape))}"
    assert m[0, 0].int().tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]], \
        f"row with one pad: real queries never see slot 0, the pad query sees itself; got {m[0, 0].int().tolist()}"
    assert m[1, 0].int().tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]], \
        f"row without padding: the causal lower triangle; got {m[1, 0].int().tolist()}"
    c.pos = 3
    m = c.mask(1)
    assert m is not None and m[:, 0].int().tolist() == [[[0, 1, 1, 1]], [[1, 1, 1, 1]]], \
        f"a new token at slot 3 sees every cached real key and itself, no pad; got {None if m is None else m[:, 0].int().tolist()}"


def test_every_query_sees_at_least_one_key():
    c = cache([3, 0, 5])
    m = c.mask(6)
    assert m.any(-1).all(), "an all-masked query row makes SDPA return NaN"
    for b, pad in enumerate([3, 0, 5]):
        for q in range(pad):
            assert m[b, 0, q].nonzero().flatten().tolist() == [q], f"row {b}: pad query {q} must see only itself"


def test_mask_none_only_where_sdpa_is_exact():
    c = cache([0, 0])
    assert c.mask(5) is None, "no padding, prefill from slot 0: None (forward uses is_causal)"
    c.pos = 5
    assert c.mask(1) is None, "no padding, one new token: None (it sees every cached key)"
    m = c.mask(3)
    assert m is not None, "no padding but 3 new tokens after 5 cached ones: is_causal would align them wrongly"
    assert m[0, 0].int().tolist() == [[1] * 6 + [0, 0], [1] * 7 + [0], [1] * 8], \
        f"3 new queries at slots 5..7 over 8 keys; got {m[0, 0].int().tolist()}"
    c = cache([1, 0])
    c.pos = 4
    assert c.mask(1) is not None, "with padding a one-token step still needs a mask (the pad keys)"


def _prompts():
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, TINY["vocab_size"], (n,), generator=g).tolist() for n in (9, 4, 1, 6)]


def test_left_padded_cached_decoding_equals_full_forward():
    net = tiny_model(seed=1)
    prompts = _prompts()
    T = max(map(len, prompts))
    ids = torch.zeros(len(prompts), T, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, T - len(p):] = torch.tensor(p)                      # left padding (pad id 0)
    steps = 4
    cont = torch.randint(0, TINY["vocab_size"], (len(prompts), steps), generator=torch.Generator().manual_seed(1))
    c = model.KVCache(net.config, len(prompts), T + steps, torch.tensor([T - len(p) for p in prompts]), "cpu",
                      torch.float32)
    with torch.no_grad():
        pre = net(ids, cache=c)
        dec = torch.stack([net(cont[:, i:i + 1], cache=c)[:, 0] for i in range(steps)], 1)
        assert torch.isfinite(pre).all() and torch.isfinite(dec).all(), "NaN/inf logits through the cache"
        for b, p in enumerate(prompts):
            full = net(torch.tensor([p + cont[b].tolist()]))[0]     # the row alone, no padding, no cache
            assert torch.allclose(pre[b, T - len(p):], full[:len(p)], atol=1e-4), \
                f"prompt {b} (left pad {T - len(p)}): prefill logits differ from its own unpadded forward"
            assert torch.allclose(dec[b], full[len(p):], atol=1e-4), \
                f"prompt {b} (left pad {T - len(p)}): decoding-step logits differ from its own unpadded forward"


def test_chunked_prefill_without_padding_equals_full_forward():
    net = tiny_model(seed=2)
    ids = torch.randint(0, TINY["vocab_size"], (2, 10), generator=torch.Generator().manual_seed(2))
    c = model.KVCache(net.config, 2, 10, torch.zeros(2, dtype=torch.long), "cpu", torch.float32)
    with torch.no_grad():
        parts = [net(ids[:, a:b], cache=c) for a, b in ((0, 4), (4, 7), (7, 8), (8, 10))]
        full = net(ids)
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-4), \
        "prefilling in chunks (4, 3, 1, 2 tokens) must give the logits of one full forward"
