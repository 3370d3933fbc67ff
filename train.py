"""UPFT end to end, and the one masked cross-entropy loop that every training in upft goes through.

    python train.py --prefix-len 8                      # embedded toy world (built and cached on first use)
    python train.py --model DIR_OR_ID --data train.jsonl --eval-data test.jsonl --prefix-len 8

Steps (PAPER.md §3.9): load the model; greedy base accuracy on the eval set; sample ONE answer per
question from the model itself (upft.py: prefix-only decoding for D_p, full traces for the fraction p);
build the training examples; train; save in HF layout; tuned accuracy; token accounting.

The loss (PAPER.md box, decision 6): the sum of token cross-entropy over every supervised token of an
optimizer step, divided by that step's supervised-token count, so gradient accumulation with unequal
micro-batches equals one big batch, and every token weighs the same (Eq. 8 read literally).
`--loss-norm sample` reproduces the official code's weighting instead (each sample's token mean,
averaged over the step's samples, §3.6). AdamW (0.9, 0.95), weight decay 0, clip 1.0, constant LR after a
3% linear warmup (decision 8). fp32 on CPU; bf16 autocast on CUDA.

Outputs in --out: args.json, train_examples.jsonl (the exact input_ids/labels trained on), rollouts.jsonl,
metrics.jsonl, checkpoint/ (for --resume, every --save-every steps, atomic), model/ (HF layout),
results.json. Left out: distributed training, torch.compile, packing.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from data import UpftError, read_jsonl, write_json, write_jsonl
from upft import IGNORE  # label of a position that is not trained (torch / HF convention)


# ----------------------------------------------------------------------------- the loss

def masked_ce_sum(logits, labels):
    """Sum of next-token CE over supervised positions, and their count. logits (B, T, V), labels (B, T)
    aligned with input_ids: position t's logits predict labels[t + 1] (the shift happens here, once)."""
    logits, targets = logits[:, :-1].float(), labels[:, 1:]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=IGNORE, reduction="sum")
    return loss, int((targets != IGNORE).sum())


def per_sample_mean_sum(logits, labels):
    """The official code's weighting: each sample's token-mean CE, summed over samples (with their count)."""
    logits, targets = logits[:, :-1].float(), labels[:, 1:]
    tok = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE, reduction="none")  # (B, T-1)
    n = (targets != IGNORE).sum(1)
    keep = n > 0  # a sample with no supervised token contributes nothing (and no 0/0)
    return (tok.sum(1)[keep] / n[keep]).sum(), int(keep.sum())


def collate(examples, pad_id):
    """Right-pad a micro-batch: (input_ids, labels) as (B, T) LongTensors, pads labelled IGNORE."""
    T = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), T), IGNORE, dtype=torch.long)
    for b, e in enumerate(examples):
        ids[b, :len(e["input_ids"])] = torch.tensor(e["input_ids"])
        labels[b, :len(e["labels"])] = torch.tensor(e["labels"])
    return ids, labels


def supervised_count(example, loss_norm="token"):
    """What one example adds to a step's normaliser: its supervised tokens, or 1 sample if it has any."""
    n = sum(1 for t in example["labels"][1:] if t != IGNORE)
    return n if loss_norm == "token" else int(n > 0)


def accumulate_grads(model, examples, micro_batch_size, pad_id, loss_norm="token", autocast=None):
    """Backward over one optimizer step's examples in micro-batches; the gradient is that of
    (sum of losses) / (step normaliser), however the step is split. Returns (mean loss, normaliser)."""
    counts = [supervised_count(e, loss_norm) for e in examples]
    total = sum(counts)
    if total == 0:
        return float("nan"), 0  # nothing supervised in this step: no gradient, no NaN
    loss_fn = masked_ce_sum if loss_norm == "token" else per_sample_mean_sum
    device = next(model.parameters()).device
    step_loss = 0.0
    for i in range(0, len(examples), micro_batch_size):
        mb = examples[i:i + micro_batch_size]
        if sum(counts[i:i + micro_batch_size]) == 0:
            continue  # an all-masked micro-batch would only add 0 * NaN risks
        ids, labels = collate(mb, pad_id)
        with autocast or contextlib.nullcontext():
            logits = model(ids.to(device))
        loss, _ = loss_fn(logits, labels.to(device))
        (loss / total).backward()
        step_loss += loss.item()
    return step_loss / total, total


