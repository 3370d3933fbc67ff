"""Contract of the attention problem (model.py): one attention layer, `Attention.forward` (q/k/v projections,
RoPE on queries and keys, grouped-query attention, causal or under the cache's mask, o_proj), and the KV cache it
decodes with: `KVCache.update` writes the new keys/values of one layer at slots pos .. pos+T-1 and returns that
layer's slots 0 .. pos+T-1, leaving `pos` and the other layers alone; `KVCache.positions` and `KVCache.mask` give
a left-padded row the positions it would have alone, never let it see a pad key, and let a pad query see itself.
Through the cache, cached and left-padded decoding gives the logits of each row's own full forward pass."""
import torch

import model
from helpers import TINY, tiny_model


# ----------------------------------------------------------------------------- KVCache.update
L, B, K, D, S = TINY["num_hidden_layers"], 2, TINY["num_key_value_heads"], 8, 10


def new_cache():
    cfg = model.Config.from_dict(TINY)
    return model.KVCache(cfg, B, S, torch.tensor([1, 0]), "cpu", torch.float32)


def kv(T, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, K, T, D, generator=g), torch.randn(B, K, T, D, generator=g)


def test_prefill_writes_slots_0_to_T_and_returns_them():
    cache = new_cache()
    k, v = kv(4, 0)
    rk, rv = cache.update(0, k, v)
    assert tuple(rk.shape) == (B, K, 4, D) and tuple(rv.shape) == (B, K, 4, D), \
        f"after a 4-token prefill update must return (B, K, 4, D), got {tuple(rk.shape)}"
    assert torch.equal(rk, k) and torch.equal(rv, v), "the returned keys/values must be the ones just written"
    assert torch.equal(cache.k[0, :, :, :4], k) and torch.equal(cache.v[0, :, :, :4], v), \
        "keys/values must be stored in layer 0, slots 0..3"
    assert not cache.k[0, :, :, 4:].any() and not cache.k[1].any(), "slots after pos+T and other layers stay untouched"


def test_update_does_not_advance_pos():
    cache = new_cache()
    k, v = kv(3, 1)
    cache.update(0, k, v)
    assert cache.pos == 0, "update must not move pos: every layer of one forward writes the same slots"
    k1, v1 = kv(3, 2)
    rk, _ = cache.update(1, k1, v1)
    assert torch.equal(cache.k[1, :, :, :3], k1) and torch.equal(rk, k1), "layer 1 writes slots 0..2 as well"
    assert torch.equal(cache.k[0, :, :, :3], k), "writing layer 1 must leave layer 0 as it was"


def test_decoding_step_appends_after_the_cached_slots():
    cache = new_cache()
    k0, v0 = kv(4, 3)
    for layer in range(L):
        cache.update(layer, k0, v0)
    cache.pos = 4                   # what Transformer.forward does after its last layer
    k1, v1 = kv(1, 4)
    rk, rv = cache.update(1, k1, v1)
    assert tuple(rk.shape) == (B, K, 5, D), f"at pos 4, one new token: expected (B, K, 5, D), got {tuple(rk.shape)}"
    assert torch.equal(rk, torch.cat([k0, k1], 2)) and torch.equal(rv, torch.cat([v0, v1], 2)), \
        "the result must be the cached slots 0..3 followed by the new slot 4"
    assert torch.equal(cache.k[1, :, :, 4], k1[:, :, 0]), "the new key must be stored at slot pos = 4"
    assert torch.equal(cache.k[0, :, :, :4], k0) and not cache.k[0, :, :, 4].any(), \
        "layer 0 is not touched by layer 1's update"
    assert not cache.k[:, :, :, 5:].any(), "nothing may be written beyond slot pos + T - 1"


# ----------------------------------------------------------------------------- KVCache.positions, KVCache.mask
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
        f"a new token at slot 3 sees every cached real key and itself, no pad; got " \
        f"{None if m is None else m[:, 0].int().tolist()}"


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


# ----------------------------------------------------------------------------- one layer: Attention.forward

def attention_layer(seed=0, **overrides):
    """A seeded Attention layer of the tiny config (weights N(0, 0.3): positions change the scores a lot)."""
    cfg = model.Config.from_dict({**TINY, **overrides})
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        att = model.Attention(cfg)
        for w in att.parameters():
            torch.nn.init.normal_(w, std=0.3)
    return att.eval()


def rope(positions, **overrides):
    """cos, sin (B, T, D) at `positions` (B, T), as Transformer.forward computes them."""
    cfg = model.Config.from_dict({**TINY, **overrides})
    angles = positions[..., None].float() * model.rope_inv_freq(cfg)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def inputs(B, T, seed=0):
    return torch.randn(B, T, TINY["hidden_size"], generator=torch.Generator().manual_seed(seed))


def run(att, x, positions):
    with torch.no_grad():
        return att(x, *rope(positions))


def test_attention_maps_B_T_C_to_B_T_C():
    C = TINY["hidden_size"]
    for B, T in ((2, 5), (3, 1)):
        y = run(attention_layer(), inputs(B, T), torch.arange(T).expand(B, T))
        assert tuple(y.shape) == (B, T, C) and torch.isfinite(y).all(), \
            f"x of shape ({B}, {T}, {C}) must give finite outputs of the same shape, got {tuple(y.shape)}"
    # H * D need not be C: 4 heads of 16 dims = 64 features, projected back to C = 32 by o_proj
    att, x = attention_layer(head_dim=16), inputs(2, 5)
    with torch.no_grad():
        y = att(x, *rope(torch.arange(5).expand(2, 5), head_dim=16))
    assert tuple(y.shape) == (2, 5, C), f"head_dim=16 (H * D = 64, C = 32): expected (2, 5, {C}), got {tuple(y.shape)}"


