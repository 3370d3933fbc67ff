"""Instructor tests of the attention problem (Attention.forward, KVCache.update, .positions, .mask): the code
under test against the reference's saved outputs (fixtures/attention.npz) on tiny seeded models: one layer
(Llama, a head_dim that makes H * D != C, Qwen2's q/k/v biases), the whole model's logits (GQA and MQA), left-padded
decoding through the cache, and the cache's own outputs. These catch what the public tests only constrain by
invariants: the sign of the RoPE rotation, the softmax scale 1/sqrt(D)."""
import instructor_util  # noqa: I001  (first: it puts the code under test on sys.path)

import numpy as np
import torch

import model

# vocab 64, hidden 32, 2 layers, 4 query heads over 2 key/value heads
CFG = dict(model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, rope_theta=100.0)


def net(seed=0, **overrides):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        m = model.Transformer(model.Config.from_dict({**CFG, **overrides})).init_weights(0.3).eval()
        for name, p in m.named_parameters():
            if name.endswith(".bias"):       # Qwen2's q/k/v biases: non-zero, so that they count
                torch.nn.init.normal_(p, std=0.3)
    return m


def rope(cfg, positions):
    angles = positions[..., None].float() * model.rope_inv_freq(cfg)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def layers():
    """One layer's output on seeded inputs, rows at positions 0.. and 3..; three configurations."""
    out = {}
    for key, seed, over in (("layer", 1, {}), ("layer_d16", 2, dict(head_dim=16)),
                            ("layer_qwen2", 3, dict(model_type="qwen2"))):
        m = net(seed, **over)
        x = torch.randn(2, 6, CFG["hidden_size"], generator=torch.Generator().manual_seed(seed))
        pos = torch.stack([torch.arange(6), torch.arange(3, 9)])
        with torch.no_grad():
            out[key] = m.model.layers[0].self_attn(x, *rope(m.config, pos)).numpy()
    return out


def logits():
    """The whole model's logits without a cache: GQA (4 over 2) and MQA (4 over 1)."""
    ids = torch.randint(0, CFG["vocab_size"], (2, 7), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        return {"logits_gqa": net(4)(ids).numpy(), "logits_mqa": net(5, num_key_value_heads=1)(ids).numpy()}


def cached():
    """Through the cache: a left-padded batch (pads [3, 0, 5]), prefill then 3 one-token steps; the same rows
    unpadded, a 5-token prefill (last position) then 3 one-token steps."""
    m, pad = net(6), torch.tensor([3, 0, 5])
    g = torch.Generator().manual_seed(6)
    ids = torch.randint(0, CFG["vocab_size"], (3, 8), generator=g)
    steps = torch.randint(0, CFG["vocab_size"], (3, 3), generator=g)
    c = model.KVCache(m.config, 3, 11, pad, "cpu", torch.float32)
    with torch.no_grad():
        pre = m(ids, cache=c)
        dec = torch.cat([m(steps[:, i:i + 1], cache=c) for i in range(3)], 1)
    real = torch.arange(8)[None, :] >= pad[:, None]     # the outputs of pad queries are never used
    plain = model.KVCache(m.config, 3, 11, torch.zeros(3, dtype=torch.long), "cpu", torch.float32)
    with torch.no_grad():                                 # no padding: no mask, SDPA's own causal paths
        first = m(ids[:, :5], cache=plain, last_only=True)
        rest = torch.cat([m(ids[:, i:i + 1], cache=plain) for i in range(5, 8)], 1)
    return {"cached_prefill": (pre * real[..., None]).numpy(), "cached_steps": dec.numpy(),
            "plain_cached": torch.cat([first, rest], 1).numpy()}


def cache_outputs():
    """KVCache.update's returns, positions and masks (an empty array where mask gives None)."""
    cfg = model.Config.from_dict(CFG)
    g = torch.Generator().manual_seed(7)
    c = model.KVCache(cfg, 3, 9, torch.tensor([2, 0, 4]), "cpu", torch.float32)
    out = {"positions_0_5": c.positions(5).numpy(), "mask_0_5": c.mask(5).numpy()}
    k, v = torch.randn(3, 2, 5, 8, generator=g), torch.randn(3, 2, 5, 8, generator=g)
    rk, rv = c.update(1, k, v)
    c.pos = 5
    k, v = torch.randn(3, 2, 2, 8, generator=g), torch.randn(3, 2, 2, 8, generator=g)
    rk2, rv2 = c.update(1, k, v)
    out.update(positions_5_2=c.positions(2).numpy(), mask_5_2=c.mask(2).numpy(), mask_5_1=c.mask(1).numpy(),
               update_k=rk.numpy().copy(), update_v=rv.numpy().copy(), update2_k=rk2.numpy(), update2_v=rv2.numpy(),
               cache_k=c.k.numpy(), cache_v=c.v.numpy())
    plain = model.KVCache(cfg, 2, 9, torch.zeros(2, dtype=torch.long), "cpu", torch.float32)
    for pos, T in ((0, 4), (4, 1), (4, 3)):
        plain.pos = pos
        m = plain.mask(T)
        out[f"plain_mask_{pos}_{T}"] = np.zeros(0, dtype=bool) if m is None else m.numpy()
    return out


def make():
    return {**layers(), **logits(), **cached(), **cache_outputs()}


def compare(got, keys, atol=1e-4):
    want = instructor_util.load("attention")
    for key in keys:
        instructor_util.close(got[key], want[key], key, atol=atol)


def test_one_layer_matches_the_reference():
    compare(layers(), ("layer", "layer_d16", "layer_qwen2"))


def test_model_logits_match_the_reference():
    compare(logits(), ("logits_gqa", "logits_mqa"))


def test_left_padded_cached_decoding_matches_the_reference():
    compare(cached(), ("cached_prefill", "cached_steps", "plain_cached"))


def test_cache_update_positions_and_mask_match_the_reference():
    got, want = cache_outputs(), instructor_util.load("attention")
    for key in ("positions_0_5", "positions_5_2", "mask_0_5", "mask_5_2", "mask_5_1", "plain_mask_0_4",
                "plain_mask_4_1", "plain_mask_4_3"):
        assert got[key].shape == want[key].shape and (got[key] == want[key]).all(), \
            f"{key}: expected {want[key].astype(int).tolist() if want[key].size else None}, " \
            f"got {got[key].astype(int).tolist() if got[key].size else None}"
    for key in ("update_k", "update_v", "update2_k", "update2_v", "cache_k", "cache_v"):
        instructor_util.close(got[key], want[key], key, atol=0, rtol=0)
