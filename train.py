"""UPFT end to end, and the one masked cross-entropy loop that every training in upft goes through.

    python train.py --prefix-len 8                      # the embedded toy world (shipped in assets/toy)
    python train.py --model DIR_OR_ID --data train.jsonl --eval-data test.jsonl --prefix-len 8

Steps (docs/method.md §3): check every input; load the model; greedy base accuracy on the eval set;
sample ONE answer per question from the model itself (upft.py: prefix-only decoding for D_p, full
traces for the fraction p); build the training examples; train; save in HF layout; tuned accuracy;
token accounting.

The loss (docs/method.md §4): the sum of token cross-entropy over every supervised token of an
optimizer step, divided by that step's supervised-token count, so gradient accumulation with unequal
micro-batches equals one big batch, and every token weighs the same (Eq. 8 read literally).
`--loss-norm sample` reproduces the official code's weighting instead (each sample's token mean,
averaged over the step's samples). AdamW (0.9, 0.95), weight decay 0, clip 1.0, constant LR after a
3% linear warmup. fp32 on CPU; bf16 autocast on CUDA.

The run folder is built as `<out>.partial` and renamed to `<out>` when the run is complete, so a
folder without that suffix is always a finished run. A failed run deletes its `.partial` folder unless
it holds something worth resuming (its samples or a training checkpoint); then `--resume` continues it.
Outputs: args.json, rollouts.jsonl, train_examples.jsonl (the exact input_ids/labels trained on),
accounting.json, metrics.jsonl, eval_{base,tuned}.json[l], results.json, model/ (HF layout).
Left out: distributed training, torch.compile, packing.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

import toy
import upft
from data import (IGNORE, Tokenizer, UpftError, atomic_dir, chat_prompt, load_rows, read_jsonl, resolve,
                  write_json, write_jsonl)
from eval import evaluate
from model import Config, Transformer

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


def masked_entropy_sum(logits, labels):
    """EM-FT's loss (entropy minimisation, arXiv 2505.15134; docs/method.md §7): the entropy of the
    model's next-token distribution, summed over the positions that predict a supervised token, and
    their count. Same mask and shift as masked_ce_sum (position t predicts labels[t + 1]); the labels
    are only a mask: no target token enters the loss."""
    logp = logits[:, :-1].float().log_softmax(-1)
    mask = labels[:, 1:] != IGNORE
    entropy = -(logp.exp() * logp).sum(-1)  # (B, T-1): H(p(. | x, y_<t))
    return entropy[mask].sum(), int(mask.sum())


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


def accumulate_grads(model, examples, micro_batch_size, pad_id, loss_norm="token", autocast=None,
                     objective="ce"):
    """Backward over one optimizer step's examples in micro-batches; the gradient is that of
    (sum of losses) / (step normaliser), however the step is split. Returns (mean loss, normaliser).
    objective "entropy" (EM-FT) sums token entropies instead of cross-entropies (token norm only)."""
    counts = [supervised_count(e, loss_norm) for e in examples]
    total = sum(counts)
    if total == 0:
        return float("nan"), 0  # nothing supervised in this step: no gradient, no NaN
    loss_fn = masked_ce_sum if loss_norm == "token" else per_sample_mean_sum
    if objective == "entropy":
        loss_fn = masked_entropy_sum
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
    lr: float
    epochs: int
    batch_size: int               # examples per optimizer step
    micro_batch_size: int         # examples per forward/backward (gradient accumulation = batch / micro)
    warmup_ratio: float = 0.03    # the paper's warmup (constant_with_warmup)
    max_grad_norm: float = 1.0    # the official code's clipping
    loss_norm: str = "token"      # "token" (the project default) or "sample" (the official code)
    seed: int = 0
    save_every: int = 0           # optimizer steps between resumable checkpoints (0 = never)
    grad_ckpt: bool = False
    schedule: str = "constant"    # "constant" after warmup (the paper); "cosine" (to 10%) only for toy pretraining
    max_steps: int | None = None  # stop after this many steps (the schedule still spans every epoch)
    objective: str = "ce"         # "ce" (every method) or "entropy" (EM-FT: no target, §7)
    eval_every: int = 0           # optimizer steps between held-out evaluations during training (0 = never)


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


def fit(model, examples, tc: TrainConfig, pad_id=0, out=None, resume=False, desc="train", log=print,
        evaluate=None):
    """Train `model` in place on examples ({"input_ids", "labels"}); returns the per-step metrics.

    With `out`, metrics go to out/metrics.jsonl and, every tc.save_every steps, a resumable checkpoint
    (weights, AdamW state, step, RNG) to out/checkpoint; `resume` continues from it exactly.
    With `evaluate` (a function of the model -> dict) and tc.eval_every = K, it is called before the
    first step, every K steps and after the last, in eval mode; its records ({"step", **result}) go to
    the metrics too. It must not touch the training's random streams (greedy generate does not).
    """
    device = next(model.parameters()).device
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=(0.9, 0.95), weight_decay=0.0,
                            foreach=device.type == "cuda")
    steps = step_batches(len(examples), tc)
    start, stop = 0, min(len(steps), tc.max_steps or len(steps))
    metrics_path = Path(out) / "metrics.jsonl" if out else None
    if resume and out and (Path(out) / "checkpoint").is_dir():
        start = load_checkpoint(Path(out) / "checkpoint", model, opt)
        log(f"resumed from {Path(out) / 'checkpoint'} at step {start}/{len(steps)}")
    elif metrics_path and metrics_path.exists():
        metrics_path.unlink()

    def log_metrics(rec):
        if metrics_path:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(rec) + "\n")

    def eval_now(step):  # accuracy during training (the rise-then-fall of self-training, §7)
        model.eval()
        model.gradient_checkpointing = False
        rec = {"step": step, **evaluate(model)}
        log(f"step {step}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in rec.items() if k != "step"))
        log_metrics(rec)
        model.train()
        model.gradient_checkpointing = tc.grad_ckpt

    evaluating = evaluate is not None and tc.eval_every > 0
    if evaluating and start == 0:
        eval_now(0)
    model.train()
    model.gradient_checkpointing = tc.grad_ckpt
    history = []
    bar = tqdm(range(start, stop), desc=desc, unit="step", initial=start, total=stop, disable=None)
    for step in bar:
        batch = [examples[i] for i in steps[step]]
        lr = lr_at(step, len(steps), tc)
        for g in opt.param_groups:
            g["lr"] = lr
        loss, n = accumulate_grads(model, batch, tc.micro_batch_size, pad_id, tc.loss_norm, autocast,
                                   objective=tc.objective)
        gnorm = 0.0
        if n > 0:
            gnorm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), tc.max_grad_norm))
            opt.step()
        opt.zero_grad(set_to_none=True)
        rec = {"step": step + 1, "loss": loss, "lr": lr, "grad_norm": gnorm,
               "supervised_tokens" if tc.loss_norm == "token" else "samples": n}
        history.append(rec)
        bar.set_postfix(loss=f"{loss:.4f}")
        log_metrics(rec)
        if evaluating and ((step + 1) % tc.eval_every == 0 or step + 1 == stop):
            eval_now(step + 1)
        if out and tc.save_every and (step + 1) % tc.save_every == 0 and step + 1 < stop:
            save_checkpoint(Path(out) / "checkpoint", model, opt, step + 1)
    bar.close()
    model.eval()
    model.gradient_checkpointing = False
    return history


# ----------------------------------------------------------------------------- resumable checkpoints

def save_checkpoint(path: Path, model, opt, step):
    """Weights + AdamW moments as safetensors, step and RNG as JSON (no pickle); folder swapped atomically."""
    names = {id(p): n for n, p in model.named_parameters()}
    tensors = {f"model.{n}": p.detach().contiguous().cpu() for n, p in model.named_parameters()}
    for p, st in opt.state.items():
        for k in ("exp_avg", "exp_avg_sq", "step"):
            tensors[f"opt.{k}.{names[id(p)]}"] = st[k].detach().reshape(-1 if k == "step" else st[k].shape).cpu()
    tensors["rng.torch"] = torch.get_rng_state()
    with atomic_dir(path) as tmp:
        save_file(tensors, tmp / "state.safetensors")
        (tmp / "meta.json").write_text(json.dumps({"step": step}))


def load_checkpoint(path: Path, model, opt):
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


# ----------------------------------------------------------------------------- the command line

# Every default that depends on the model, in one place: (the toy world, a real checkpoint via --model).
# Real: the paper's LR is 1e-6 for most runs, 1 epoch on the large sets, the official code's global
# batch is 64 and its max length 4096 (docs/method.md §4). Toy: 1e-5 keeps the paper's ratio of
# fine-tuning LR to pretraining peak LR (~1/300; the toy model was pretrained at 4e-3); a 10x larger LR
# (1e-4) makes UPFT teach the toy model to stop early.
DEFAULTS = {               # toy,   real
    "lr":                  (1e-5, 1e-6),
    "epochs":              (2, 1),
    "batch_size":          (16, 64),
    "micro_batch_size":    (16, 4),
    "max_len":             (512, 4096),
    "max_new_tokens":      (256, 4096),
    "eval_max_new_tokens": (256, 4096),
    "limit":               (1000, None),
    "eval_limit":          (500, None),
    "save_every":          (20, 50),
    "sample_batch_size":   (256, 64),
    "eval_batch_size":     (128, 64),
    "eval_subset":         (100, 100),
}
METHODS = ("upft", "sft", "rft", "em", "vote")
# The switches of the controls that take UPFT apart (docs/method.md §7.1; --method upft only). Each builds
# its examples from the same split and samples as plain UPFT with the same seed.
ABLATIONS = ("no_instruction", "no_eos", "full_only", "random_targets")


def build_parser():
    ap = argparse.ArgumentParser(description="Unsupervised Prefix Fine-Tuning (and the SFT / RFT / EM-FT / "
                                             "majority-vote baselines, and the controls that take UPFT apart).")

    def a(flag, help, **kw):  # the default goes into the help text, wherever it comes from
        name = flag[2:].replace("-", "_")
        if name in DEFAULTS:
            toy_v, real_v = DEFAULTS[name]
            help += f" (default: {toy_v if toy_v is not None else 'all'} on the toy world, " \
                    f"{real_v if real_v is not None else 'all'} with --model)"
        elif kw.get("default") is not None and kw.get("action") != "store_true":
            help += " (default: %(default)s)"
        ap.add_argument(flag, help=help, **kw)

    a("--model", "HF checkpoint directory or hub id (default: the embedded toy world in assets/toy)")
    a("--data", "training questions, JSONL with 'question' or 'problem' (answers only needed by rft)")
    a("--eval-data", "held-out JSONL with answers for base/tuned greedy accuracy (toy: its test split)")
    a("--method", "what to train on: UPFT, or a baseline (sft: one self-generated trace; rft: the first of N "
      "that matches the label; em: sft's traces, entropy-minimisation loss; vote: the first of N that "
      "matches the majority answer, no labels)", default="upft", choices=METHODS)
    a("--prefix-len", "L: prefix tokens kept per sample (paper: 8 Llama, 32 Qwen-Math, 128 R1)", type=int,
      default=8)
    a("--structure-ratio", "p: fraction of questions trained on a full trace", type=float, default=0.1)
    a("--num-samples", "prefixes per question for voting (upft; 1 = the paper), or full samples per "
      "question (rft, vote) (default: 1 for upft, 16 for rft and vote)", type=int)
    a("--temperature", "sampling temperature (the official code's value)", type=float, default=0.6)
    a("--top-p", "sampling top-p (default: the model's generation_config.json, else 1.0)", type=float)
    a("--top-k", "sampling top-k, 0 = off (default: the model's generation_config.json, else 0)", type=int)
    a("--max-new-tokens", "budget of a full self-generated trace", type=int)
    a("--max-len", "longest training sequence; longer ones are cut (no forced EOS)", type=int)
    a("--lr", "peak learning rate (constant after a 3%% warmup)", type=float)
    a("--epochs", "passes over the training examples", type=int)
    a("--batch-size", "examples per optimizer step", type=int)
    a("--micro-batch-size", "examples per forward/backward (gradient accumulation)", type=int)
    a("--loss-norm", "token: sum CE / supervised tokens of the step; sample: the official per-sample mean",
      default="token", choices=["token", "sample"])
    a("--grad-ckpt", "gradient checkpointing (less memory, slower)", action="store_true")
    a("--no-instruction", "control (upft): prefix examples without the prefix instruction", action="store_true")
    a("--no-eos", "control (upft): no EOS after the prefix (L supervised tokens, not L + 1)", action="store_true")
    a("--full-only", "control (upft): train only on the full traces of the fraction p (prefix questions "
      "are neither sampled nor trained)", action="store_true")
    a("--random-targets", "control (upft): each prefix example gets the sampled prefix of another question "
      "(a seeded derangement)", action="store_true")
    a("--eval-every", "greedy accuracy on the first --eval-subset held-out questions every K optimizer "
      "steps (and before the first, after the last), into metrics.jsonl; 0 = never", type=int, default=0)
    a("--eval-subset", "held-out questions evaluated during training (--eval-every)", type=int)
    a("--limit", "use the first K training questions", type=int)
    a("--eval-limit", "use the first K eval questions", type=int)
    a("--eval-max-new-tokens", "budget of a greedy evaluation answer", type=int)
    a("--eval-batch-size", "sequences decoded together while evaluating", type=int)
    a("--sample-batch-size", "sequences decoded together while sampling", type=int)
    a("--seed", "seed of the split, the sampling and the data order", type=int, default=0)
    a("--out", "run folder (default: runs/<time>-<method>-L<L>-s<seed>); must not exist unless --resume")
    a("--resume", "continue the interrupted run <out>.partial from its samples and last checkpoint",
      action="store_true")
    a("--save-every", "optimizer steps between resumable checkpoints, 0 = never", type=int)
    a("--device", "cpu or cuda", default="cuda" if torch.cuda.is_available() else "cpu")
    a("--dtype", "weights dtype (fp32 master weights with bf16 autocast on CUDA is the default)",
      choices=["float32", "bfloat16"], default="float32")
    a("--no-eval", "skip base/tuned accuracy", action="store_true")
    a("--base-from", "a finished run on the same model and held-out questions whose base accuracy is "
      "reused instead of evaluated again (greedy: the same numbers; the training does not depend on it)")
    return ap


def parse_args(argv=None):
    """Parse and check every flag (ranges, combinations, the run folder); nothing is read or written."""
    args = build_parser().parse_args(argv)
    for k, (toy_v, real_v) in DEFAULTS.items():
        if getattr(args, k) is None:
            setattr(args, k, real_v if args.model else toy_v)
    if args.num_samples is None:
        args.num_samples = 16 if args.method in ("rft", "vote") else 1

    def need(ok, msg):
        if not ok:
            raise UpftError(msg)
    need(args.prefix_len >= 1, f"--prefix-len must be a positive number of tokens, got {args.prefix_len}")
    need(0.0 <= args.structure_ratio <= 1.0, f"--structure-ratio must be in [0, 1], got {args.structure_ratio}")
    need(args.num_samples >= 1, f"--num-samples must be >= 1, got {args.num_samples}")
    need(args.temperature >= 0, f"--temperature must be >= 0, got {args.temperature}")
    need(args.top_p is None or 0 < args.top_p <= 1, f"--top-p must be in (0, 1], got {args.top_p}")
    need(args.top_k is None or args.top_k >= 0, f"--top-k must be >= 0 (0 = off), got {args.top_k}")
    for k in ("lr", "epochs", "batch_size", "micro_batch_size", "max_len", "max_new_tokens", "eval_batch_size",
              "sample_batch_size", "eval_max_new_tokens", "limit", "eval_limit"):
        v = getattr(args, k)
        need(v is None or v > 0, f"--{k.replace('_', '-')} must be positive, got {v}")
    need(args.save_every >= 0, f"--save-every must be >= 0, got {args.save_every}")
    need(args.method != "vote" or args.num_samples >= 2,
         f"--method vote needs --num-samples >= 2 (a vote of one sample is no vote), got {args.num_samples}")
    need(args.method != "em" or args.loss_norm == "token", "--method em supports --loss-norm token only")
    on = [f"--{k.replace('_', '-')}" for k in ABLATIONS if getattr(args, k)]
    need(not on or args.method == "upft", f"{', '.join(on)}: a control of UPFT, only with --method upft")
    need(not args.full_only or len(on) == 1, f"--full-only drops the prefix examples: {', '.join(on[1:])} "
         "would change nothing")
    need(not args.full_only or args.structure_ratio > 0, "--full-only with --structure-ratio 0 leaves no example")
    need(not args.random_targets or args.structure_ratio < 1,
         "--random-targets with --structure-ratio 1 leaves no prefix example to pair")
    need(args.eval_every >= 0, f"--eval-every must be >= 0, got {args.eval_every}")
    need(args.eval_subset > 0, f"--eval-subset must be positive, got {args.eval_subset}")
    need(not (args.eval_every and args.no_eval), "--eval-every needs held-out evaluation (drop --no-eval)")
    need(not (args.eval_every and args.model and not args.eval_data),
         "--eval-every needs --eval-data (held-out questions with answers)")
    need(not args.model or args.data, "--data is required with --model (JSONL of training questions)")
    if args.base_from:
        check_base_from(args, need)
    if args.out is None:
        args.out = f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{args.method}-L{args.prefix_len}-s{args.seed}"
    out, partial = Path(args.out), partial_dir(args.out)
    need(not out.exists(), f"--out {out} already exists" + (" (a finished run)" if args.resume else
                                                            " (choose another --out)"))
    need(args.resume or not partial.exists(),
         f"{partial} holds an interrupted run: add --resume to continue it, or delete it")
    need(not args.resume or partial.is_dir(), f"--resume: no interrupted run at {partial}")
    return args


# What the base evaluation depends on: a reused one must agree on all of them.
BASE_EVAL_KEYS = ("model", "eval_data", "eval_limit", "eval_max_new_tokens", "eval_batch_size", "device", "dtype")


def check_base_from(args, need):
    src = Path(args.base_from)
    need((src / "eval_base.json").is_file() and (src / "args.json").is_file(),
         f"--base-from {src}: not a finished run with a base evaluation (eval_base.json, args.json)")
    prev = json.loads((src / "args.json").read_text())
    diff = [k for k in BASE_EVAL_KEYS if prev.get(k) != getattr(args, k)]
    need(not diff, f"--base-from {src}: its base evaluation used other settings ({', '.join(diff)})")
    need(not args.no_eval, "--base-from with --no-eval: there is no evaluation to reuse")


def partial_dir(out) -> Path:
    """Where a run lives until it is complete."""
    return Path(str(out).rstrip("/") + ".partial")


# ----------------------------------------------------------------------------- UPFT, end to end

def load_inputs(args):
    """Everything a run reads, checked before any model is built, loaded or sampled from: the training
    and eval questions, the checkpoint's config.json, tokenizer and chat template (rendered for every
    question). Returns (model_dir, tokenizer, rows, eval_rows)."""
    method_needs_gold = args.method == "rft"
    rows = load_rows(args.data, args.limit, require_answer=method_needs_gold) if args.data else None
    eval_rows = load_rows(args.eval_data, args.eval_limit) if args.eval_data and not args.no_eval else None
    if args.model:
        model_dir = resolve(args.model)
    else:
        world = toy.load_world()
        model_dir = world["model_dir"]
        rows = rows or [{"question": r["question"], "gold": r["answer"]} for r in world["train"][:args.limit]]
        if eval_rows is None and not args.no_eval:
            eval_rows = [{"question": r["question"], "gold": r["answer"], "dataset": None}
                         for r in world["test"][:args.eval_limit]]
    Config.from_json(Path(model_dir) / "config.json")
    tok = Tokenizer.from_pretrained(model_dir)
    # Render every prompt now: a broken or unsafe chat template fails here, and so does a data set whose
    # every question is longer than --max-len (nothing would be left to train on).
    longest_fit = [len(chat_prompt(tok, r["question"])) < args.max_len for r in rows]
    if not any(longest_fit):
        raise UpftError(f"no training question fits --max-len {args.max_len} (every prompt is longer)")
    for r in eval_rows or []:
        chat_prompt(tok, r["question"])
    return model_dir, tok, rows, eval_rows or []


def run(args, log=print):
    t0 = time.time()
    model_dir, tok, rows, eval_rows = load_inputs(args)  # bad input fails here: nothing written yet
    out = partial_dir(args.out)
    resumable = lambda: (out / "train_examples.jsonl").exists() or (out / "checkpoint").is_dir()  # noqa: E731
    try:
        out.mkdir(parents=True, exist_ok=args.resume)
        results = _run(args, model_dir, tok, rows, eval_rows, out, t0, log)
    except BaseException as e:
        if out.is_dir() and not resumable():
            shutil.rmtree(out, ignore_errors=True)  # nothing worth keeping: leave no trace
        elif out.is_dir() and not isinstance(e, UpftError):
            log(f"the interrupted run is kept in {out}: rerun with --resume to continue it")
        raise
    out.rename(args.out)  # complete: the folder takes its final name
    log(report(results, args.out))
    return results


def _run(args, model_dir, tok, rows, eval_rows, out, t0, log):
    torch.manual_seed(args.seed)
    model = Transformer.from_pretrained(model_dir, device=args.device, dtype=getattr(torch, args.dtype))
    gen_cfg = tok.generation_config
    top_p = args.top_p if args.top_p is not None else gen_cfg.get("top_p", 1.0)
    top_k = args.top_k if args.top_k is not None else gen_cfg.get("top_k", 0) or 0
    write_json(out / "args.json", {**vars(args), "model_dir": str(model_dir), "top_p_used": top_p,
                                   "top_k_used": top_k})

    def accuracy(tag):
        if not eval_rows:
            return None
        path = out / f"eval_{tag}.json"
        if args.resume and path.exists():
            return json.loads(path.read_text())
        records, summary = evaluate(model, tok, eval_rows, args.eval_max_new_tokens,
                                    batch_size=args.eval_batch_size)
        write_jsonl(out / f"eval_{tag}.jsonl", records)
        write_json(path, summary)
        log(f"{tag} greedy accuracy: {summary['accuracy']:.1%} on {len(eval_rows)} held-out questions")
        return summary

    if args.base_from and eval_rows:  # the base model's greedy accuracy, measured once by an earlier run
        for name in ("eval_base.json", "eval_base.jsonl"):
            shutil.copyfile(Path(args.base_from) / name, out / name)
    base = accuracy("base") if not args.base_from else json.loads((out / "eval_base.json").read_text())

    # self-generated data (reused on --resume: the sampling is not repeated)
    ex_path = out / "train_examples.jsonl"
    if args.resume and ex_path.exists():
        examples = read_jsonl(ex_path)
        acct = json.loads((out / "accounting.json").read_text())
        log(f"resume: reusing {len(examples)} training examples from {ex_path}")
    else:
        t_s = time.time()
        rollouts, acct = sample(model, tok, rows, args, temperature=args.temperature, top_p=top_p, top_k=top_k)
        questions = [r["question"] for r in rows]
        if args.full_only or args.random_targets:  # the controls (§7.1), on UPFT's own samples
            rollouts = upft.ablate_rollouts(rollouts, args.full_only, args.random_targets, seed=args.seed)
        examples, dropped = upft.build_examples(
            tok, questions, rollouts, args.prefix_len, args.max_len, eos=not args.no_eos,
            instruction="" if args.no_instruction else upft.PREFIX_INSTRUCTION)
        acct.update(questions_used=len(examples), dropped_over_max_len=dropped,
                    prefix_examples=sum(e["kind"] == "prefix" for e in examples),
                    full_examples=sum(e["kind"] == "full" for e in examples),
                    tokens_supervised=upft.supervised_tokens(examples), sampling_seconds=time.time() - t_s)
        if not examples:
            raise UpftError("no training examples (every question was dropped)")
        for r in rollouts:
            r.update(question=questions[r["index"]], response=tok.decode(r["response_ids"]))
        write_jsonl(out / "rollouts.jsonl", rollouts)
        write_json(out / "accounting.json", acct)
        write_jsonl(ex_path, examples)  # last: its presence marks the sampling phase as complete

    tc = TrainConfig(lr=args.lr, epochs=args.epochs, batch_size=args.batch_size,
                     micro_batch_size=args.micro_batch_size, loss_norm=args.loss_norm, seed=args.seed,
                     save_every=args.save_every, grad_ckpt=args.grad_ckpt,
                     objective="entropy" if args.method == "em" else "ce", eval_every=args.eval_every)
    subset, eval_seconds = eval_rows[:args.eval_subset], [0.0]

    def during(m):  # greedy accuracy on a fixed held-out subset; its own inference-mode generate, no RNG
        t_e = time.time()
        _, s = evaluate(m, tok, subset, args.eval_max_new_tokens, batch_size=args.eval_batch_size,
                        progress=False)
        eval_seconds[0] += time.time() - t_e
        return {"eval_accuracy": s["accuracy"], "eval_questions": s["questions"]}
    t_t = time.time()
    fit(model, examples, tc, pad_id=tok.pad_id, out=out, resume=args.resume, desc=args.method, log=log,
        evaluate=during if subset else None)
    acct["training_seconds"] = time.time() - t_t - eval_seconds[0]  # without the evaluations during it
    acct["eval_during_training_seconds"] = eval_seconds[0]
    model.save_pretrained(out / "model")
    shutil.rmtree(out / "checkpoint", ignore_errors=True)  # the final model supersedes it

    tuned = accuracy("tuned")
    results = {"method": args.method, "prefix_len": args.prefix_len, "structure_ratio": args.structure_ratio,
               "num_samples": args.num_samples, "seed": args.seed, "loss_norm": args.loss_norm,
               "controls": [k for k in ABLATIONS if getattr(args, k)], "base": base, "tuned": tuned,
               "accounting": acct, "wall_seconds": time.time() - t0}
    write_json(out / "results.json", results)
    return results


def sample(model, tok, rows, args, **sampling):
    """The method's self-generated rollouts and its token accounting."""
    questions = [r["question"] for r in rows]
    common = dict(max_new_tokens=args.max_new_tokens, seed=args.seed, batch_size=args.sample_batch_size,
                  **sampling)
    acct = {"method": args.method, "questions": len(rows)}
    if args.method == "upft":
        rollouts, acct["tokens_sampled"] = upft.sample_upft(model, tok, questions, args.prefix_len,
                                                            args.structure_ratio, args.num_samples,
                                                            prefixes=not args.full_only, **common)
        if args.num_samples > 1:
            agree = [r["agreement"] for r in rollouts if r["kind"] == "prefix"]
            acct["mean_prefix_agreement"] = sum(agree) / max(len(agree), 1)
    elif args.method in ("sft", "em"):  # EM-FT trains on SFT's samples; only the loss differs
        rollouts, acct["tokens_sampled"] = upft.sample_sft(model, tok, questions, **common)
    elif args.method == "vote":  # no gold answer is passed: the majority answer is the pseudo-label
        rollouts, acct["tokens_sampled"], acct["questions_dropped_no_answer"] = upft.sample_vote(
            model, tok, questions, args.num_samples, **common)
        shares = [r["vote_share"] for r in rollouts]
        acct["mean_vote_share"] = sum(shares) / max(len(shares), 1)
    else:
        rollouts, acct["tokens_sampled"], acct["questions_dropped_no_correct_sample"] = upft.sample_rft(
            model, tok, questions, [r["gold"] for r in rows], args.num_samples, **common)
    return rollouts, acct


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
        run(parse_args(argv))
    except UpftError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
