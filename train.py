"""UPFT end to end on one process: python train.py --prefix-len 8 (the toy world in assets/toy), or
python train.py --model DIR --data train.jsonl --eval-data test.jsonl --prefix-len 8 (a real checkpoint).
Top to bottom: the hyperparameters; the loss (masked_ce_sum, micro_batch_loss, accumulate_grads): the sum of
token cross-entropy over an optimizer step's supervised tokens / their count (Eq. 8, docs/method.md §4), or
the official code's per-sample mean; the loop (lr_at, fit: AdamW, clip 1.0, constant LR after a 3% warmup);
UPFT's eight steps (`upft_steps`, §3); the command line. What real runs add (torchrun with FSDP2, the memory
plan, resumable run folders) lives in launch/, reached only through `launcher`.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts OpenMP: README, "A busy machine"

import torch
import torch.nn.functional as F

import upft
from data import (IGNORE, TOY_WORLD, Tokenizer, UpftError, atomic_dir, chat_prompt, load_rows, require, resolve,
                  sampling_filters, supervised_count, write_json, write_jsonl)
from eval import accuracy_line, evaluate
from model import MIN_TEMPERATURE, Config, Progress, Transformer, default_device

# ----------------------------------------------------------------------------- the run's hyperparameters
# Every default that is a choice: (the toy world's, a real checkpoint's (--model), what it is and where it comes
# from; § = docs/method.md). Each is a flag (--prefix-len, ...); the toy's keep a first run near a minute on 2 cores.
HYPERPARAMETERS = {
    "prefix_len":          (8, 8, "L, prefix tokens kept per sample (§3.2: 8 Llama-3.1-8B, 32 Qwen-Math, 128 R1)"),
    "structure_ratio":     (0.1, 0.1, "p, the fraction of questions trained on a whole trace (§3.1)"),
    "temperature":         (0.6, 0.6, "sampling temperature (the official code's)"),
    "lr":                  (1e-5, 1e-6, "peak learning rate (§4: 1e-6; toy: ~1/300 of its pretraining LR, as there)"),
    "epochs":              (2, 1, "passes over the training examples (§4: 1 on the large sets)"),
    "batch_size":          (16, 64, "examples per optimizer step (§4: the official code's global batch)"),
    "micro_batch_size":    (16, 4, "examples per forward/backward (memory only: accumulate_grads)"),
    "max_len":             (512, 4096, "longest training sequence, longer ones cut (§4: the official code's)"),
    "max_new_tokens":      (256, 4096, "budget of a full self-generated trace"),
    "eval_max_new_tokens": (256, 4096, "budget of an evaluated answer"),
    "limit":               (1000, None, "the first K training questions (None: all)"),
    "eval_limit":          (200, None, "the first K held-out questions (docs/results.md evaluates all 2,000)"),
    "eval_samples":        (2, 0, "K sampled answers per held-out question besides the greedy one (pass@K)"),
    "sample_batch_size":   (256, 64, "sequences decoded together while sampling (speed only)"),
    "eval_batch_size":     (512, 64, "sequences decoded together while evaluating (speed only)"),
}
WARMUP_RATIO, MAX_GRAD_NORM, ADAM_BETAS = 0.03, 1.0, (0.9, 0.95)  # §4: the paper's warmup, the official code's clip
LOSS_CHUNK = 1024  # --loss-chunk's default when a sequence may be longer (1024 rows x 152k vocab x fp32: 0.6 GB)
TOY_NOTE = ("toy world: one run, one seed (the intervals above cover the questions, not the seed); what each "
            "method does here over 3 seeds and 2,000 held-out questions: docs/results.md")
METHODS = ("upft", "sft", "rft", "em", "vote")
ABLATIONS = ("no_instruction", "no_eos", "full_only", "random_targets")  # the controls (§7.1; --method upft only)

# ----------------------------------------------------------------------------- the loss
def masked_ce_sum(h, labels, head=None, entropy=False):
    """(Sum of next-token cross-entropy over the supervised positions, their count): Eq. 8's log-likelihoods.
    h (B, T, C) with head(rows) -> logits, or h = the logits (B, T, V) themselves (head None); labels (B, T)
    aligned with input_ids, IGNORE where not trained. entropy (EM-FT, §7): the target is the model's own
    distribution, so each term is its entropy H(p) = CE(p, p)."""
    # >>> exercise: masked_ce_sum
    rows, targets = h[:, :-1], labels[:, 1:]                   # position t predicts labels[t + 1]: the shift
    keep = targets != IGNORE                                   # (B, T-1): the supervised positions
    logits = (rows[keep] if head is None else head(rows[keep])).float()  # (N, V): those rows only, in fp32
    loss = F.cross_entropy(logits, logits.softmax(-1) if entropy else targets[keep], reduction="sum")
    return loss, int(keep.sum())
    # <<< exercise: masked_ce_sum


def micro_batch_loss(model, ids, labels, per_sample=False, entropy=False, chunk=0):
    """The loss sum of one micro-batch: masked_ce_sum of the last hidden states, the head on the supervised rows
    only (~9 of ~150 positions of a prefix example); per_sample: each sample's token mean, summed."""
    h = model(ids, hidden=True)  # (B, T, C): the last layer's output, before the final norm and lm_head
    if not per_sample:
        return windowed_ce_sum(h, labels, model.head, entropy, chunk)[0]
    parts = [windowed_ce_sum(h[b:b + 1], labels[b:b + 1], model.head, entropy, chunk) for b in range(len(h))]
    return sum(loss / max(n, 1) for loss, n in parts)


