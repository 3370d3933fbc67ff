"""Generation throughput: our `generate` vs transformers `generate` on the same weights.

    python tests/bench.py                          # ~50M-param Llama-shaped model, random weights, fp32, CPU
    python tests/bench.py --shape qwen2.5-1.5b --device cuda --dtype bfloat16 --batches 1 64
    python tests/bench.py --model DIR              # a real checkpoint folder (e.g. SmolLM2-135M-Instruct from
                                                   # scripts/fetch_smollm2.py) on real GSM8K chat prompts

Both sides decode greedily for exactly --new-tokens tokens from the same prompts (no stop token), one
warm-up run each, then the best of --repeats timed runs, alternating the sides. Prints new tokens/s, the
ratio ours/HF, whether the tokens agree, and (on CUDA) peak memory. transformers is a test-only dependency.

With --model DIR the prompts are the chat prompts of the first B GSM8K test questions (different
lengths, so batches > 1 are left-padded), and the run adds:
- the batch-1 memory-bandwidth bound. Decoding one token at batch 1 reads every weight once:
  bytes/token = bytes per element x (unique parameters + one embedding row), the tied embedding
  counted once, as the output head (the input side reads only the token's row); the KV cache is left
  out (printed beside it: a few % at these lengths). The bandwidth is measured in the same run: the
  best of 5 `sum` passes over a 512 MiB tensor (bytes read / s). Bound tok/s = bandwidth / bytes/token.
  Each side's decode rate excludes the prefill: (N - 1) / (t(N new tokens) - t(1 new token)).
- one training step, forward + backward of a next-token cross-entropy over --train-batch real GSM8K
  sequences (chat prompt + gold solution, cut to --train-len tokens, no padding), same weights and
  batch on both sides. Achieved GFLOP/s = 6 x parameters x tokens / seconds (2 for the forward and 4
  for the backward per parameter and token; attention scores and the embedding lookup not counted).
- one UPFT-shaped optimizer step (--upft-step P F: P prefix examples + F full examples built by
  upft.make_example from the first GSM8K test questions, the gold solution standing in for the sample:
  its first 8 tokens + EOS under the prefix instruction, or all of it), in micro-batches of
  --micro-batch, the gradient of the step's summed token loss / its supervised tokens: ours through
  train.accumulate_grads with the loss on supervised rows (the path train.py trains with), transformers
  with its own `labels=` loss over full logits (its mean x the micro-batch's count, over the step's
  count). Time (best of --repeats, alternating) and peak memory: the largest rise of the process's
  resident set (RSS, /proc/self/statm, sampled every millisecond by a thread) over its value before
  the step, the best of the timed runs; plus the loss and the largest gradient difference.
  --autocast-bf16 runs both training rows under CPU bf16 autocast (fp32 weights), and reports how the
  bf16 loss and gradients differ from fp32 (loss difference, cosine of each gradient).
"""
import argparse
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from unittest import mock

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts OpenMP: docs/performance.md, "A busy machine"

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from launch.cli import cpu_bf16  # noqa: E402
import train  # noqa: E402
from data import Tokenizer, UpftError, read_jsonl, supervised_count  # noqa: E402
from model import Transformer, generate  # noqa: E402
from upft import make_example  # noqa: E402

SHAPES = {
    # about 50M parameters: 8 layers x 3.1M + untied 24k-vocab embeddings (2 x 12.3M)
    "50m": dict(model_type="llama", vocab_size=24000, hidden_size=512, intermediate_size=1536,
                num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4, rope_theta=500000.0,
                max_position_embeddings=2048, tie_word_embeddings=False),
    # 0.7M parameters: a smoke run of this script (scripts/gpu_check.py --device cpu), not a measurement
    "tiny": dict(model_type="llama", vocab_size=1024, hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0, max_position_embeddings=256,
                 tie_word_embeddings=False),
    # Qwen2.5-1.5B's shape (random weights)
    "qwen2.5-1.5b": dict(model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                         num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                         rope_theta=1000000.0, max_position_embeddings=32768, tie_word_embeddings=True,
                         rms_norm_eps=1e-6),
}


