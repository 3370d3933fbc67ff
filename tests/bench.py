"""Generation throughput: our `generate` vs transformers `generate` on the same random weights.

    python tests/bench.py                          # ~50M-param Llama-shaped model, fp32, CPU, batch 1 and 16
    python tests/bench.py --shape qwen2.5-1.5b --device cuda --dtype bfloat16 --batches 1 64

Both sides decode greedily for exactly --new-tokens tokens from the same prompts (no stop token), one
warm-up run each, then the best of --repeats timed runs. Prints new tokens/s, the ratio ours/HF,
whether the tokens agree, and (on CUDA) peak memory. transformers is a test-only dependency.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model import Transformer, generate  # noqa: E402

SHAPES = {
    # about 50M parameters: 8 layers x 3.1M + untied 24k-vocab embeddings (2 x 12.3M)
    "50m": dict(model_type="llama", vocab_size=24000, hidden_size=512, intermediate_size=1536,
                num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4, rope_theta=500000.0,
                max_position_embeddings=2048, tie_word_embeddings=False),
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="50m", choices=sorted(SHAPES))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import transformers

    if args.device == "cpu":
        torch.set_num_threads(torch.get_num_threads())
    dtype = getattr(torch, args.dtype)
    cfg = dict(SHAPES[args.shape])
    cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
           "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM)}[cfg.pop("model_type")]
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        cls[1](cls[0](**cfg)).save_pretrained(d)  # same weights for both sides
        ref = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=dtype).to(args.device).eval()
        ours = Transformer.from_pretrained(d, device=args.device, dtype=dtype)
    n_params = sum(p.numel() for p in ours.parameters())
    print(f"shape {args.shape}: {n_params / 1e6:.1f}M params, {args.dtype}, {args.device}, "
          f"prompt {args.prompt_len} tokens, {args.new_tokens} new tokens, attention: HF "
          f"{ref.config._attn_implementation}, ours SDPA")
    print(f"{'batch':>5} {'ours tok/s':>11} {'HF tok/s':>10} {'ratio':>6} {'same tokens':>11} {'peak mem':>9}")
    g = torch.Generator().manual_seed(0)
    for B in args.batches:
        prompts = torch.randint(0, cfg["vocab_size"], (B, args.prompt_len), generator=g)
        N = args.new_tokens

        def run_ours():
            return generate(ours, prompts.tolist(), N)

        def run_hf():
            with torch.inference_mode():
                ids = prompts.to(args.device)
                out = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=N, min_new_tokens=N,
                                   do_sample=False, pad_token_id=0)
            return out[:, args.prompt_len:].tolist()

        # alternate the two sides so drifts of the machine (clock, other load) hit both alike
        runs = {"ours": run_ours, "hf": run_hf}
        best, outs, peak = {}, {}, {}
        for name, fn in runs.items():
            outs[name] = fn()  # warm-up
        for _ in range(args.repeats):
            for name, fn in runs.items():
                if args.device.startswith("cuda"):
                    torch.cuda.reset_peak_memory_stats()
                t, outs[name] = timed(fn, args.device)
                best[name] = min(best.get(name, float("inf")), t)
                if args.device.startswith("cuda"):
                    peak[name] = torch.cuda.max_memory_allocated() / 2**30
        t_ours, t_hf, out_ours, out_hf = best["ours"], best["hf"], outs["ours"], outs["hf"]
        same = sum(a == b for a, b in zip(out_ours, out_hf))
        peak = f"{peak['ours']:.1f}/{peak['hf']:.1f}G" if peak else "-"
        print(f"{B:>5} {B * N / t_ours:>11.1f} {B * N / t_hf:>10.1f} {t_hf / t_ours:>5.2f}x "
              f"{same:>5}/{B:<5} {peak:>9}")


if __name__ == "__main__":
    main()