def windowed_ce_sum(h, labels, head, entropy=False, chunk=0):
    """masked_ce_sum, at most `chunk` rows of logits at a time (windows recomputed in backward; 0: all at once)."""
    if not chunk:
        return masked_ce_sum(h, labels, head, entropy)
    width = max(1, chunk // len(h))  # positions per window
    parts = [torch.utils.checkpoint.checkpoint(masked_ce_sum, h[:, s:s + width + 1], labels[:, s:s + width + 1],
                                               head, entropy, use_reentrant=False)
             for s in range(0, max(1, h.shape[1] - 1), width)]
    return sum(loss for loss, _ in parts), sum(n for _, n in parts)


def collate(examples, pad_id):
    """Right-pad a micro-batch: (input_ids, labels) as (B, T) LongTensors, pads labelled IGNORE."""
    T = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), T), IGNORE, dtype=torch.long)
    for b, e in enumerate(examples):
        ids[b, :len(e["input_ids"])] = torch.tensor(e["input_ids"])
        labels[b, :len(e["labels"])] = torch.tensor(e["labels"])
    return ids, labels


def step_count(examples, loss_norm="token"):
    """A step's normaliser: its supervised tokens, or (the official weighting) its samples with any."""
    counts = [supervised_count(e["labels"]) for e in examples]
    return sum(counts) if loss_norm == "token" else sum(n > 0 for n in counts)


def accumulate_grads(model, examples, micro_batch_size, pad_id, normaliser=None, autocast=None, **loss):
    """Backward over one optimizer step's examples in micro-batches, adding to .grad the gradient of
    (sum of the step's losses) / normaliser (default: its supervised tokens), however the step is split.
    loss: micro_batch_loss's options. Returns (that mean loss, normaliser)."""
    # >>> exercise: accumulate_grads
    total = sum(supervised_count(e["labels"]) for e in examples) if normaliser is None else normaliser
    if total == 0:
        return float("nan"), 0  # nothing supervised in this step: no gradient, no NaN
    device = next(model.parameters()).device
    step_loss = 0.0
    for i in range(0, len(examples), micro_batch_size):
        ids, labels = collate(examples[i:i + micro_batch_size], pad_id)
        with autocast or contextlib.nullcontext():
            loss_sum = micro_batch_loss(model, ids.to(device), labels.to(device), **loss)
        (loss_sum / total).backward()
        step_loss += loss_sum.item()
    return step_loss / total, total
    # <<< exercise: accumulate_grads