# ----------------------------------------------------------------------------- the loop

@dataclass
class TrainConfig:
    lr: float = 1e-5
    epochs: int = 1
    batch_size: int = 16          # examples per optimizer step
    micro_batch_size: int = 16    # examples per forward/backward (gradient accumulation = batch / micro)
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0
    loss_norm: str = "token"      # "token" (the project default) or "sample" (the official code)
    seed: int = 0
    save_every: int = 0           # optimizer steps between resumable checkpoints (0 = never)
    grad_ckpt: bool = False
    schedule: str = "constant"    # "constant" after warmup (the paper); "cosine" (to 10%) only for toy pretraining


def lr_at(step, total_steps, tc: TrainConfig):
    """Linear warmup over the first warmup_ratio of the steps, then constant (constant_with_warmup).
    The cosine option (decay to 10% of the peak) is what pretraining the toy model from scratch uses."""
    warm = max(1, math.ceil(tc.warmup_ratio * total_steps))
    if step < warm or tc.schedule == "constant":
        return tc.lr * min(1.0, (step + 1) / warm)
    progress = (step - warm) / max(1, total_steps - warm)
    return tc.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def step_batches(n, tc: TrainConfig):
    """Example indices of every optimizer step: a seeded shuffle per epoch, sliced into batches."""
    steps = []
    for epoch in range(tc.epochs):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(tc.seed * 1000 + epoch)).tolist()
        steps += [perm[i:i + tc.batch_size] for i in range(0, n, tc.batch_size)]
    return steps


def fit(model, examples, tc: TrainConfig, pad_id=0, out=None, resume=False, desc="train", log=print):
    """Train `model` in place on examples ({"input_ids", "labels"}); returns the per-step metrics.

    With `out`, metrics go to out/metrics.jsonl and, every tc.save_every steps, a resumable checkpoint
    (weights, AdamW state, step, RNG) to out/checkpoint; `resume` continues from it exactly.
    """
    from tqdm import tqdm
    device = next(model.parameters()).device
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=(0.9, 0.95), weight_decay=0.0,
                            foreach=device.type == "cuda")
    steps = step_batches(len(examples), tc)
    start = 0
    metrics_path = Path(out) / "metrics.jsonl" if out else None
    if resume and out and (Path(out) / "checkpoint").is_dir():
        start = load_checkpoint(Path(out) / "checkpoint", model, opt)
        log(f"resumed from {Path(out) / 'checkpoint'} at step {start}/{len(steps)}")
    elif metrics_path and metrics_path.exists():
        metrics_path.unlink()
    model.train()
    model.gradient_checkpointing = tc.grad_ckpt
    history = []
    bar = tqdm(range(start, len(steps)), desc=desc, unit="step", initial=start, total=len(steps),
               disable=None)
    for step in bar:
        batch = [examples[i] for i in steps[step]]
        lr = lr_at(step, len(steps), tc)
        for g in opt.param_groups:
            g["lr"] = lr
        loss, n = accumulate_grads(model, batch, tc.micro_batch_size, pad_id, tc.loss_norm, autocast)
        gnorm = 0.0
        if n > 0:
            gnorm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), tc.max_grad_norm))
            opt.step()
        opt.zero_grad(set_to_none=True)
        rec = {"step": step + 1, "loss": loss, "lr": lr, "grad_norm": gnorm,
               "supervised_tokens" if tc.loss_norm == "token" else "samples": n}
        history.append(rec)
        bar.set_postfix(loss=f"{loss:.4f}")
        if metrics_path:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
        if out and tc.save_every and (step + 1) % tc.save_every == 0 and step + 1 < len(steps):
            save_checkpoint(Path(out) / "checkpoint", model, opt, step + 1)
    bar.close()
    model.eval()
    model.gradient_checkpointing = False
    return history


# ----------------------------------------------------------------------------- resumable checkpoints