def test_a_token_never_sees_later_tokens():
    net = tiny_model(seed=4)
    ids = torch.randint(0, TINY["vocab_size"], (2, 8), generator=torch.Generator().manual_seed(4))
    later = ids.clone()
    later[:, 5] = (later[:, 5] + 1) % TINY["vocab_size"]
    with torch.no_grad():
        a, b = net(ids), net(later)
    assert torch.allclose(a[:, :5], b[:, :5], atol=1e-5), \
        "changing token 5 changed the logits at positions 0..4: attention without a cache must be causal"
    assert not torch.allclose(a[:, 5:], b[:, 5:], atol=1e-3), "changing token 5 must change the logits from 5 on"


def test_shifting_every_position_by_the_same_offset_changes_nothing():
    # RoPE rotates queries and keys by their positions: a score depends on the distance between them only
    att, x = attention_layer(seed=1), inputs(2, 6, seed=1)
    pos = torch.arange(6).expand(2, 6)
    y0 = run(att, x, pos)
    for offset in (1, 7, 50):
        y = run(att, x, pos + offset)
        err = (y - y0).abs().max().item()
        assert err < 1e-4, f"positions shifted by {offset} (queries and keys alike) must give the same output, " \
                           f"max difference {err:.3g}"


def test_the_output_depends_on_relative_positions():
    att, x = attention_layer(seed=2), inputs(2, 6, seed=2)
    y0 = run(att, x, torch.arange(6).expand(2, 6))
    y = run(att, x, (3 * torch.arange(6)).expand(2, 6))   # the same tokens, three times as far apart
    err = (y - y0)[:, 1:].abs().max().item()               # (token 0 sees only itself either way)
    assert err > 1e-2, f"positions 0, 3, 6, ... instead of 0, 1, 2, ...: the output must change (RoPE on queries " \
                       f"and keys), max difference {err:.3g}"


def test_every_projection_is_used():
    att, x = attention_layer(seed=3), inputs(2, 5, seed=3)
    pos = torch.arange(5).expand(2, 5)
    y0 = run(att, x, pos)
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        w = getattr(att, name).weight
        saved = w.detach().clone()
        with torch.no_grad():
            w.mul_(-0.5).add_(0.2)
        y = run(att, x, pos)
        with torch.no_grad():
            w.copy_(saved)
        err = (y - y0)[:, 1:].abs().max().item()
        assert err > 1e-2, f"changing {name}.weight must change the output, max difference {err:.3g}"


def test_grouped_query_attention_shares_each_kv_head_with_its_group():
    # 4 query heads over 2 key/value heads: query heads 0, 1 use kv head 0 and heads 2, 3 use kv head 1, so the
    # layer equals a 4-kv-head layer whose kv heads are 0, 0, 1, 1 of it
    H, K, D, C = TINY["num_attention_heads"], TINY["num_key_value_heads"], 8, TINY["hidden_size"]
    gqa, mha = attention_layer(seed=5), attention_layer(seed=6, num_key_value_heads=H)
    with torch.no_grad():
        for name in ("q_proj", "o_proj"):
            getattr(mha, name).weight.copy_(getattr(gqa, name).weight)
        for name in ("k_proj", "v_proj"):
            w = getattr(gqa, name).weight.view(K, D, C)
            getattr(mha, name).weight.copy_(w.repeat_interleave(H // K, dim=0).reshape(H * D, C))
    x, pos = inputs(2, 6, seed=5), torch.arange(6).expand(2, 6)
    err = (run(gqa, x, pos) - run(mha, x, pos)).abs().max().item()
    assert err < 1e-5, f"GQA (H={H}, K={K}) must equal attention with each kv head repeated for its {H // K} " \
                       f"consecutive query heads, max difference {err:.3g}"


# ----------------------------------------------------------------------------- the whole model through the cache

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


def test_one_token_steps_through_the_cache_equal_the_full_forward():
    net = tiny_model(seed=3)
    ids = torch.randint(0, TINY["vocab_size"], (3, 9), generator=torch.Generator().manual_seed(3))
    c = model.KVCache(net.config, 3, 9, torch.zeros(3, dtype=torch.long), "cpu", torch.float32)
    with torch.no_grad():
        last = net(ids[:, :4], cache=c, last_only=True)
        steps = torch.cat([net(ids[:, t:t + 1], cache=c) for t in range(4, 9)], 1)
        full = net(ids)
    assert tuple(last.shape) == (3, 1, TINY["vocab_size"]), f"last_only: expected (3, 1, V), got {tuple(last.shape)}"
    assert torch.allclose(last[:, 0], full[:, 3], atol=1e-4), \
        "a 4-token prefill through the cache must give the full forward's logits at position 3"
    assert torch.allclose(steps, full[:, 4:], atol=1e-4), \
        "one-token steps after the prefill (no padding) must give the full forward's logits at positions 4..8"
