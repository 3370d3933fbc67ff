"""The decoder-only transformer of the Llama and Qwen2 families, and how it generates. Config: config.json's
keys, checked (what we cannot honour is refused). Layers: rotate-half RoPE (HF layout, Llama-3 `rope_scaling`),
RMSNorm, grouped-query attention through SDPA (q/k/v biases for Qwen2), SwiGLU. Transformer: module names are the
HF state-dict keys, so loading is a strict, shape-checked copy; safetensors only (no pickle), atomic saves.
Generation: KVCache, sample_next, generate (batched DIFFERENT prompts, left padding; prefill once, expand for n
samples), generate_answers (every decoding of upft.py and eval.py), Progress. Left out: sliding windows, MoE,
quantisation, torch.compile, flash kernels. Mirrors transformers' modeling_llama.py / modeling_qwen2.py (parity
to 1e-4 in fp32, tests/). Shapes: B rows, T new tokens, S cached + new key slots, H query heads, K key/value
heads, D head_dim, C hidden size, V vocab.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from data import TOKENIZER_FILES, UpftError, _first_line, _read_json, atomic_dir, chat_prompt, require, resolve

SUPPORTED = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
ROPE_TYPES = ("default", "linear", "llama3")
# The smallest sampling temperature the command lines take (0 = greedy): sampling divides the logits by it in
# fp32, and below ~1e-37 the quotient overflows to inf (a NaN softmax). At 1e-6 only logits beyond 3e32 would.
MIN_TEMPERATURE = 1e-6


# ----------------------------------------------------------------------------- config
@dataclass
class Config:
    model_type: str = "llama"
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None = multi-head attention (K = H)
    head_dim: int | None = None             # None = hidden_size // num_attention_heads
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None        # e.g. Llama-3.1: {"rope_type": "llama3", "factor": 8.0, ...}
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False            # llama: bias on q/k/v/o; qwen2 always has q/k/v bias (not o)
    hidden_act: str = "silu"
    bos_token_id: int | list | None = None
    eos_token_id: int | list | None = None
    torch_dtype: str | None = None
    extra: dict = field(default_factory=dict)  # other keys, kept so a saved config round-trips

    def __post_init__(self):
        require(self.model_type in SUPPORTED, f"unsupported model_type {self.model_type!r} (supported: "
                f"{', '.join(SUPPORTED)})")
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise UpftError(f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                            f"num_key_value_heads={self.num_key_value_heads}")
        require(self.hidden_act == "silu", f"unsupported hidden_act {self.hidden_act!r} (only silu)")
        if self.rope_type not in ROPE_TYPES:
            raise UpftError(f"unsupported rope_scaling type {self.rope_type!r} (supported: {', '.join(ROPE_TYPES)})")

    @property
    def rope_type(self) -> str:
        rs = self.rope_scaling or {}
        return rs.get("rope_type", rs.get("type", "default"))

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        d = dict(d)
        # transformers >= 5 writes rope settings as `rope_parameters`; checkpoints on the hub use the
        # older `rope_theta` + `rope_scaling`. Accept both, keep the older form (every loader reads it).
        if rp := d.pop("rope_parameters", None):
            rp = dict(rp)
            d.setdefault("rope_theta", rp.pop("rope_theta", 10000.0))
            if rp.get("rope_type", "default") != "default":
                d.setdefault("rope_scaling", rp)
        # refuse what we would otherwise silently get wrong
        require(not d.get("use_sliding_window"), "sliding-window attention (use_sliding_window=true) is not supported")
        require(all(t == "full_attention" for t in d.get("layer_types") or []),
                f"unsupported layer_types {sorted(set(d.get('layer_types') or []))} (only full_attention)")
        require(not d.get("mlp_bias"), "mlp_bias=true is not supported")
        if d.get("model_type") == "qwen2":
            d.pop("attention_bias", None)  # Qwen2 has q/k/v bias by definition
        known = {f.name for f in fields(cls)} - {"extra"}
        extra = {k: v for k, v in d.items() if k not in known and k != "architectures"}
        return cls(**{k: v for k, v in d.items() if k in known}, extra=extra)

    @classmethod
    def from_json(cls, path) -> "Config":
        path = Path(path)
        require(path.is_file(), f"{path}: config.json not found")
        d = _read_json(path)  # UpftError if not a JSON object
        try:
            return cls.from_dict(d)
        except TypeError as e:
            raise UpftError(f"{path}: bad config ({e})") from None
        except UpftError as e:
            raise UpftError(f"{path}: {e}") from None

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        if self.model_type == "qwen2":
            d.pop("attention_bias")
        d = {**self.extra, **d, "architectures": [SUPPORTED[self.model_type]]}
        return dict(sorted(d.items()))


# ----------------------------------------------------------------------------- layers
def rope_inv_freq(cfg: Config) -> torch.Tensor:
    """Inverse frequencies (D/2,), fp32, with the checkpoint's rope_scaling applied."""
    D = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, D, 2, dtype=torch.float32) / D))
    rs = cfg.rope_scaling or {}
    if cfg.rope_type == "linear":
        inv_freq = inv_freq / rs["factor"]
    elif cfg.rope_type == "llama3":
        # Llama 3.1: keep high frequencies, divide low ones by `factor`, interpolate in between
        # (Meta's apply_scaling; same as transformers' _compute_llama3_parameters).
        factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old_len = rs["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        smooth = ((old_len / wavelen - lo) / (hi - lo)).clamp(0, 1)
        scaled = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        inv_freq = torch.where(wavelen < old_len / hi, inv_freq,
                               torch.where(wavelen > old_len / lo, inv_freq / factor, scaled))
    return inv_freq


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):  # normalise in fp32, cast back, then scale (HF's order, which matters in bf16)
        xf = x.float()
        return self.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.H, self.K, self.D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        qkv_bias = cfg.attention_bias or cfg.model_type == "qwen2"
        self.q_proj = nn.Linear(cfg.hidden_size, self.H * self.D, bias=qkv_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, self.K * self.D, bias=qkv_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, self.K * self.D, bias=qkv_bias)
        self.o_proj = nn.Linear(self.H * self.D, cfg.hidden_size, bias=cfg.attention_bias)

    def forward(self, x, cos, sin, cache=None, layer=0, mask=None):
        """x (B, T, C) -> (B, T, C): causal grouped-query attention of the T new tokens, RoPE (cos, sin: (B, T, D))
        on queries and keys; with a cache, over every cached key too (`layer`'s slots), under `mask` (B, 1, T, S)."""
        # >>> exercise: attention
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.H, self.D).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, self.K, self.D).transpose(1, 2)  # (B, K, T, D)
        v = self.v_proj(x).view(B, T, self.K, self.D).transpose(1, 2)  # (B, K, T, D)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)                    # (B, 1, T, D)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if cache is not None:
            k, v = cache.update(layer, k, v)                              # (B, K, S, D)
        # GQA: SDPA broadcasts the K key/value heads over the H query heads itself
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and T > 1,
                                           enable_gqa=self.H != self.K)  # (B, H, T, D)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.H * self.D))
        # <<< exercise: attention