# ----------------------------------------------------------------------------- the loop
@dataclass
class TrainConfig:
    lr: float
    epochs: int
    batch_size: int               # examples per optimizer step
    micro_batch_size: int         # examples per forward/backward (gradient accumulation = batch / micro)
    warmup_ratio: float = WARMUP_RATIO
    max_grad_norm: float = MAX_GRAD_NORM
    loss_norm: str = "token"      # "token" (the project default) or "sample" (the official code)
    seed: int = 0
    grad_ckpt: bool = False
    schedule: str = "constant"    # "constant" after warmup (the paper); "cosine" (to 10%) only for toy pretraining
    max_steps: int | None = None  # stop after this many steps (the schedule still spans every epoch)
    objective: str = "ce"         # "ce" (every method) or "entropy" (EM-FT: no target, §7)
    loss_chunk: int = 0           # rows of logits at a time in the loss (0: all at once; windowed_ce_sum)


def lr_at(step, total_steps, tc: TrainConfig):
    """The learning rate of 0-based `step`: linear warmup over the first tc.warmup_ratio of the steps, then
    constant (the paper's constant_with_warmup), or (toy pretraining) cosine to 10% of the peak."""
    # >>> exercise: lr_at
    warm = max(1, math.ceil(tc.warmup_ratio * total_steps))
    if step < warm or tc.schedule == "constant":
        return tc.lr * min(1.0, (step + 1) / warm)
    progress = (step - warm) / max(1, total_steps - warm)
    return tc.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
    # <<< exercise: lr_at


def step_batches(n, tc: TrainConfig):
    """Example indices of every optimizer step: a seeded shuffle per epoch, sliced into batches."""
    steps = []
    for epoch in range(tc.epochs):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(tc.seed * 1000 + epoch)).tolist()
        steps += [perm[i:i + tc.batch_size] for i in range(0, n, tc.batch_size)]
    return steps


class Hooks:
    """What fit does besides training: nothing (launch/'s FitExtras: checkpoints, resume, evaluations, torchrun)."""
    eval_seconds = 0.0                                              # spent evaluating during training
    def first_step(self, model, opt, total_steps): return 0         # or the step a checkpoint was at
    def part_of_step(self, batch, micro_batch_size, pad_id): return batch   # the examples this process trains on
    def step_loss(self, loss, n): return loss                       # the step's mean loss
    def grad_norm(self, norm): return float(norm)                   # the gradient's norm, before clipping
    def autocast(self, device): return autocast_for(device)         # bf16 on CUDA (launch/: CPUs with fast bf16)
    def after_update(self): pass                                    # the optimizer stepped; gradients still there
    def after_step(self, record, stop): pass                        # the step's metrics are in `record`


def fit(model, examples, tc: TrainConfig, pad_id=0, desc="train", hooks=None, progress=True):
    """Train `model` in place on examples ({"input_ids", "labels"}); returns the per-step metrics."""
    # >>> exercise: fit
    hooks = hooks or Hooks()
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=ADAM_BETAS, weight_decay=0.0,
                            foreach=device.type == "cuda")
    loss = dict(per_sample=tc.loss_norm == "sample", entropy=tc.objective == "entropy", chunk=tc.loss_chunk)
    steps = step_batches(len(examples), tc)
    stop = min(len(steps), tc.max_steps or len(steps))
    start = hooks.first_step(model, opt, len(steps))
    autocast = hooks.autocast(device)
    model.train()
    model.gradient_checkpointing = tc.grad_ckpt  # only in train mode: evaluation never recomputes
    history = []
    bar = Progress(stop, desc, "step", initial=start, enabled=progress)
    for step in range(start, stop):
        lr = lr_at(step, len(steps), tc)
        for g in opt.param_groups:
            g["lr"] = lr
        batch = [examples[i] for i in steps[step]]
        n = step_count(batch, tc.loss_norm)  # the normaliser of the whole step
        part = hooks.part_of_step(batch, tc.micro_batch_size, pad_id)
        mean, n = accumulate_grads(model, part, tc.micro_batch_size, pad_id, n, autocast, **loss)
        mean = hooks.step_loss(mean, n)
        grad_norm = 0.0
        if n > 0:
            grad_norm = hooks.grad_norm(torch.nn.utils.clip_grad_norm_(model.parameters(), tc.max_grad_norm))
            opt.step()
            hooks.after_update()
        opt.zero_grad(set_to_none=True)
        history.append({"step": step + 1, "loss": mean, "lr": lr, "grad_norm": grad_norm,
                        "supervised_tokens" if tc.loss_norm == "token" else "samples": n})
        bar.update(loss=f"{mean:.4f}")
        hooks.after_step(history[-1], stop)
    bar.close()
    model.eval()
    return history
    # <<< exercise: fit


