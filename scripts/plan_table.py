"""docs/scale.md's figures: each model's memory plan on 8 x 80 GB (the plan
train.py prints, plan.plan_run, from the checkpoints' config.json shapes written out below, so no download
is needed), and a wall-time ESTIMATE from FLOPs at a stated utilisation.

    python scripts/plan_table.py          # prints the markdown docs/scale.md holds

`python train.py --plan 8 --device cuda --model <hub id> ...` prints the same plan from the real config.json.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from launch import plan as P  # noqa: E402
from model import Config  # noqa: E402

# config.json shape fields of the three checkpoints (Hugging Face hub, as published)
LLAMA_8B = dict(model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0,
                max_position_embeddings=131072, tie_word_embeddings=False,
                rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                  original_max_position_embeddings=8192))
QWEN_7B = dict(model_type="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
               num_attention_heads=28, num_key_value_heads=4, rope_theta=10000.0, tie_word_embeddings=False)
MODELS = [  # name, hub id, shapes, L, max_len, sampling/eval budget, extra flags, tokens from the paper
    ("Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-8B-Instruct", LLAMA_8B, 8, 4096, 4096, [], 192, 0.2e6),
    ("Qwen2.5-Math-7B-Instruct", "Qwen/Qwen2.5-Math-7B-Instruct", {**QWEN_7B, "max_position_embeddings": 4096},
     32, 4096, 3584, [], 269, 0.6e6),
    ("DeepSeek-R1-Distill-Qwen-7B", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
     {**QWEN_7B, "max_position_embeddings": 131072}, 128, 16384, 16384, ["--grad-ckpt"], 1656, 5.0e6),
]
GPUS, GPU_GIB = 8, P.PLAN_GPU_GIB  # an "80 GB" GPU reports about 79 GiB
# Wall-time estimate, stated assumptions: PRM-12K (12,000 questions, 2 epochs, as the paper trains on it),
# a 150-token prompt per question (+30 for the prefix instruction on prefix examples), the paper's UPFT
# sampling = tuning token counts (its Table 2) and RFT's mean response length for the evaluation
# responses (MATH500, base + tuned); H100 SXM bf16 dense peak 989 TFLOP/s; 35% of it while training,
# 5% while decoding (small-batch decoding is memory-bound, and this decoder is eager PyTorch).
# FLOPs say little about decoding, whose steps are sequential: the second estimate counts decoding steps
# instead, every chunk running to its budget (the worst case), at 30 ms per step for a 7-8B model in
# bf16 on an H100 (an assumption: the weights and the KV cache read once per step, plus eager overhead).
QUESTIONS, EPOCHS, PROMPT, INSTRUCTION, EVAL_Q, P_FULL = 12_000, 2, 150, 30, 500, 0.1
PEAK, MFU_TRAIN, MFU_DECODE, STEP_S = 989e12, 0.35, 0.05, 0.03


def command(name, hub, L, max_len, budget, extra):
    return (f"torchrun --nproc-per-node {GPUS} train.py --model {hub} --data prm12k.jsonl "
            f"--eval-data math500_test.jsonl --prefix-len {L} --structure-ratio 0.1 --epochs {EPOCHS} --lr 1e-6 "
            f"--batch-size 64 --micro-batch-size 1 --max-len {max_len} --max-new-tokens {budget} "
            f"--eval-max-new-tokens {budget} --device cuda {' '.join(extra)}".strip())


def main():
    g = lambda b: f"{b / P.GiB:.1f}"  # noqa: E731
    rows, cmds, times = [], [], []
    for name, hub, shape, L, max_len, budget, extra, resp_len, upft_tokens in MODELS:
        cfg = Config.from_dict(shape)
        # the command below on 8 GPUs: fp32 master weights, sharded, full traces (p = 0.1) of `budget` tokens;
        # the decoding batches are the largest that fit
        plan = P.plan_run(cfg, P.usable_bytes(cuda=True, gpu_mem=GPU_GIB), world=GPUS, sharded=True, cuda=True,
                          micro_batch=1, max_len=max_len, grad_ckpt="--grad-ckpt" in extra, sample_tokens=budget,
                          eval_tokens=budget)
        assert plan.fix is None, plan.fix
        kw, p, n = plan.settings, plan.bytes, P.parameter_count(cfg)
        rows.append(f"| {name} | {n / 1e9:.2f}B | {g(p['weights'])} / {g(p['grads'])} / {g(p['optimizer'])} | "
                    f"{g(p['gathered'])} | {'ckpt ' if kw['grad_ckpt'] else ''}{g(p['activations'])} + "
                    f"{g(p['logits'])} | **{g(p['train_total'])}** | {kw['sample_batch']} x {budget}: "
                    f"{g(p['decode_weights'])} + {g(p['weights'])} + {g(p['sample_kv'])} + "
                    f"{g(p['sample_prefill'])} = **{g(p['sample_total'])}** | {kw['eval_batch']} |")
        cmds.append(f"# {name} (L = {L})\n{command(name, hub, L, max_len, budget, extra)}")
        train_tokens = EPOCHS * (QUESTIONS * PROMPT + 0.9 * QUESTIONS * INSTRUCTION + upft_tokens)
        train_flops = (8 if kw["grad_ckpt"] else 6) * n * train_tokens  # 2N forward + 4N backward (+2N recompute)
        decode_tokens = QUESTIONS * PROMPT + upft_tokens + 2 * EVAL_Q * (PROMPT + resp_len)
        decode_flops = 2 * n * decode_tokens
        t_train = train_flops / (GPUS * PEAK * MFU_TRAIN)
        t_decode = decode_flops / (GPUS * PEAK * MFU_DECODE)
        per_gpu = lambda n: -(-int(n) // GPUS)  # noqa: E731
        chunks = lambda n, b: -(-per_gpu(n) // b)  # noqa: E731
        steps = (chunks(P_FULL * QUESTIONS, kw["sample_batch"]) * budget
                 + chunks((1 - P_FULL) * QUESTIONS, kw["sample_batch"]) * L
                 + 2 * chunks(EVAL_Q, kw["eval_batch"]) * budget)
        times.append(f"| {name} | {train_tokens / 1e6:.1f}M | {train_flops:.2g} | {t_train / 60:.1f} min | "
                     f"{decode_tokens / 1e6:.1f}M | {decode_flops:.2g} | {t_decode / 60:.1f} min | "
                     f"{steps:,} | {steps * STEP_S / 60:.0f} min |")
    print("| model | params | weights / grads / AdamW (exact) | gathered | activations + logits | training "
          "| sampling: bf16 copy + fp32 shard + KV + prefill | eval batch |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("\n```bash\n" + "\n".join(cmds) + "\n```\n")
    print("| model | tokens trained (2 epochs) | training FLOPs | training time | tokens prefilled + decoded | decoding FLOPs "
          "| decoding time | decoding steps per GPU (worst case) | decoding time, by steps |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(times))


if __name__ == "__main__":
    main()
