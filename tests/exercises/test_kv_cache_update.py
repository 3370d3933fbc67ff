"""Contract of model.KVCache.update: write the new keys/values of one layer at slots pos .. pos+T-1,
return that layer's slots 0 .. pos+T-1, leave `pos` and the other layers alone."""
import torch

import model
from helpers import TINY

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