def autocast_for(device, cpu_bf16=False):
    """The autocast of the forward and the loss, or None: bf16 on CUDA; on CPU if asked (launch/'s --autocast-bf16)."""
    if cpu_bf16 and device.type == "cpu":  # the option for CPUs with fast bf16
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None


# ----------------------------------------------------------------------------- UPFT, end to end
class Run:
    """What one run's steps share; how it loads, decodes with, saves the model: one process (launch/: LaunchedRun)."""
    verbose, resumed = True, False  # this process prints and writes the run's files; launch/'s --resume

    def __init__(self, args, tok: Tokenizer, folder: Path, log=print):
        self.args, self.tok, self.folder, self.log = args, tok, Path(folder), log
        self.dtype = getattr(torch, args.dtype)
        self.top_p, self.top_k = sampling_filters(tok, args.top_p, args.top_k)  # the flags', else the checkpoint's

    def load_model(self, model_dir):
        return Transformer.from_pretrained(model_dir, device=self.args.device, dtype=self.dtype)

    def rollouts(self, model, questions, golds, full, **common):  # upft.method_rollouts of every question
        return upft.method_rollouts(self.args.method, model, self.tok, questions, golds, full, **common)

    def evaluate(self, model, rows, max_new_tokens, **options):
        return evaluate(model, self.tok, rows, max_new_tokens, **options)

    def write(self, name, content):  # a JSON (.json) or JSONL (.jsonl) file of the run, written atomically
        (write_jsonl if name.endswith(".jsonl") else write_json)(self.folder / name, content)

    # launch/ changes these too: a bf16 or a gathered copy to decode with, what --resume / --base-from find,
    # fit's hooks, saving a sharded model, metrics.jsonl (there written step by step, evaluations too)
    def for_decoding(self, model): return model
    def saved(self, name): return None
    def hooks(self, eval_rows): return Hooks()
    def save_model(self, model, path): model.save_pretrained(path)
    def write_metrics(self, history): self.write("metrics.jsonl", history)  # each step's loss, LR, norm, count


def upft_steps(run, model_dir, rows, eval_rows, t0):
    """UPFT's steps, in order (docs/method.md §3)."""
    args = run.args
    torch.manual_seed(args.seed)
    # 1. load the model
    model = run.load_model(model_dir)
    # 2. the base model's accuracy on the held-out questions
    decoding_model = run.for_decoding(model)
    base = accuracy(run, "base", decoding_model, eval_rows)
    # 3. sample ONE answer per question from the model itself
    saved, started = run.saved("train_examples.jsonl"), time.time()  # (an interrupted run's, under launch/)
    rollouts, accounting = self_generate(run, decoding_model, rows) if saved is None else (None, None)
    del decoding_model
    torch.cuda.empty_cache()  # the decoding copy and its cache, before training (a no-op without CUDA)
    # 4. the training examples: prompt (+ the prefix instruction), the sampled tokens, EOS
    examples, accounting = saved or make_examples(run, rows, rollouts, accounting, started)
    # 5. train: fit, the masked cross-entropy loop
    finetune(run, model, examples, rows, eval_rows, accounting)
    # 6. save the tuned model in HF layout
    run.save_model(model, run.folder / "model")
    # 7. the tuned model's accuracy
    tuned = accuracy(run, "tuned", run.for_decoding(model), eval_rows)
    # 8. the results: accuracy before and after, the token accounting, the time
    return write_results(run, base, tuned, accounting, t0)


def accuracy(run, tag, model, eval_rows):
    """(greedy summary, sampled summary or None) on the held-out questions, into eval_<tag>[_sampled].json[l]."""
    args = run.args
    if not eval_rows:
        return None, None
    results = [None, None]
    for k, (suffix, n) in enumerate((("", 1), ("_sampled", args.eval_samples))):
        results[k] = n and run.saved(f"eval_{tag}{suffix}.json") or None
        if n and not results[k]:
            records, results[k] = evaluate_model(run, model, eval_rows, n, tag, sampled=bool(suffix))
            run.write(f"eval_{tag}{suffix}.jsonl", records)
            run.write(f"eval_{tag}{suffix}.json", results[k])
    greedy, sampled = results
    run.log(f"{tag} accuracy on {len(eval_rows)} held-out questions: greedy {greedy['accuracy']:.1%}" +
            (f", sampled {sampled['accuracy']:.1%} (pass@{args.eval_samples} {sampled['pass@n']:.1%})"
             if sampled else ""))
    return greedy, sampled