def timed(fn, device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t, out


def best_of(runs, repeats, device):
    """Warm up each side once, then `repeats` rounds alternating the sides (drifts of the machine, its
    clock or other load, hit both alike). Returns {name: best seconds}, {name: last output}, {name: peak GiB}."""
    best, outs, peak = {}, {}, {}
    for name, fn in runs.items():
        outs[name] = fn()
    for _ in range(repeats):
        for name, fn in runs.items():
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            t, outs[name] = timed(fn, device)
            best[name] = min(best.get(name, float("inf")), t)
            if device.startswith("cuda"):
                peak[name] = torch.cuda.max_memory_allocated() / 2**30
    return best, outs, peak


def decoders(ours, ref, prompts, pad_id, device):
    """(ours, HF) greedy decoders of exactly n new tokens per row; prompts of any lengths (left padding)."""
    T = max(map(len, prompts))
    ids = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, p in enumerate(prompts):
        ids[b, T - len(p):], mask[b, T - len(p):] = torch.tensor(p), 1

    def run_ours(n):
        return generate(ours, prompts, n)  # no stop ids: every row decodes n tokens

    def run_hf(n):
        with torch.inference_mode():
            out = ref.generate(ids.to(device), attention_mask=mask.to(device), max_new_tokens=n, min_new_tokens=n,
                               do_sample=False, pad_token_id=pad_id)
        return out[:, T:].tolist()
    return run_ours, run_hf


def same_rows(out_ours, out_hf, stop_ids=()):
    """Rows whose tokens agree up to our first stop token (HF's min_new_tokens masks the stop token
    there, so the two may only part after it)."""
    n = 0
    for a, b in zip(out_ours, out_hf):
        k = next((i for i, t in enumerate(a) if t in stop_ids), len(a))
        n += a[:k] == b[:k]
    return n


def random_weights(args, dtype):
    import transformers
    cfg = dict(SHAPES[args.shape])
    cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
           "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM)}[cfg.pop("model_type")]
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        cls[1](cls[0](**cfg)).save_pretrained(d)  # same weights for both sides
        ref = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=dtype).to(args.device).eval()
        ours = Transformer.from_pretrained(d, device=args.device, dtype=dtype)
    return ours, ref, cfg["vocab_size"]


def bench_random(args, dtype):
    ours, ref, vocab = random_weights(args, dtype)
    n_params = sum(p.numel() for p in ours.parameters())
    print(f"shape {args.shape}: {n_params / 1e6:.1f}M params, {args.dtype}, {args.device}, "
          f"prompt {args.prompt_len} tokens, {args.new_tokens} new tokens, attention: HF "
          f"{ref.config._attn_implementation}, ours SDPA")
    print(f"{'batch':>5} {'ours tok/s':>11} {'HF tok/s':>10} {'ratio':>6} {'same tokens':>11} {'peak mem':>9}")
    g = torch.Generator().manual_seed(0)
    N = args.new_tokens
    for B in args.batches:
        prompts = torch.randint(0, vocab, (B, args.prompt_len), generator=g).tolist()
        run_ours, run_hf = decoders(ours, ref, prompts, 0, args.device)
        best, outs, peak = best_of({"ours": lambda: run_ours(N), "hf": lambda: run_hf(N)}, args.repeats, args.device)
        same = same_rows(outs["ours"], outs["hf"])
        peak = f"{peak['ours']:.1f}/{peak['hf']:.1f}G" if peak else "-"
        print(f"{B:>5} {B * N / best['ours']:>11.1f} {B * N / best['hf']:>10.1f} {best['hf'] / best['ours']:>5.2f}x "
              f"{same:>5}/{B:<5} {peak:>9}")