def save_checkpoint(path: Path, model, opt, step):
    """Weights + AdamW moments as safetensors, step and RNG as JSON (no pickle); folder swapped atomically."""
    from safetensors.torch import save_file
    from model import _replace_dir
    tmp = Path(tempfile.mkdtemp(prefix=".checkpoint.tmp", dir=path.parent))
    names = {id(p): n for n, p in model.named_parameters()}
    tensors = {f"model.{n}": p.detach().contiguous().cpu() for n, p in model.named_parameters()}
    for p, st in opt.state.items():
        for k in ("exp_avg", "exp_avg_sq", "step"):
            tensors[f"opt.{k}.{names[id(p)]}"] = st[k].detach().reshape(-1 if k == "step" else st[k].shape).cpu()
    tensors["rng.torch"] = torch.get_rng_state()
    save_file(tensors, tmp / "state.safetensors")
    (tmp / "meta.json").write_text(json.dumps({"step": step}))
    _replace_dir(tmp, path)


def load_checkpoint(path: Path, model, opt):
    from safetensors.torch import load_file
    try:
        t = load_file(path / "state.safetensors")
        step = json.loads((path / "meta.json").read_text())["step"]
    except Exception as e:
        raise UpftError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e})") from None
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(t[f"model.{n}"])
        for n, p in model.named_parameters():
            if f"opt.exp_avg.{n}" in t:
                opt.state[p] = {k: t[f"opt.{k}.{n}"].to(p.device).reshape(() if k == "step" else p.shape)
                                for k in ("exp_avg", "exp_avg_sq", "step")}
    torch.set_rng_state(t["rng.torch"])
    return step


# ----------------------------------------------------------------------------- UPFT, end to end