def evaluate_model(run, model, rows, n=1, tag=None, sampled=False):
    """eval.evaluate, greedy; `sampled`: n samples per question at --eval-temperature, the checkpoint's filters."""
    args = run.args
    top_p, top_k = sampling_filters(run.tok)  # the checkpoint's, whatever --top-p/--top-k say
    sampling = dict(n=n, temperature=args.eval_temperature, seed=args.eval_seed, top_p=top_p, top_k=top_k,
                    sampled=True) if sampled else {}
    shown = run.verbose and tag and f"{tag} model, " + (f"{n} samples each" if sampled else "greedy")
    return run.evaluate(model, rows, args.eval_max_new_tokens, batch_size=args.eval_batch_size, progress=shown,
                        **sampling)


def self_generate(run, model, rows):
    """Step 3: the method's self-generated rollouts (upft.method_rollouts) and their token accounting."""
    args, questions = run.args, [r["question"] for r in rows]
    full = upft.split_canonical(questions, args.structure_ratio, args.seed)  # D_f (upft; the others: all full)
    rollouts, sampled, dropped = run.rollouts(
        model, questions, [r.get("gold") for r in rows], full, prefix_len=args.prefix_len,
        num_samples=args.num_samples, prefixes=not args.full_only, max_new_tokens=args.max_new_tokens,
        seed=args.seed, batch_size=args.sample_batch_size, progress=run.verbose, temperature=args.temperature,
        top_p=run.top_p, top_k=run.top_k)
    return rollouts, upft.sampling_accounting(args.method, len(rows), rollouts, sampled, dropped, args.num_samples)


def make_examples(run, rows, rollouts, accounting, started):
    """Step 4: upft.build_examples of the rollouts (the controls of §7.1 first); then their files, examples last."""
    args, tok, questions = run.args, run.tok, [r["question"] for r in rows]
    if args.full_only or args.random_targets:  # the controls (§7.1), on UPFT's own samples
        rollouts = upft.ablate_rollouts(rollouts, questions, args.full_only, args.random_targets, seed=args.seed)
    examples, dropped = upft.build_examples(
        tok, questions, rollouts, args.prefix_len, args.max_len, eos=not args.no_eos,
        instruction="" if args.no_instruction else upft.PREFIX_INSTRUCTION)
    accounting.update(questions_used=len(examples), dropped_over_max_len=dropped,
                      prefix_examples=sum(e["kind"] == "prefix" for e in examples),
                      full_examples=sum(e["kind"] == "full" for e in examples),
                      tokens_supervised=upft.supervised_tokens(examples), sampling_seconds=time.time() - started)
    if not examples:
        raise UpftError("no training examples (every question was dropped)")
    for r in rollouts:
        r.update(question=questions[r["index"]], response=tok.decode(r["response_ids"]))
    run.write("rollouts.jsonl", rollouts)
    run.write("accounting.json", accounting)
    run.write("train_examples.jsonl", examples)  # last: the sampling phase is complete
    return examples, accounting


def finetune(run, model, examples, rows, eval_rows, accounting):
    """Step 5: fit, the examples in canonical order (upft.canonical_order: a shuffled file gives the same run)."""
    args = run.args
    tc = TrainConfig(lr=args.lr, epochs=args.epochs, batch_size=args.batch_size, micro_batch_size=args.micro_batch_size,
                     loss_norm=args.loss_norm, seed=args.seed, grad_ckpt=args.grad_ckpt,
                     objective="entropy" if args.method == "em" else "ce", loss_chunk=args.loss_chunk)
    started, hooks = time.time(), run.hooks(eval_rows)
    order = {i: k for k, i in enumerate(upft.canonical_order([r["question"] for r in rows]))}
    examples = sorted(examples, key=lambda e: order[e["index"]])
    history = fit(model, examples, tc, pad_id=run.tok.pad_id, desc=args.method, hooks=hooks, progress=run.verbose)
    run.write_metrics(history)
    accounting["training_seconds"] = time.time() - started - hooks.eval_seconds  # without evaluations during it
    accounting["eval_during_training_seconds"] = hooks.eval_seconds