def memory_bandwidth(device, mib=512, repeats=5):
    """Best-of-`repeats` read bandwidth (bytes/s): a sum over a `mib` MiB fp32 tensor, far beyond any cache."""
    x = torch.rand(mib * 2**20 // 4, device=device)
    x.sum()
    best = min(timed(lambda: x.sum(), device)[0] for _ in range(repeats))
    return x.numel() * 4 / best


def bench_folder(args, dtype):
    import transformers
    data = Path(args.data)
    if not data.is_file():
        raise UpftError(f"--data {data}: not found (GSM8K test questions, JSONL with 'question')")
    ours = Transformer.from_pretrained(args.model, device=args.device, dtype=dtype)
    tok = Tokenizer.from_pretrained(args.model)
    ref = transformers.AutoModelForCausalLM.from_pretrained(ours.source_dir, dtype=dtype).to(args.device).eval()
    rows = read_jsonl(data)
    questions = [r["question"] for r in rows if isinstance(r.get("question"), str)]
    if len(questions) < max(args.batches):
        raise UpftError(f"--data {data}: {len(questions)} questions, fewer than batch {max(args.batches)}")
    chats = [tok.encode(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True))
             for q in questions[:max(args.batches)]]
    cfg, N = ours.config, args.new_tokens
    n_params = sum(p.numel() for p in ours.parameters())  # unique: a tied head is counted once
    elt = torch.finfo(dtype).bits // 8
    print(f"model {args.model}: {n_params / 1e6:.1f}M parameters ({'tied' if cfg.tie_word_embeddings else 'untied'} "
          f"head), {args.dtype}, {args.device}, {torch.get_num_threads()} threads, transformers "
          f"{transformers.__version__} (attention {ref.config._attn_implementation}; ours SDPA)")
    print(f"prompts: chat prompts of the first B questions of {data.name}; {N} new tokens, greedy, no stop; "
          f"best of {args.repeats} after a warm-up, sides alternating")
    print(f"{'batch':>5} {'prompt tokens':>15} {'ours tok/s':>11} {'HF tok/s':>10} {'ours/HF':>8} {'same tokens':>12}")
    decode_1 = None
    for B in args.batches:
        prompts = chats[:B]
        run_ours, run_hf = decoders(ours, ref, prompts, tok.pad_id, args.device)
        best, outs, _ = best_of({"ours": lambda: run_ours(N), "hf": lambda: run_hf(N)}, args.repeats, args.device)
        lens = sorted(map(len, prompts))
        span = f"{lens[0]}" if B == 1 else f"{lens[0]}-{lens[-1]} (left pad)"
        same = same_rows(outs["ours"], outs["hf"], tok.eos_ids)
        print(f"{B:>5} {span:>15} {B * N / best['ours']:>11.1f} {B * N / best['hf']:>10.1f} "
              f"{best['hf'] / best['ours']:>7.2f}x {same:>6}/{B:<5}")
        if B == 1:
            first, _, _ = best_of({"ours": lambda: run_ours(1), "hf": lambda: run_hf(1)}, args.repeats, args.device)
            decode_1 = {k: (N - 1) / (best[k] - first[k]) for k in best}, lens[0]

    if decode_1:
        rates, plen = decode_1
        bw = memory_bandwidth(args.device)
        per_token = elt * (n_params + cfg.hidden_size)
        bound = bw / per_token
        kv = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * elt * (plen + N / 2)
        print(f"\nbatch-1 bandwidth bound: measured read bandwidth {bw / 1e9:.1f} GB/s (best of 5 sums over "
              f"512 MiB); weights read per decoded token {per_token / 1e6:.1f} MB = {elt} B x ({n_params:,} "
              f"parameters + one {cfg.hidden_size}-wide embedding row); bound {bound:.1f} tok/s "
              f"(KV cache, not counted: {kv / 1e6:.1f} MB/token at the mean context)")
        for name, label in (("ours", "ours"), ("hf", "transformers")):
            print(f"  {label:>12}: decode {rates[name]:.1f} tok/s (prefill excluded) = {rates[name] / bound:.0%} "
                  f"of the bound")
        print(f"  ours/HF decode: {rates['ours'] / rates['hf']:.2f}x")

    if args.train_batch:
        bench_train(ours, ref, tok, rows, args, n_params)
    if args.upft_step:
        bench_upft_step(ours, ref, tok, rows, args)