class MLP(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # SwiGLU


class DecoderLayer(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, cache=None, layer=0, mask=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, layer, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


# ----------------------------------------------------------------------------- model
class Transformer(nn.Module):
    """Llama / Qwen2 causal LM. `model.` and `lm_head.` prefixes reproduce HF's state-dict keys."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.config = cfg
        self.model = nn.ModuleDict(dict(embed_tokens=nn.Embedding(cfg.vocab_size, cfg.hidden_size),
                                        layers=nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers)),
                                        norm=RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)))
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)
        self.gradient_checkpointing = False
        self.source_dir = None  # where from_pretrained read it (tokenizer files are copied from there)

    def forward(self, input_ids, cache=None, last_only=False, hidden=False):
        """input_ids (B, T) -> fp32 logits (B, T, V), or (B, 1, V) with last_only. No cache: causal attention from
        position 0 (training; right padding is harmless, pads come last); a cache gives positions and key mask.
        hidden (training): the last layer's output h (B, T, C) instead, for `head` on the supervised rows only."""
        B, T = input_ids.shape
        if cache is None:
            pos, mask = torch.arange(T, device=input_ids.device).expand(B, T), None
        else:
            pos, mask = cache.positions(T), cache.mask(T)
        # RoPE angles at each row's own positions, as HF computes them (fp32, then cast)
        freqs = pos[..., None].float() * self.inv_freq                     # (B, T, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)                              # (B, T, D)
        x = self.model.embed_tokens(input_ids)                               # (B, T, C)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        for i, layer in enumerate(self.model.layers):
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, use_reentrant=False)
            else:
                x = layer(x, cos, sin, cache, i, mask)
        if cache is not None:
            cache.pos += T  # advance once, after the last layer wrote its keys
        if hidden:
            return x
        return self.head(x[:, -1:] if last_only else x).float()

    def head(self, h):
        """Logits of last-layer outputs h (..., C) -> (..., V): the final norm, then lm_head."""
        return self.lm_head(self.model.norm(h))

    def init_weights(self, std=0.02):
        """HF-style init for training from scratch: N(0, std) weights, zero biases, unit norms."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        return self

    @property
    def device(self):
        return self.lm_head.weight.device

    @classmethod
    def from_pretrained(cls, path_or_id, device="cpu", dtype=torch.float32) -> "Transformer":
        """Load config.json + model.safetensors (or a sharded index) from a directory or hub id."""
        path = resolve(path_or_id)
        cfg = Config.from_json(path / "config.json")
        state = load_safetensors(path, device, dtype)
        check_tensors(path, cfg, {k: v.shape for k, v in state.items()})
        if cfg.tie_word_embeddings:
            state.pop("lm_head.weight", None)  # some tied checkpoints store a copy; the tie wins
        # old checkpoints store the RoPE buffer; we recompute it
        state = {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}
        model = cls.from_state_dict(cfg, state, device)
        cfg.torch_dtype = str(dtype).removeprefix("torch.")
        model.source_dir = path
        return model

    @classmethod
    def from_state_dict(cls, cfg: Config, state: dict, device="cpu") -> "Transformer":
        """A model around `state`'s tensors (used as they are, no copy); a tied head is re-tied."""
        with torch.device("meta"):
            model = cls(cfg)  # no memory: parameters are filled by assign=True below
        model.load_state_dict(state, strict=not cfg.tie_word_embeddings, assign=True)
        if cfg.tie_word_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight
        model.inv_freq = rope_inv_freq(cfg).to(device)
        return model.eval()

    def save_pretrained(self, out_dir, max_shard_bytes=5 * 2**30, tokenizer_dir=None):
        """Write HF layout atomically: config.json, model.safetensors (or shards + index), and the
        tokenizer files + generation_config.json of the source checkpoint (or `tokenizer_dir`)."""
        with atomic_dir(out_dir) as tmp:
            state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
            if self.config.tie_word_embeddings:
                state.pop("lm_head.weight")  # safetensors refuses shared tensors; loaders re-tie
            shards, size = [{}], 0
            for k, v in state.items():
                nbytes = v.numel() * v.element_size()
                if shards[-1] and size + nbytes > max_shard_bytes:
                    shards.append({})
                    size = 0
                shards[-1][k] = v
                size += nbytes
            n = len(shards)
            names = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)] if n > 1 else ["model.safetensors"]
            for name, shard in zip(names, shards):
                save_safetensors(shard, tmp / name, metadata={"format": "pt"})
            if n > 1:
                weight_map = {k: name for name, shard in zip(names, shards) for k in shard}
                total = sum(v.numel() * v.element_size() for v in state.values())
                (tmp / "model.safetensors.index.json").write_text(json.dumps(
                    {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
            cfg = {**self.config.to_dict(), "torch_dtype": str(next(self.parameters()).dtype).removeprefix("torch.")}
            (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
            src = tokenizer_dir or self.source_dir
            for name in TOKENIZER_FILES if src else ():
                if (Path(src) / name).is_file():
                    shutil.copyfile(Path(src) / name, tmp / name)


def save_safetensors(tensors: dict, path, metadata=None) -> None:
    """safetensors' save_file, whose failures (a full disk, ...) come back as an OSError naming the file."""
    try:
        save_file(tensors, path, metadata=metadata)
    except OSError:
        raise
    except Exception as e:  # safetensors reports I/O failures with its own exception type
        raise OSError(f"cannot write {path} ({_first_line(e)})") from None


def check_tensors(path, cfg: Config, found: dict) -> None:
    """Refuse a checkpoint whose tensor names or shapes (found: name -> shape) differ from config.json's."""
    with torch.device("meta"):
        expected = {k: v.shape for k, v in Transformer(cfg).state_dict().items()}
    found = {k: tuple(v) for k, v in found.items() if not k.endswith("rotary_emb.inv_freq")}
    if cfg.tie_word_embeddings:
        found.pop("lm_head.weight", None)
        expected.pop("lm_head.weight")
    for what, names in (("missing", set(expected) - set(found)), ("unexpected", set(found) - set(expected))):
        if names := sorted(names):
            raise UpftError(f"{path}: {what} tensor(s) in the safetensors files: {', '.join(names[:5])}"
                            + (f" (+{len(names) - 5} more)" if len(names) > 5 else ""))
    for k, shape in ((k, tuple(v)) for k, v in expected.items()):
        require(found[k] == shape, f"{path}: tensor {k} has shape {found[k]}, config.json implies {shape}")


def safetensors_files(path: Path) -> list:
    """The checkpoint's safetensors files: the shards an index lists, or model.safetensors."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as e:
            raise UpftError(f"{index}: malformed index file ({e})") from None
    elif (path / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        pickles = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
        hint = f" (found {pickles[0]}: pickle formats are not loaded, convert to safetensors)" if pickles else ""
        raise UpftError(f"{path}: no model.safetensors or model.safetensors.index.json{hint}")
    for name in files:
        require((path / name).is_file(), f"{path / name}: shard listed in the index is missing")
    return [path / name for name in files]


def load_safetensors(path: Path, device="cpu", dtype=torch.float32) -> dict:
    """All tensors of a checkpoint, one tensor at a time (mmap), converted to dtype on device."""
    state = {}
    for f in safetensors_files(path):
        try:
            with safe_open(f, framework="pt", device="cpu") as sf:
                state.update({k: sf.get_tensor(k).to(device=device, dtype=dtype) for k in sf.keys()})
        except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
            raise UpftError(f"{f}: cannot read safetensors file ({type(e).__name__}: {e})") from None
    return state


# ----------------------------------------------------------------------------- generation
class Progress:
    """A tqdm bar on a terminal; in a log file a line every `every` s (`train: 40/126 steps, loss 0.4810, 25 s`)."""

    def __init__(self, total, desc, unit, initial=0, enabled=True, every=30.0):
        self.tty, self.enabled, self.every = sys.stderr.isatty(), enabled, every
        self.desc, self.unit, self.total, self.n = desc, unit, total, initial
        self.t0 = self.last = time.time()
        self.bar = tqdm(total=total, desc=desc, unit=unit, initial=initial, disable=not (enabled and self.tty))

    def update(self, n=1, **postfix):
        self.n += n
        if postfix:
            self.bar.set_postfix(**postfix, refresh=False)
        self.bar.update(n)
        if self.enabled and not self.tty and (time.time() - self.last >= self.every or self.n == self.total):
            extra = "".join(f", {k} {v}" for k, v in postfix.items())
            print(f"{self.desc}: {self.n}/{self.total} {self.unit}s{extra}, {time.time() - self.t0:.0f} s",
                  file=sys.stderr, flush=True)
            self.last = time.time()

    def close(self):
        self.bar.close()


class KVCache:
    """Preallocated keys/values (L, B, K, S_max, D) for a left-padded batch. Every row writes the same slot each step,
    so one int `pos` is the write index. Row b's first `pad[b]` slots are padding: its positions are slot - pad[b],
    its queries never see pad keys, and a pad query sees only itself (SDPA never gets an all-masked row: NaN).
    forward asks for `positions(T)` and `mask(T)`, each layer calls `update` at `pos`, then forward does pos += T."""

    def __init__(self, cfg: Config, batch, max_len, pad, device, dtype):
        shape = (cfg.num_hidden_layers, batch, cfg.num_key_value_heads, max_len, cfg.head_dim)
        self.k, self.v = torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype)
        self.pad = pad.to(device)  # (B,) left-pad count per row
        self.any_pad = bool((pad > 0).any())
        self.pos = 0

    def update(self, layer, k, v):
        """Write one layer's keys and values of the T new tokens (B, K, T, D) at slots pos .. pos + T - 1;
        return that layer's keys and values so far, (B, K, pos + T, D). `pos` advances in forward, once."""
        # >>> exercise: attention
        T = k.shape[2]
        self.k[layer, :, :, self.pos:self.pos + T] = k
        self.v[layer, :, :, self.pos:self.pos + T] = v
        return self.k[layer, :, :, :self.pos + T], self.v[layer, :, :, :self.pos + T]
        # <<< exercise: attention

    def positions(self, T):
        """Position ids (B, T) of the T tokens about to be written: slot - pad[b], pad slots 0."""
        # >>> exercise: attention
        slots = torch.arange(self.pos, self.pos + T, device=self.pad.device)
        return (slots[None, :] - self.pad[:, None]).clamp(min=0)  # (B, T)
        # <<< exercise: attention

    def mask(self, T):
        """Attention mask (B, 1, T, pos + T) of the T new queries, True = may attend: causal, never a pad
        key, a pad query sees itself; None where SDPA's own paths are exact."""
        # >>> exercise: attention
        if not self.any_pad and (self.pos == 0 or T == 1):
            return None
        q = torch.arange(self.pos, self.pos + T, device=self.pad.device)[:, None]  # (T, 1)
        s = torch.arange(self.pos + T, device=self.pad.device)[None, :]            # (1, S)
        valid = (s <= q) & (s >= self.pad[:, None, None])                          # (B, T, S)
        return (valid | (s == q)).unsqueeze(1)                                     # (B, 1, T, S)
        # <<< exercise: attention

    def select(self, keep):
        """Keep only the rows where `keep` (B,) is True (finished rows leave the batch)."""
        self.k, self.v, self.pad = self.k[:, keep], self.v[:, keep], self.pad[keep]
        self.any_pad = bool((self.pad > 0).any())

    def expand(self, n):
        """Repeat each row n times (prefill once, then sample n continuations per prompt)."""
        self.k, self.v = self.k.repeat_interleave(n, dim=1), self.v.repeat_interleave(n, dim=1)
        self.pad = self.pad.repeat_interleave(n)


def sample_next(logits, temperature=0.0, top_k=0, top_p=1.0, generator=None, u=None):
    """logits (B, V) -> next ids (B,): temperature, then top-k, then top-p (keeping the most likely token),
    then one draw per row by inverse transform of `u` (B,) or of torch.rand with `generator`. UPFT samples
    at 0.6 with the checkpoint's top-p/top-k (§3.2); why the temperature is its signal: §2.1."""
    # >>> exercise: sample_next
    if temperature is None or temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k and top_k < logits.shape[-1]:
        vals, idx = logits.topk(top_k, dim=-1)
        logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, vals)
    probs = logits.softmax(-1)
    if top_p is not None and top_p < 1.0:
        p_sorted, idx = probs.sort(-1, descending=True)
        drop = p_sorted.cumsum(-1) - p_sorted >= top_p  # mass before this token already reaches p
        drop[..., 0] = False
        p_sorted = p_sorted.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, idx, p_sorted)
    if u is None:
        u = torch.rand(probs.shape[0], dtype=torch.float64, generator=generator, device=probs.device)
    cdf = probs.double().cumsum(-1)
    return torch.searchsorted(cdf, (u.to(cdf.device) * cdf[:, -1])[:, None], right=True).squeeze(-1)
    # <<< exercise: sample_next


# One random stream per sample, never one generator shared by the rows: sample j of a prompt draws its t-th token
# with the t-th number of its OWN stream, a hash of (seed, the prompt's ids, j, t), so a question's samples depend on
# (seed, question, model) only, whatever the batching, order or process count, up to float noise (docs/method.md §3.2).

def stream_keys(prompts, seed, n):
    """A 64-bit key per sample: row b * n + j (sample j of prompt b) gets a hash of (seed, j, prompt b)."""
    return np.array([int.from_bytes(hashlib.blake2b(repr((seed, j, list(p))).encode(), digest_size=8)
                                    .digest(), "little") for p in prompts for j in range(n)], dtype=np.uint64)


def stream_uniforms(keys, step):
    """Number `step` of every stream in `keys` (np.uint64, one per row): float64 uniforms in [0, 1), (B,). By
    splitmix64 (Steele, Lea and Flood 2014): key + (step + 1) * golden-ratio constant, mixed; top 53 bits / 2**53."""
    with np.errstate(over="ignore"):
        z = keys + np.uint64(step + 1) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return torch.from_numpy((z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53)


@torch.inference_mode()
def generate(model, prompts, max_new_tokens, *, temperature=0.0, top_k=0, top_p=1.0, stop_ids=(),
             seed=None, num_samples=None, batch_size=None, progress=False):
    """Decode `prompts` (lists of token ids, any lengths) together. Returns one entry per prompt, in order: its
    new token ids (a list of ints), or with num_samples=n a list of its n samples, each cut before its first stop
    id. Prompts are sorted by length into chunks of `batch_size` (less padding); a chunk is one left-padded
    prefill, expanded to n rows per prompt, then decoded a token per step until every row has stopped. With a
    `seed`, every sample draws from its own random stream (`stream_keys`): a prompt gets the same samples in any
    batch, order or process; without, from torch's global generator. progress: a bool, or the line's label."""
    n = 1 if num_samples is None else num_samples
    require(n >= 1 and max_new_tokens >= 0, f"bad generate arguments: num_samples={num_samples}, "
            f"max_new_tokens={max_new_tokens}")
    require(all(len(p) for p in prompts), "generate: empty prompt")
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    bs = batch_size or max(len(prompts), 1)
    groups = [None] * len(prompts)
    desc = progress if isinstance(progress, str) else "generate"
    bar = Progress(len(prompts), desc, "prompt", enabled=bool(progress))
    for c in range(0, len(order), bs):
        chunk = order[c:c + bs]
        chunk_prompts = [prompts[i] for i in chunk]
        keys = None if seed is None else stream_keys(chunk_prompts, seed, n)
        outs = _generate_chunk(model, chunk_prompts, max_new_tokens=max_new_tokens, num_samples=n,
                               temperature=temperature, top_k=top_k, top_p=top_p, stop_ids=stop_ids, keys=keys)
        for i, g in zip(chunk, outs):
            groups[i] = g
        bar.update(len(chunk))
    bar.close()
    return groups if num_samples is not None else [g[0] for g in groups]


def generate_answers(model, tok, questions, max_new_tokens, *, n=1, batch_size=64, prefixes=None, progress=True,
                     **sampling):
    """n samples (token-id lists) per plain question from its chat prompt, cut at the checkpoint's stop tokens: every
    decoding of upft.py and eval.py. prefixes[i]: response tokens already decoded for question i. batch_size counts
    sequences in flight (batch_size // n questions). sampling: temperature, top_p, top_k, seed."""
    prompts = [chat_prompt(tok, q) + (list(prefixes[i]) if prefixes is not None else [])
               for i, q in enumerate(questions)]
    return generate(model, prompts, max_new_tokens, num_samples=n, stop_ids=tok.eos_ids,
                    batch_size=max(1, batch_size // n), progress=progress, **sampling)


def default_device():  # the --device default of train.py and eval.py
    return "cuda" if torch.cuda.is_available() else "cpu"


def _generate_chunk(model, prompts, *, max_new_tokens, num_samples, temperature, top_k, top_p, stop_ids, keys):
    """One left-padded batch: returns, per prompt, its num_samples samples (lists of new token ids).
    keys: the random stream of every row (stream_keys), or None (torch's global generator)."""
    # >>> exercise: generate_loop
    n, device = num_samples, model.device
    B, Tmax = len(prompts), max(len(p) for p in prompts)
    if max_new_tokens == 0:
        return [[[] for _ in range(n)] for _ in range(B)]
    pad = torch.tensor([Tmax - len(p) for p in prompts])
    ids = torch.tensor([[0] * (Tmax - len(p)) + list(p) for p in prompts], dtype=torch.long)  # left padding
    cache = KVCache(model.config, B, Tmax + max_new_tokens, pad, device, next(model.parameters()).dtype)
    logits = model(ids.to(device), cache=cache, last_only=True)[:, -1]   # (B, V)
    if n > 1:
        cache.expand(n)
        logits = logits.repeat_interleave(n, dim=0)  # each row samples its OWN first token
    stop = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=device)
    live = list(range(B * n))          # output row of each row still in the cache
    outs = [[] for _ in range(B * n)]
    done = torch.zeros(B * n, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        u = None if keys is None or not temperature or temperature <= 0 else stream_uniforms(keys[live], step)
        tok = sample_next(logits, temperature, top_k, top_p, u=u)            # (live,)
        for r, t, d in zip(live, tok.tolist(), done.tolist()):
            if not d:
                outs[r].append(t)
        done |= torch.isin(tok, stop)
        if step == max_new_tokens - 1 or bool(done.all()):
            break
        # Drop finished rows so later steps pay for live ones only; the cache copy costs about a decoding step,
        # so it waits until a quarter of the rows have finished.
        if int(done.sum()) * 4 >= len(live):
            keep = ~done
            live = [r for r, k in zip(live, keep.tolist()) if k]
            cache.select(keep)
            tok, done = tok[keep], done[keep]
        logits = model(tok[:, None], cache=cache)[:, -1]
    stops = set(stop_ids)
    rows = [row[:next((i for i, t in enumerate(row) if t in stops), len(row))] for row in outs]
    return [rows[b * n:(b + 1) * n] for b in range(B)]  # row b * n + j is sample j of prompt b
    # <<< exercise: generate_loop