def write_results(run, base, tuned, accounting, t0):
    """results.json: the settings that name the run, base and tuned accuracy, the token accounting, the time."""
    args = run.args
    results = {"method": args.method, "prefix_len": args.prefix_len, "structure_ratio": args.structure_ratio,
               "num_samples": args.num_samples, "seed": args.seed, "loss_norm": args.loss_norm,
               "controls": [k for k in ABLATIONS if getattr(args, k)], "base": base[0], "tuned": tuned[0],
               "base_sampled": base[1], "tuned_sampled": tuned[1], "accounting": accounting,
               "wall_seconds": time.time() - t0, "resumed": run.resumed}
    run.write("results.json", results)  # a resumed run's clocks restart at the resume: its times are partial
    return results


def report(results, out):  # the lines a finished run prints
    accounting = results["accounting"]
    return "\n".join([
        f"\n== {results['method']} (L={results['prefix_len']}, p={results['structure_ratio']}, "
        f"N={results['num_samples']}, seed={results['seed']}) -> {out}",
        f"base  accuracy: {accuracy_line(results['base'], results.get('base_sampled'))}",
        f"tuned accuracy: {accuracy_line(results['tuned'], results.get('tuned_sampled'))}",
        f"questions: {accounting['questions']} sampled, {accounting['questions_used']} trained on "
        f"({accounting['prefix_examples']} prefix + {accounting['full_examples']} full)",
        f"tokens sampled: {accounting['tokens_sampled']:,}   tokens supervised: {accounting['tokens_supervised']:,}",
        f"wall time: {results['wall_seconds']:.0f}s"])


def run_record(args, model_dir, top_p, top_k):  # args.json: every setting, the checkpoint, the filters used
    return {**vars(args), "model_dir": str(model_dir), "top_p_used": top_p, "top_k_used": top_k}


def run(args, log=print):
    """Every input checked, then `upft_steps` in a folder that takes --out's name when complete (a failed run
    leaves nothing). Returns results.json."""
    t0 = time.time()
    model_dir, tok, rows, eval_rows = load_inputs(args)  # bad input fails here: nothing written yet
    with atomic_dir(args.out) as folder:
        run = Run(args, tok, folder, log)
        run.write("args.json", run_record(args, model_dir, run.top_p, run.top_k))
        results = upft_steps(run, model_dir, rows, eval_rows, t0)
    log(report(results, args.out) + ("" if args.model else "\n" + TOY_NOTE))
    return results