class PeakRSS:
    """The largest rise of this process's resident set over its value at entry, sampled every ms."""
    page = os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        self.base = self.peak = self.rss()
        self.running = True
        self.thread = threading.Thread(target=self.watch, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.rise = self.peak - self.base

    def rss(self):
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def watch(self):
        while self.running:
            self.peak = max(self.peak, self.rss())
            time.sleep(0.001)


def bench_upft_step(ours, ref, tok, rows, args):
    """One UPFT-shaped optimizer step, ours (loss on supervised rows) vs transformers (full logits)."""
    n_prefix, n_full = args.upft_step
    exs = [make_example(tok, r["question"], tok.encode(r["answer"]), "prefix" if i < n_prefix else "full", 8)
           for i, r in enumerate(rows[:n_prefix + n_full])]
    total = sum(supervised_count(e["labels"]) for e in exs)
    positions = sum(len(e["input_ids"]) for e in exs)
    mb, pad = args.micro_batch, tok.pad_id
    ours.train()
    ref.train()

    def hf_loss(model, ids, labels, **_):  # transformers' own loss (the micro-batch's token mean), as a sum
        n = sum(supervised_count(row) for row in labels.tolist())
        return model(ids, labels=labels).loss * n

    def step(model, loss_sum, amp, record):  # the same loop (accumulate_grads) around either loss
        def fn():
            model.zero_grad(set_to_none=True)
            with PeakRSS() as mem, mock.patch.object(train, "micro_batch_loss", loss_sum):
                loss, _ = train.accumulate_grads(model, exs, mb, pad, total, amp())
            record.setdefault("rss", []).append(mem.rise)
            record["loss"] = loss
            return None
        return fn

    rows_out = []
    for label, amp in (("fp32", lambda: None), ("bf16 autocast", lambda: torch.autocast("cpu", dtype=torch.bfloat16))):
        if label != "fp32" and not args.autocast_bf16:
            continue
        rec = {"ours": {}, "hf": {}}
        best, _, _ = best_of({"ours": step(ours, train.micro_batch_loss, amp, rec["ours"]),
                              "hf": step(ref, hf_loss, amp, rec["hf"])}, args.repeats, args.device)
        grads = {n: p.grad.clone() for n, p in ours.named_parameters()}
        rows_out.append((label, best, rec, grads))
    ours.eval()
    ref.eval()
    print(f"\nUPFT-shaped step: {n_prefix} prefix + {n_full} full examples, {positions:,} positions of which "
          f"{total} supervised, micro-batches of {mb}; time best of {args.repeats}; memory = peak RSS rise "
          f"during the step (best of the timed runs)")
    for label, best, rec, _ in rows_out:
        print(f"  {label:>13}: ours {best['ours']:.2f} s, {min(rec['ours']['rss']) / 2**20:.0f} MiB; transformers "
              f"{best['hf']:.2f} s, {min(rec['hf']['rss']) / 2**20:.0f} MiB; ours/HF speed "
              f"{best['hf'] / best['ours']:.2f}x, memory {min(rec['ours']['rss']) / min(rec['hf']['rss']):.2f}x; "
              f"loss {rec['ours']['loss']:.5f} vs {rec['hf']['loss']:.5f}")
    if len(rows_out) == 2:
        (_, _, r32, g32), (_, _, r16, g16) = rows_out
        cos = [torch.nn.functional.cosine_similarity(g16[k].flatten().float(), g32[k].flatten(), dim=0).item()
               for k in g32]
        print(f"  bf16 vs fp32 (ours): loss {r16['ours']['loss']:.5f} vs {r32['ours']['loss']:.5f} "
              f"(difference {abs(r16['ours']['loss'] - r32['ours']['loss']):.1e}); gradient cosine per tensor: "
              f"min {min(cos):.4f}, median {sorted(cos)[len(cos) // 2]:.4f}")


def bench_train(ours, ref, tok, rows, args, n_params):
    """One forward + backward of next-token CE on the same real batch, ours vs transformers."""
    B, T = args.train_batch, args.train_len
    seqs = []
    for r in rows:
        ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": r["question"]}])) + \
            tok.encode(r.get("answer", ""))
        if len(ids) >= T:
            seqs.append(ids[:T])
        if len(seqs) == B:
            break
    if len(seqs) < B:
        raise UpftError(f"--train-len {T}: fewer than {B} questions + solutions that long")
    ids = torch.tensor(seqs, device=args.device)
    ours.train()
    ref.train()
    loss = {}

    def step(name, model):
        def fn():
            model.zero_grad(set_to_none=True)
            logits = model(ids) if name == "ours" else model(ids).logits
            loss_sum, n = train.masked_ce_sum(logits, ids)   # every position after the first is a target
            lo = loss_sum / n
            lo.backward()
            loss[name] = lo.item()
            return None
        return fn

    best, _, _ = best_of({"ours": step("ours", ours), "hf": step("hf", ref)}, args.repeats, args.device)
    # transformers builds nn.Embedding(padding_idx=pad_token_id): the INPUT side of that row (for SmolLM2
    # <|im_end|>, which every chat prompt contains) gets no gradient there; ours trains it. Compared apart.
    pad_row = getattr(ref.get_input_embeddings(), "padding_idx", None)
    grad = {n: p.grad.clone() for n, p in ours.named_parameters()}
    ref_grad = {n: p.grad.clone() for n, p in ref.named_parameters()}
    row_diff = None
    if pad_row is not None and "model.embed_tokens.weight" in grad:
        row_diff = (grad["model.embed_tokens.weight"][pad_row] - ref_grad["model.embed_tokens.weight"][pad_row])
        row_diff = row_diff.abs().max().item()
        for g in (grad, ref_grad):
            g["model.embed_tokens.weight"][pad_row] = 0
    gdiff = max((grad[n] - g).abs().max().item() for n, g in ref_grad.items() if n in grad)
    ours.eval()
    ref.eval()
    flop = 6 * n_params * B * T
    print(f"\ntraining step (forward + backward, CE over {B} x {T} real tokens, same batch and weights): "
          f"GFLOP = 6 x {n_params / 1e6:.1f}M params x {B * T} tokens = {flop / 1e9:.0f}")
    for name, label in (("ours", "ours"), ("hf", "transformers")):
        print(f"  {label:>12}: {best[name]:.2f} s, {flop / best[name] / 1e9:.1f} GFLOP/s, loss {loss[name]:.5f}")
    print(f"  ours/HF speed: {best['hf'] / best['ours']:.2f}x; |loss difference| "
          f"{abs(loss['ours'] - loss['hf']):.1e}, largest gradient difference {gdiff:.1e}"
          + (f" (embedding row {pad_row} apart: {row_diff:.1e}; transformers' padding_idx={pad_row} gives its "
             f"input side no gradient)" if row_diff is not None else ""))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a checkpoint folder: real weights and real chat prompts (see above)")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "gsm8k_test.jsonl"),
                    help="--model: GSM8K questions for the prompts and the training batch")
    ap.add_argument("--shape", default="50m", choices=sorted(SHAPES))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--prompt-len", type=int, default=32, help="random weights: prompt length")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-batch", type=int, default=4, help="--model: sequences in the training step (0: skip)")
    ap.add_argument("--train-len", type=int, default=128, help="--model: tokens per training sequence")
    ap.add_argument("--upft-step", type=int, nargs=2, default=[14, 2], metavar=("PREFIX", "FULL"),
                    help="--model: a UPFT-shaped optimizer step of PREFIX prefix + FULL full examples (0 0: skip)")
    ap.add_argument("--micro-batch", type=int, default=4, help="--model: examples per forward/backward of that step")
    ap.add_argument("--autocast-bf16", action="store_true", help="--model: the step also under CPU bf16 autocast")
    args = ap.parse_args()
    if args.new_tokens < 2 or args.repeats < 1 or min(args.batches) < 1:
        ap.error("--new-tokens must be >= 2, --repeats and --batches >= 1")
    if min(args.upft_step) < 0 or args.micro_batch < 1 or args.train_batch < 0 or args.train_len < 2:
        ap.error("--upft-step counts must be >= 0, --micro-batch >= 1, --train-batch >= 0, --train-len >= 2")
    args.upft_step = args.upft_step if sum(args.upft_step) else None
    if args.autocast_bf16 and not cpu_bf16()[0]:
        print(f"note: {cpu_bf16()[1]}: the bf16 rows run emulated, many times slower than fp32",
              file=sys.stderr)
    dtype = getattr(torch, args.dtype)
    try:
        if args.model:
            bench_folder(args, dtype)
        else:
            bench_random(args, dtype)
    except UpftError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