# Defaults that depend on the model: the embedded toy world, or a real checkpoint (PAPER.md §4: the
# paper's LR is 1e-6 for most runs, 2 epochs on PRM-12K, the official code's global batch is 64).
# Toy: 1e-5 keeps the paper's ratio of fine-tuning LR to pretraining peak LR (~1/300; the toy model
# was pretrained at 4e-3); a 10x larger LR (1e-4) makes UPFT teach the toy model to stop early.
PROFILES = {
    "toy": dict(lr=1e-5, epochs=2, batch_size=16, micro_batch_size=16, max_len=512, max_new_tokens=256,
                eval_max_new_tokens=256, limit=1000, eval_limit=500, save_every=20, sample_batch_size=256,
                eval_batch_size=128),
    "real": dict(lr=1e-6, epochs=1, batch_size=64, micro_batch_size=4, max_len=4096, max_new_tokens=4096,
                 eval_max_new_tokens=4096, limit=None, eval_limit=None, save_every=50, sample_batch_size=64,
                 eval_batch_size=64),
}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="Unsupervised Prefix Fine-Tuning (and the SFT / RFT baselines).")
    a = ap.add_argument
    a("--model", help="HF checkpoint directory or hub id (default: the embedded toy world, built on first use)")
    a("--data", help="training questions, JSONL with 'question' or 'problem' (answers only needed by rft)")
    a("--eval-data", help="held-out JSONL with answers for base/tuned greedy accuracy (toy: its test split)")
    a("--method", default="upft", choices=["upft", "sft", "rft"])
    a("--prefix-len", type=int, default=8, help="L: prefix tokens kept per sample (paper: 8 Llama, 32 Qwen-Math)")
    a("--structure-ratio", type=float, default=0.1, help="p: fraction of questions trained on a full trace")
    a("--num-samples", type=int, help="prefixes per question for voting (upft, default 1 = the paper), "
                                      "or full samples per question (rft, default 16)")
    a("--temperature", type=float, default=0.6, help="sampling temperature (official code: 0.6)")
    a("--top-p", type=float, help="default: the model's generation_config.json, else 1.0")
    a("--top-k", type=int, help="default: the model's generation_config.json, else 0 (off)")
    a("--max-new-tokens", type=int, help="budget of a full self-generated trace")
    a("--max-len", type=int, help="longest training sequence; longer ones are cut (no forced EOS)")
    a("--lr", type=float)
    a("--epochs", type=int)
    a("--batch-size", type=int, help="examples per optimizer step")
    a("--micro-batch-size", type=int, help="examples per forward/backward (gradient accumulation)")
    a("--loss-norm", default="token", choices=["token", "sample"],
      help="token: sum CE / supervised tokens of the step (default); sample: official per-sample mean")
    a("--grad-ckpt", action="store_true", help="gradient checkpointing (less memory, slower)")
    a("--limit", type=int, help="use the first K training questions")
    a("--eval-limit", type=int, help="use the first K eval questions")
    a("--eval-max-new-tokens", type=int)
    a("--eval-batch-size", type=int, help="sequences decoded together while evaluating")
    a("--sample-batch-size", type=int, help="sequences decoded together while sampling")
    a("--seed", type=int, default=0)
    a("--out", help="run folder (default runs/<time>-<method>-L<L>-s<seed>); must not exist unless --resume")
    a("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    a("--save-every", type=int, help="optimizer steps between resumable checkpoints")
    a("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a("--dtype", choices=["float32", "bfloat16"], help="weights dtype (default fp32; bf16 autocast on CUDA)")
    a("--no-eval", action="store_true", help="skip base/tuned accuracy")
    args = ap.parse_args(argv)
    # validate everything cheap before touching any file (a bad flag writes nothing)
    if args.prefix_len < 1:
        raise UpftError(f"--prefix-len must be a positive number of tokens, got {args.prefix_len}")
    if not 0.0 <= args.structure_ratio <= 1.0:
        raise UpftError(f"--structure-ratio must be in [0, 1], got {args.structure_ratio}")
    if args.num_samples is not None and args.num_samples < 1:
        raise UpftError(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.temperature < 0:
        raise UpftError(f"--temperature must be >= 0, got {args.temperature}")
    profile = PROFILES["real" if args.model else "toy"]
    for k, v in profile.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.num_samples is None:
        args.num_samples = 16 if args.method == "rft" else 1
    for k in ("lr", "epochs", "batch_size", "micro_batch_size", "max_len", "max_new_tokens", "eval_batch_size",
              "sample_batch_size", "eval_max_new_tokens"):
        if getattr(args, k) <= 0:
            raise UpftError(f"--{k.replace('_', '-')} must be positive, got {getattr(args, k)}")
    if args.model and not args.data:
        raise UpftError("--data is required with --model (JSONL of training questions)")
    if args.out is None:
        args.out = f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{args.method}-L{args.prefix_len}-s{args.seed}"
    if Path(args.out).exists() and not args.resume:
        raise UpftError(f"--out {args.out} already exists (use --resume to continue it, or another --out)")
    if args.resume and not Path(args.out).is_dir():
        raise UpftError(f"--resume: {args.out} is not a run folder")
    return args


def load_questions(path, limit=None):
    """Training questions from JSONL ('question' or 'problem'); the answer, when present, is kept for rft."""
    from eval import load_eval_rows
    return load_eval_rows(path, limit, require_answer=False)


def run(args, log=print):
    import eval as evaluation
    import upft
    from data import Tokenizer
    from model import Transformer

    t0 = time.time()
    torch.manual_seed(args.seed)
    # 1. model, tokenizer, data (everything that can fail on bad input happens before --out is created)
    if args.model:
        model_dir = args.model
        rows = load_questions(args.data, args.limit)
        eval_rows = evaluation.load_eval_rows(args.eval_data, args.eval_limit) if args.eval_data else []
    else:
        import toy
        world = toy.build_toy_world(log=log)
        model_dir = world["model_dir"]
        rows = load_questions(args.data, args.limit) if args.data else \
            [{"question": r["question"], "gold": r["answer"]} for r in world["train"][:args.limit]]
        eval_rows = evaluation.load_eval_rows(args.eval_data, args.eval_limit) if args.eval_data else \
            [{"question": r["question"], "gold": r["answer"], "dataset": None} for r in world["test"][:args.eval_limit]]
    dtype = getattr(torch, args.dtype or "float32")
    model = Transformer.from_pretrained(model_dir, device=args.device, dtype=dtype)
    tok = Tokenizer.from_pretrained(model.source_dir)
    gen_cfg = tok.generation_config
    top_p = args.top_p if args.top_p is not None else gen_cfg.get("top_p", 1.0)
    top_k = args.top_k if args.top_k is not None else gen_cfg.get("top_k", 0) or 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "args.json", {**vars(args), "model_dir": str(model_dir), "top_p_used": top_p,
                                   "top_k_used": top_k})

    def accuracy(tag):
        if args.no_eval or not eval_rows:
            return None
        path = out / f"eval_{tag}.json"
        if args.resume and path.exists():
            return json.loads(path.read_text())
        records, summary = evaluation.evaluate(model, tok, eval_rows, args.eval_max_new_tokens,
                                               batch_size=args.eval_batch_size)
        write_jsonl(out / f"eval_{tag}.jsonl", records)
        write_json(path, summary)
        log(f"{tag} greedy accuracy: {summary['accuracy']:.1%} on {len(eval_rows)} held-out questions")
        return summary

    base = accuracy("base")

    # 2. self-generated data (reused on --resume: the sampling is not repeated)
    ex_path = out / "train_examples.jsonl"
    if args.resume and ex_path.exists():
        examples = read_jsonl(ex_path)
        acct = json.loads((out / "accounting.json").read_text())
        log(f"resume: reusing {len(examples)} training examples from {ex_path}")
    else:
        t_s = time.time()
        rollouts, acct = upft.sample_rollouts(
            model, tok, rows, method=args.method, prefix_len=args.prefix_len,
            structure_ratio=args.structure_ratio, num_samples=args.num_samples,
            max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=top_p, top_k=top_k,
            seed=args.seed, batch_size=args.sample_batch_size,
            grade=lambda text, gold: evaluation.is_equiv(evaluation.extract_answer(text), gold))
        examples, dropped = upft.build_examples(tok, rollouts, args.prefix_len, args.max_len)
        acct.update(questions_used=len(examples), dropped_over_max_len=dropped,
                    prefix_examples=sum(e["kind"] == "prefix" for e in examples),
                    full_examples=sum(e["kind"] == "full" for e in examples),
                    tokens_supervised=upft.supervised_tokens(examples), sampling_seconds=time.time() - t_s)
        if args.num_samples > 1 and args.method == "upft":
            agree = [r["agreement"] for r in rollouts if r["kind"] == "prefix"]
            acct["mean_prefix_agreement"] = sum(agree) / max(len(agree), 1)
        write_jsonl(out / "rollouts.jsonl", rollouts)
        write_json(out / "accounting.json", acct)
        write_jsonl(ex_path, examples)  # last: its presence marks the sampling phase as complete
    if not examples:
        raise UpftError("no training examples (every question was dropped)")

    # 3. train
    tc = TrainConfig(lr=args.lr, epochs=args.epochs, batch_size=args.batch_size,
                     micro_batch_size=args.micro_batch_size, loss_norm=args.loss_norm, seed=args.seed,
                     save_every=args.save_every, grad_ckpt=args.grad_ckpt)
    t_t = time.time()
    fit(model, examples, tc, pad_id=tok.pad_id, out=out, resume=args.resume, desc=args.method, log=log)
    acct["training_seconds"] = time.time() - t_t
    model.save_pretrained(out / "model")
    shutil.rmtree(out / "checkpoint", ignore_errors=True)  # the final model supersedes it

    # 4. tuned accuracy, accounting
    tuned = accuracy("tuned")
    results = {"method": args.method, "prefix_len": args.prefix_len, "structure_ratio": args.structure_ratio,
               "num_samples": args.num_samples, "seed": args.seed, "base": base, "tuned": tuned,
               "accounting": acct, "wall_seconds": time.time() - t0}
    write_json(out / "results.json", results)
    log(report(results, out))
    return results


def report(r, out):
    a = r["accounting"]

    def acc(s):
        return "-" if not s else f"{s['accuracy']:.1%} [{s['accuracy_ci95'][0]:.1%}, {s['accuracy_ci95'][1]:.1%}]"
    lines = [f"\n== {r['method']} (L={r['prefix_len']}, p={r['structure_ratio']}, N={r['num_samples']}, "
             f"seed={r['seed']}) -> {out}",
             f"base  accuracy: {acc(r['base'])}",
             f"tuned accuracy: {acc(r['tuned'])}",
             f"questions: {a['questions']} sampled, {a['questions_used']} trained on "
             f"({a['prefix_examples']} prefix + {a['full_examples']} full)",
             f"tokens sampled: {a['tokens_sampled']:,}   tokens supervised: {a['tokens_supervised']:,}",
             f"wall time: {r['wall_seconds']:.0f}s"]
    return "\n".join(lines)


def main(argv=None):
    try:
        args = parse_args(argv)
        run(args)
    except UpftError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted (rerun with --resume to continue)", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