# ----------------------------------------------------------------------------- the command line
def build_parser(add_help=True):
    parser = argparse.ArgumentParser(add_help=add_help, description="Unsupervised Prefix Fine-Tuning (and the SFT, "
                                     "RFT, EM-FT and majority-vote baselines, and the controls that take UPFT apart).")
    add = parser.add_argument
    add("--model", help="HF checkpoint directory or hub id (default: the embedded toy world in assets/toy)")
    add("--world", help="a toy world folder (scripts/build_toy.py writes one) instead of assets/toy")
    add("--data", help="training questions, JSONL with 'question' or 'problem' (answers only needed by rft)")
    add("--eval-data", help="held-out JSONL with answers for base/tuned accuracy (toy: its test split)")
    add("--method", default="upft", choices=METHODS, help="UPFT, or a baseline (sft: one self-generated trace; rft: "
        "the first of N that matches the label; em: sft's traces, entropy loss; vote: the first of N that matches "
        "the majority answer)")
    for k, (toy, real, what) in HYPERPARAMETERS.items():
        shown = toy if toy == real else f"{toy} on the toy world, {real} with --model"
        add("--" + k.replace("_", "-"), type=type(toy), help=f"{what} (default: {shown})".replace("%", "%%"))
    add("--num-samples", type=int, help="prefixes per question for voting (upft; 1 = the paper), or full samples "
        "per question (rft, vote) (default: 1 for upft, 16 for rft and vote)")
    add("--top-p", type=float, help="sampling top-p (default: the model's generation_config.json, else 1.0)")
    add("--top-k", type=int, help="sampling top-k, 0 = off (default: the model's generation_config.json, else 0)")
    add("--loss-norm", default="token", choices=["token", "sample"], help="token: CE summed over the step / its "
        "supervised tokens; sample: the official code's per-sample mean")
    add("--grad-ckpt", action="store_true", help="gradient checkpointing (less memory, slower)")
    add("--loss-chunk", type=int, help="K: at most K rows of logits at a time, recomputed in backward (less memory "
        "for long traces); 0 = all at once (default: 0, or launch/'s memory plan's)")
    for flag, what in (("--no-instruction", "prefix examples without the prefix instruction"),
                       ("--no-eos", "no EOS after the prefix (L supervised tokens)"),
                       ("--full-only", "train only on the full traces of the fraction p (no prefix sampled)"),
                       ("--random-targets", "each prefix example gets another question's prefix (a derangement)")):
        add(flag, action="store_true", help=f"control (upft): {what}")
    add("--eval-temperature", type=float, default=0.6, help="temperature of the sampled evaluation")
    add("--eval-seed", type=int, default=0, help="seed of the sampled evaluation (the same for base and tuned: paired)")
    add("--seed", type=int, default=0, help="seed of the split, the sampling and the data order")
    add("--out", help="run folder (default: runs/<time>-<method>-L<L>-s<seed>); must not exist")
    add("--device", default=default_device(), help="cpu or cuda")
    add("--dtype", choices=["float32", "bfloat16"], default="float32", help="weights dtype (CUDA trains under bf16 "
        "autocast either way)")
    add("--no-eval", action="store_true", help="skip base/tuned accuracy")
    for action in parser._actions:  # the other defaults in the help too
        if action.dest not in HYPERPARAMETERS and action.default not in (None, False, argparse.SUPPRESS):
            action.help += " (default: %(default)s)"
    return parser


def parse_args(argv=None):
    """Parse and check every flag and --out; nothing is read or written."""
    args = build_parser().parse_args(argv)
    check_flags(args)
    check_out(args)
    return args


def check_flags(args, planned=False):
    """Every default filled in (HYPERPARAMETERS), every number and combination checked. planned (launch/): --loss-chunk
    and (CUDA) --sample-batch-size and --eval-batch-size, if not given, stay None for the memory plan."""
    for k, (toy, real, _) in HYPERPARAMETERS.items():
        on_gpu = planned and args.device.startswith("cuda") and k in ("sample_batch_size", "eval_batch_size")
        if getattr(args, k) is None and not on_gpu:
            setattr(args, k, real if args.model else toy)
    if args.num_samples is None:
        args.num_samples = 16 if args.method in ("rft", "vote") else 1
    if args.loss_chunk is None and not planned:  # (launch/: the memory plan's, by the same rule)
        args.loss_chunk = LOSS_CHUNK if args.max_len > LOSS_CHUNK else 0
    require(args.prefix_len >= 1, f"--prefix-len must be a positive number of tokens, got {args.prefix_len}")
    require(0.0 <= args.structure_ratio <= 1.0, f"--structure-ratio must be in [0, 1], got {args.structure_ratio}")
    require(args.num_samples >= 1, f"--num-samples must be >= 1, got {args.num_samples}")
    require(args.temperature == 0 or args.temperature >= MIN_TEMPERATURE,
            f"--temperature must be 0 (greedy) or at least {MIN_TEMPERATURE:g}, got {args.temperature}")
    require(args.eval_temperature >= MIN_TEMPERATURE, f"--eval-temperature must be at least {MIN_TEMPERATURE:g} "
            f"(greedy is always evaluated), got {args.eval_temperature}")
    require(args.top_p is None or 0 < args.top_p <= 1, f"--top-p must be in (0, 1], got {args.top_p}")
    require(args.top_k is None or args.top_k >= 0, f"--top-k must be >= 0 (0 = off), got {args.top_k}")
    for k in ("loss_chunk", "eval_samples", "lr", "epochs", "batch_size", "micro_batch_size", "max_len",
              "max_new_tokens", "eval_batch_size", "sample_batch_size", "eval_max_new_tokens", "limit", "eval_limit"):
        v, zero_ok = getattr(args, k), k in ("loss_chunk", "eval_samples")
        require(v is None or v > 0 or (zero_ok and v == 0), f"--{k.replace('_', '-')} must be "
                f"{'>= 0' if zero_ok else 'positive'}, got {v}")
    # flags that do not go together
    require(args.method != "vote" or args.num_samples >= 2,
            f"--method vote needs --num-samples >= 2 (a vote of one sample is no vote), got {args.num_samples}")
    require(args.method != "em" or args.loss_norm == "token", "--method em supports --loss-norm token only")
    on = [f"--{k.replace('_', '-')}" for k in ABLATIONS if getattr(args, k)]
    require(not on or args.method == "upft", f"{', '.join(on)}: a control of UPFT, only with --method upft")
    require(not args.full_only or len(on) == 1, f"--full-only drops the prefix examples: {', '.join(on[1:])} "
            "would change nothing")
    require(not args.full_only or args.structure_ratio > 0, "--full-only with --structure-ratio 0 leaves no example")
    require(not args.random_targets or args.structure_ratio < 1,
            "--random-targets with --structure-ratio 1 leaves no prefix example to pair")


def check_out(args):
    """The inputs a run needs besides the flags, and --out (default: a new name): it must not exist."""
    require(not args.model or args.data, "--data is required with --model (JSONL of training questions)")
    require(not (args.model and args.world), "--world and --model: one or the other")
    require(not args.world or (Path(args.world) / "build.json").is_file(),
            f"--world {args.world}: no toy world there (build.json missing)")
    args.out = args.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{args.method}-L{args.prefix_len}-s{args.seed}"
    require(not Path(args.out).exists(), f"--out {args.out} already exists (choose another --out)")
    check_writable(args.out, "--out")


def check_writable(path, flag):
    """A folder can be created at `path`: one is made and removed in its nearest existing parent."""
    parent = Path(path).absolute().parent
    while not parent.exists():
        parent = parent.parent
    require(parent.is_dir(), f"{flag} {path}: {parent} is not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".upft-write-check-", dir=parent))
    except OSError as e:
        require(False, f"{flag} {path}: cannot write in {parent} ({e.strerror})")


def load_inputs(args):
    """(model_dir, tokenizer, rows, eval_rows): everything a run reads (the toy world's by default), checked
    before any model is built; every prompt rendered (a broken chat template fails here)."""
    world = Path(args.world or TOY_WORLD)
    model_dir = resolve(args.model) if args.model else world / "model"
    rows = load_rows(args.data or world / "train.jsonl", args.limit, require_answer=args.method == "rft")
    eval_data = args.eval_data or (None if args.model else world / "test.jsonl")
    eval_rows = load_rows(eval_data, args.eval_limit) if eval_data and not args.no_eval else []
    Config.from_json(Path(model_dir) / "config.json")
    tok = Tokenizer.from_pretrained(model_dir)
    if not any([len(chat_prompt(tok, r["question"])) < args.max_len for r in rows]):
        raise UpftError(f"no training question fits --max-len {args.max_len} (every prompt is longer)")
    for r in eval_rows:
        chat_prompt(tok, r["question"])
    return model_dir, tok, rows, eval_rows


def launcher(argv):
    """The one door to launch/ (imported here only), for what it adds: torchrun, a flag this parser does not know
    (--resume, --plan, ...), a real checkpoint's or a GPU's memory plan, an interrupted run at --out. None: here."""
    args, unknown = build_parser(add_help=False).parse_known_args(argv)  # --help: launch/'s, with its flags
    interrupted = args.out and Path(args.out.rstrip("/") + ".partial").exists()
    if not (unknown or args.model or args.device.startswith("cuda") or "LOCAL_RANK" in os.environ or interrupted):
        return None
    try:
        import launch.run
    except ModuleNotFoundError as e:
        if e.name != "launch":
            raise
        require("LOCAL_RANK" not in os.environ, "torchrun needs launch/, which this copy does not have")
        return None
    return launch.run


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        wrapped = launcher(argv)
        if wrapped:
            return wrapped.main(argv)  # (which prints its own errors)
        run(parse_args(argv))
    except UpftError as e:  # exit 2: bad input; 1: the machine (UpftFault)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except OSError as e:  # a full disk, a permission: the run folder is gone (atomic_dir)
        print(f"error: {e.filename + ': ' if e.filename else ''}{e.strerror or e}; nothing was kept", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
