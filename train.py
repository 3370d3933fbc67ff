"""UPFT end to end, and the one masked cross-entropy loop that every training in upft goes through.

    python train.py --prefix-len 8                      # the embedded toy world (shipped in assets/toy)
    python train.py --model DIR_OR_ID --data train.jsonl --eval-data test.jsonl --prefix-len 8
    torchrun --nproc-per-node 8 train.py --model ... --device cuda   # sharded with FSDP2 (fsdp.py)
    python train.py --plan 8 --model DIR_OR_ID --device cuda         # the memory plan per GPU, then exit

Top to bottom: the loss (masked_ce_sum, accumulate_grads), the loop (lr_at, fit), resumable checkpoints,
then UPFT end to end in eight numbered steps (`_run`; docs/method.md §3): load the model; base accuracy
on the held-out questions; sample ONE answer per question from the model itself (upft.py: prefix-only
decoding for D_p, full traces for the fraction p); build the training examples; train; save in HF
layout; tuned accuracy; results and token accounting. Beside it: cli.py (the flags, their checks, the
run folder), plan.py (the memory plan, --plan), fsdp.py (torchrun only: sharding, collectives).

The loss (docs/method.md §4): the sum of token cross-entropy over every supervised token of an
optimizer step, divided by that step's supervised-token count, so gradient accumulation with unequal
micro-batches equals one big batch, and every token weighs the same (Eq. 8 read literally). Under
torchrun the count is the whole step's, over all ranks. `--loss-norm sample` reproduces the official
code's weighting instead (each sample's token mean, averaged over the step's samples). AdamW (0.9,
0.95), weight decay 0, clip 1.0, constant LR after a 3% linear warmup. fp32 on CPU; bf16 autocast on
CUDA (sharded: bf16 compute, fp32 master weights and gradient reduction).

The run folder is built as `<out>.partial` and renamed to `<out>` when complete; a failed run keeps it
only if it holds something to resume from (`--resume`). It holds args.json, memory_plan.json,
memory_measured.json, rollouts.jsonl, train_examples.jsonl (the exact input_ids/labels trained on),
accounting.json, metrics.jsonl, eval_{base,tuned}.json[l], results.json, model/ (HF layout).
Left out: torch.compile, packing.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts OpenMP: README, "A busy machine"

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file

import upft
from cli import (ABLATIONS, TOY_NOTE, check_resume, clean_up, load_inputs, parse_args, partial_dir, plan_for,
                 print_plan)
from data import (IGNORE, Progress, Tokenizer, UpftError, atomic_dir, read_jsonl, sampling_filters, supervised_count,
                  write_json, write_jsonl)
from eval import accuracy_line, evaluate
from fsdp import (all_gather_json, all_reduce, check_shared_folder, init_distributed, is_sharded,
                  load_sharded_checkpoint, load_sharded_model, rank_and_world, record_state_bytes, save_gathered,
                  save_sharded_checkpoint, sharded_step)
from model import Config, Transformer, gather_full, save_safetensors
from plan import format_plan, memory_plan

# ----------------------------------------------------------------------------- the loss


def masked_ce_sum(logits, labels):
    """Sum of next-token CE over supervised positions, and their count. logits (B, T, V), labels (B, T)
    aligned with input_ids: position t's logits predict labels[t + 1] (the shift happens here, once).
    (Exercise masked_ce_sum; Eq. 8 is a sum of token log-likelihoods; docs/method.md §4 for the
    normaliser. Its second part, the same shift on the rows train.py trains with, is in
    model.Transformer.supervised_loss.)

    Inputs: logits (B, T, V) from the model (any float dtype: compute the loss in fp32); labels (B, T),
    a LongTensor aligned with input_ids, IGNORE (-100) on the prompt and on padding.
    Output: (loss, n): loss = a 0-dim fp32 tensor that carries the gradient, the SUM over every b and
    every t < T - 1 with labels[b, t + 1] != IGNORE of -log softmax(logits[b, t])[labels[b, t + 1]];
    n = an int, the number of those supervised positions (the normaliser the caller divides by: NOT
    the sequence length, NOT the batch size, NOT B * (T - 1)).
    Edge cases: labels[:, 0] is never a target (nothing predicts the first token); the logits of the
    last position predict nothing; with no supervised position the loss is 0 (not NaN) and n = 0.
    """
    # >>> exercise: masked_ce_sum
    logits, targets = logits[:, :-1].float(), labels[:, 1:]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=IGNORE, reduction="sum")
    return loss, int((targets != IGNORE).sum())
    # <<< exercise: masked_ce_sum


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


def logits_ce(model, ids, labels):
    """The readable loss of a micro-batch: masked_ce_sum of the model's full (B, T, V) logits."""
    return masked_ce_sum(model(ids), labels)


def accumulate_grads(model, examples, micro_batch_size, pad_id, loss_sum=logits_ce, normaliser=None,
                     autocast=None):
    """Backward over one optimizer step's examples in micro-batches; the gradient is that of
    (sum of losses) / (step normaliser), however the step is split. Returns (mean loss, normaliser).
    (Exercise accumulate_grads; docs/method.md §4. Its default loss is masked_ce_sum: do that first.)

    Inputs: model (a Transformer; gradients are ADDED to its .grad, the caller zeroes them between
    steps); examples, the step's list of {"input_ids", "labels"} (labels aligned, IGNORE on the
    prompt), of unequal lengths and unequal supervised counts; micro_batch_size, the examples per
    forward/backward (examples[0:m], examples[m:2m], ...; the last one may be smaller); pad_id, the
    input id used by `collate` for padding; loss_sum(model, ids, labels) -> (loss, count), the loss SUM
    of one collated micro-batch (a 0-dim tensor that carries the gradient) and its count (default
    `logits_ce`: masked_ce_sum of the model's logits; fit passes the model's own `supervised_loss`,
    the same sum without the full logits); normaliser: the step's N (None: its supervised tokens,
    `supervised_count` of every example's labels, summed; fit passes its own: samples for the official
    weighting, and under torchrun the count of every rank's examples); autocast, a context manager
    for the forward and the loss (None = none).
    Output: (mean loss, N). After the call .grad holds the gradient of (sum of the step's losses) / N:
    the gradient of one big batch, whatever micro_batch_size is. Mean loss = that quantity as a float.
    Each micro-batch's loss sum must therefore be divided by the step's N, not by its own count, not
    by the number of micro-batches, not by the batch size or the sequence length.
    Edge cases: N = 0 returns (nan, 0) and leaves .grad untouched (no backward at all); a micro-batch
    with no supervised token adds nothing (its loss sum is exactly 0, not NaN).
    """
    # >>> exercise: accumulate_grads
    total = sum(supervised_count(e["labels"]) for e in examples) if normaliser is None else normaliser
    if total == 0:
        return float("nan"), 0  # nothing supervised in this step: no gradient, no NaN
    device = next(model.parameters()).device
    step_loss = 0.0
    for i in range(0, len(examples), micro_batch_size):
        ids, labels = collate(examples[i:i + micro_batch_size], pad_id)
        with autocast or contextlib.nullcontext():
            loss, _ = loss_sum(model, ids.to(device), labels.to(device))
        (loss / total).backward()
        step_loss += loss.item()
    return step_loss / total, total
    # <<< exercise: accumulate_grads


def supervised_rows_loss(model, ids, labels, objective="ce", per_sample=False):
    """fit's loss_sum: the model's own supervised_loss (the head on supervised rows only, in chunks)."""
    return model(ids, labels=labels, objective=objective, per_sample=per_sample)


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
    bf16: bool = False            # CPU: forward and backward under bf16 autocast, fp32 master weights
    schedule: str = "constant"    # "constant" after warmup (the paper); "cosine" (to 10%) only for toy pretraining
    max_steps: int | None = None  # stop after this many steps (the schedule still spans every epoch)
    objective: str = "ce"         # "ce" (every method) or "entropy" (EM-FT: no target, §7)
    eval_every: int = 0           # optimizer steps between held-out evaluations during training (0 = never)


def lr_at(step, total_steps, tc: TrainConfig):
    """Linear warmup over the first warmup_ratio of the steps, then constant (constant_with_warmup).
    The cosine option (decay to 10% of the peak) is what pretraining the toy model from scratch uses.
    (Exercise lr_at; docs/method.md §4: constant learning rate after a 3% linear warmup.)

    Inputs: step, the 0-based optimizer step (0 <= step < total_steps); total_steps >= 1; tc, a
    TrainConfig: tc.lr (the peak), tc.warmup_ratio (>= 0), tc.schedule ("constant" or "cosine").
    Output: the learning rate (float) for that step.
    Contract: W = max(1, ceil(warmup_ratio * total_steps)) warmup steps. For step < W the rate rises
    linearly and reaches the peak ON the last warmup step: lr * (step + 1) / W (so step 0 already
    trains, at lr / W). From step W on: "constant" keeps lr (no decay, ever); "cosine" follows
    lr * (0.1 + 0.9 * 0.5 * (1 + cos(pi * (step - W) / max(1, total_steps - W)))), i.e. starts at the
    peak at step W and decays towards 10% of it. warmup_ratio = 0 means W = 1: the peak from step 0.
    Example: lr 1e-3, warmup_ratio 0.03, 100 steps: W = 3; steps 0, 1, 2 get 1/3, 2/3, 3/3 of 1e-3.
    """
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


def fit(model, examples, tc: TrainConfig, pad_id=0, out=None, resume=False, desc="train", log=print,
        evaluate=None):
    """Train `model` in place on examples ({"input_ids", "labels"}); returns the per-step metrics.

    With `out`, metrics go to out/metrics.jsonl and, every tc.save_every steps, a resumable checkpoint
    (weights, AdamW state, step, RNG) to out/checkpoint; `resume` continues from it exactly.
    With `evaluate` (a function of the model -> dict) and tc.eval_every = K, it is called before the
    first step, every K steps and after the last, in eval mode; its records ({"step", **result}) go to
    the metrics too. It must not touch the training's random streams (greedy generate does not).
    """
    sharded = is_sharded(model)  # under torchrun: every rank calls fit and trains on its part of each step
    rank, world = rank_and_world(model)
    device = next(model.parameters()).device
    autocast = autocast_for(device, sharded, tc.bf16)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=(0.9, 0.95), weight_decay=0.0,
                            foreach=device.type == "cuda")
    # the loss of a micro-batch: the head and the loss on the supervised rows only (Transformer.supervised_loss)
    loss_sum = functools.partial(supervised_rows_loss, objective=tc.objective, per_sample=tc.loss_norm == "sample")
    steps = step_batches(len(examples), tc)
    start, stop = 0, min(len(steps), tc.max_steps or len(steps))
    metrics = Path(out) / "metrics.jsonl" if out and rank == 0 else None  # rank 0 writes them
    checkpoint = Path(out) / "checkpoint" if out else None
    if resume and checkpoint and checkpoint.is_dir():
        start = load_state(checkpoint, model, opt)
        log(f"resumed from {checkpoint} at step {start}/{len(steps)}")
    elif metrics and metrics.exists():
        metrics.unlink()
    evaluating = evaluate is not None and tc.eval_every > 0
    if evaluating and start == 0:
        evaluate_during(model, evaluate, 0, tc, log, metrics)
    training_mode(model, True, tc.grad_ckpt)
    history, measured = [], False
    bar = Progress(stop, desc, "step", initial=start, enabled=rank == 0)
    for step in range(start, stop):
        batch = [examples[i] for i in steps[step]][rank::world]  # torchrun: this rank's part of the step
        lr = lr_at(step, len(steps), tc)
        for g in opt.param_groups:
            g["lr"] = lr
        n = step_count(batch, tc.loss_norm)
        if sharded:  # the whole step's normaliser, and as many micro-batches as the busiest rank
            n, batch = sharded_step(batch, n, tc.micro_batch_size, pad_id)
        loss, n = accumulate_grads(model, batch, tc.micro_batch_size, pad_id, loss_sum, n, autocast)
        if sharded and n > 0:
            loss = all_reduce([loss], "sum", torch.float64)[0]  # each rank returned its part of the mean
        grad_norm = 0.0
        if n > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.max_grad_norm)
            grad_norm = float(grad_norm.full_tensor() if sharded else grad_norm)  # sharded: over all ranks
            opt.step()
            if out and not measured:  # the memory plan's static figures, measured (memory_measured.json)
                record_state_bytes(Path(out) / "memory_measured.json", model, opt, rank)
                measured = True
        opt.zero_grad(set_to_none=True)
        rec = {"step": step + 1, "loss": loss, "lr": lr, "grad_norm": grad_norm,
               "supervised_tokens" if tc.loss_norm == "token" else "samples": n}
        history.append(rec)
        bar.update(loss=f"{loss:.4f}")
        append_metrics(metrics, rec)
        if evaluating and ((step + 1) % tc.eval_every == 0 or step + 1 == stop):
            evaluate_during(model, evaluate, step + 1, tc, log, metrics)
        if checkpoint and tc.save_every and (step + 1) % tc.save_every == 0 and step + 1 < stop:
            save_state(checkpoint, model, opt, step + 1)
    bar.close()
    training_mode(model, False)
    return history


def autocast_for(device, sharded, cpu_bf16):
    """The autocast of the forward and the loss, or None. bf16 on CUDA: autocast for one process (sharded,
    FSDP's mixed-precision policy casts instead); on CPU only when asked (--autocast-bf16)."""
    if cpu_bf16 and device.type == "cpu":  # the option for CPUs with fast bf16
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and not sharded else None


def training_mode(model, on, grad_ckpt=False):
    """Train mode (with gradient checkpointing if asked) or eval mode (never checkpointing)."""
    model.train(on)
    model.gradient_checkpointing = on and grad_ckpt


def evaluate_during(model, evaluate, step, tc, log, metrics):
    """fit's held-out evaluation at `step` (the rise-then-fall of self-training, §7): in eval mode, then
    back to training; logged and appended to the metrics."""
    training_mode(model, False)
    rec = {"step": step, **evaluate(model)}
    log(f"step {step}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                     for k, v in rec.items() if k != "step"))
    append_metrics(metrics, rec)
    training_mode(model, True, tc.grad_ckpt)


def append_metrics(path, rec):
    """One line of metrics.jsonl (path None: this process does not write them)."""
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(rec) + "\n")


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
        save_safetensors(tensors, tmp / "state.safetensors")
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


def save_state(path: Path, model, opt, step):
    """fit's resumable checkpoint: the whole state, or under torchrun each rank its shards (every rank calls)."""
    if is_sharded(model):
        return save_sharded_checkpoint(path, model, opt, step)
    return save_checkpoint(path, model, opt, step)


def load_state(path: Path, model, opt):
    """The step a checkpoint written by save_state was at, its state restored (weights, AdamW, RNG)."""
    if is_sharded(model):
        return load_sharded_checkpoint(path, model, opt)
    return load_checkpoint(path, model, opt)


# ----------------------------------------------------------------------------- UPFT, end to end

@dataclass
class Run:
    """What the steps of one run share."""
    args: argparse.Namespace
    tok: Tokenizer
    out: Path                    # the run folder while it is built (<out>.partial)
    log: object                  # print on rank 0, nothing on the others
    rank: int                    # torchrun: this process, of nproc (plain python: 0 of 1)
    nproc: int
    device: str                  # this rank's device
    sharded: bool                # under torchrun (even with one process): the model is sharded with FSDP2
    dtype: torch.dtype           # of the weights (--dtype)
    top_p: float                 # the sampling's filters: --top-p / --top-k, else the checkpoint's
    top_k: int
    eval_seconds: float = 0.0    # spent evaluating during training (--eval-every)


def run(args, log=print):
    """One run: every input checked and the memory plan made before anything is written; then the run
    folder (<out>.partial) and `_run`'s steps; renamed to <out> when complete. Returns results.json."""
    t0 = time.time()
    rank, nproc, device = init_distributed(args.device)
    sharded = dist.is_initialized()  # under torchrun (even with one process): FSDP2
    log = log if rank == 0 else (lambda *_: None)
    model_dir, tok, rows, eval_rows = load_inputs(args)  # bad input fails here: nothing written yet
    out = partial_dir(args.out)
    if args.resume:
        check_resume(args, out, nproc if sharded else None)
    cfg = Config.from_json(Path(model_dir) / "config.json")
    plan = plan_for(args, cfg, nproc, rank, sharded, has_eval=bool(eval_rows))
    log(format_plan(plan))
    if plan.fix:  # refuse before loading anything
        raise UpftError(plan.fix)
    # the decoding batches: the flags', or on CUDA the largest the plan fits (recorded in args.json)
    args.sample_batch_size, args.eval_batch_size = plan.sample_batch_size, plan.eval_batch_size
    run = Run(args, tok, out, log, rank, nproc, device, sharded, getattr(torch, args.dtype),
              *sampling_filters(tok, args.top_p, args.top_k))
    try:
        if rank == 0:
            out.mkdir(parents=True, exist_ok=args.resume)
            write_json(out / "memory_plan.json", {"settings": plan.settings, "usable_bytes": plan.capacity, "ranks": [
                memory_plan(cfg, **{**plan.settings, "rank": r}) for r in range(nproc)]})
            if not (out / "args.json").is_file():  # a resumed run keeps the record of how it started
                write_json(out / "args.json", {**vars(args), "model_dir": str(model_dir), "top_p_used": run.top_p,
                                               "top_k_used": run.top_k})
        if sharded:
            check_shared_folder(out, f"--out {args.out}",  # every rank sees it (several machines: shared)
                                required=bool(args.save_every or args.resume or args.base_from))
        results = _run(run, model_dir, rows, eval_rows, t0)
    except BaseException as e:
        fault = clean_up(out, rank, e, log)  # the folder goes, unless it holds something to resume from
        if fault:
            raise fault from None
        raise
    if sharded:
        dist.barrier()  # every rank is done with the folder
    if rank == 0:
        out.rename(args.out)  # complete: the folder takes its final name
    log(report(results, args.out) + ("" if args.model else "\n" + TOY_NOTE))
    return results


def _run(run, model_dir, rows, eval_rows, t0):
    """UPFT's steps, in order (docs/method.md §3); under torchrun every rank runs every step."""
    args = run.args
    torch.manual_seed(args.seed)
    # 1. load the model (torchrun: only this rank's shards of it)
    model = load_model(run, model_dir)
    # 2. the base model's accuracy on the held-out questions (reused: --resume, --base-from)
    decoding = decoder(run, model)
    copy_base_eval(run, eval_rows)
    base = accuracy(run, "base", decoding, eval_rows, reuse=args.resume or bool(args.base_from))
    # 3. sample ONE answer per question from the model itself (a resumed run reuses its samples)
    resumed = args.resume and (run.out / "train_examples.jsonl").exists()
    started = time.time()
    rollouts, acct = (None, None) if resumed else sample(run, decoding, rows)
    del decoding
    if "cuda" in run.device:
        torch.cuda.empty_cache()  # the decoding copy and its cache, before training
    # 4. the training examples: prompt (+ the prefix instruction), the sampled tokens, EOS
    examples, acct = read_examples(run) if resumed else make_examples(run, rows, rollouts, acct, started)
    # 5. train: fit, the masked cross-entropy loop (accuracy during training with --eval-every)
    finetune(run, model, examples, rows, eval_rows, acct)
    # 6. save the tuned model in HF layout
    save_model(run, model)
    # 7. the tuned model's accuracy
    tuned = accuracy(run, "tuned", decoder(run, model), eval_rows)
    # 8. the results: accuracy before and after, the token accounting, the time
    return write_results(run, base, tuned, acct, t0)


def load_model(run, model_dir):
    """The model to train: from the checkpoint, or under torchrun built sharded (fsdp.load_sharded_model)."""
    if run.sharded:
        return load_sharded_model(model_dir, run.device, run.dtype)
    return Transformer.from_pretrained(model_dir, device=run.args.device, dtype=run.dtype)


def decoder(run, model):
    """The model to decode with. Sharded: a full copy for the decoding phase only (bf16 on CUDA, the
    master dtype on CPU), freed before training. The alternative, decoding through the sharded model,
    all-gathers every layer for every generated token (the whole model's bytes per decoding step over
    the interconnect, several times the time to read them from HBM) and keeps every rank in lockstep.
    The memory plan shows the copy fits: a 7-8B model's is 14-15 GiB next to 1/N of the fp32 state."""
    if run.sharded:  # bf16 on CUDA or with --decode-bf16
        return gather_full(model, torch.bfloat16 if "cuda" in run.device or run.args.decode_bf16 else run.dtype,
                           run.device)
    return model.to_dtype_copy(torch.bfloat16) if run.args.decode_bf16 else model


def copy_base_eval(run, eval_rows):
    """--base-from: the base model's evaluation files, copied from the earlier run that measured them."""
    args = run.args
    if args.base_from and eval_rows and run.rank == 0:
        sampled = ("eval_base_sampled.json", "eval_base_sampled.jsonl") if args.eval_samples else ()
        for name in ("eval_base.json", "eval_base.jsonl") + sampled:
            shutil.copyfile(Path(args.base_from) / name, run.out / name)
    if args.base_from and run.sharded:
        dist.barrier()  # copied before any rank reads it


def accuracy(run, tag, model, eval_rows, reuse=None):
    """(greedy summary, sampled summary or None) on the held-out questions; records and summaries to
    eval_<tag>[_sampled].json[l]. `reuse` (default --resume): what is already there (a resumed run's
    first part, or --base-from's copy) is read back instead of measured again."""
    args = run.args
    reuse = args.resume if reuse is None else reuse
    if not eval_rows:
        return None, None
    results = []
    for suffix, n in (("", 1), ("_sampled", args.eval_samples)):
        path = run.out / f"eval_{tag}{suffix}.json"
        if n == 0:
            results.append(None)
        elif reuse and path.exists():
            results.append(json.loads(path.read_text()))
        else:
            records, summary = evaluate_model(run, model, eval_rows, n=n, sampled=bool(suffix))
            if run.rank == 0:
                write_jsonl(run.out / f"eval_{tag}{suffix}.jsonl", records)
                write_json(path, summary)
            results.append(summary)
    greedy, sampled = results
    run.log(f"{tag} accuracy on {len(eval_rows)} held-out questions: greedy {greedy['accuracy']:.1%}" +
            (f", sampled {sampled['accuracy']:.1%} (pass@{args.eval_samples} {sampled['pass@n']:.1%})"
             if sampled else ""))
    return greedy, sampled


def evaluate_model(run, model, rows, n=1, progress=True, sampled=False):
    """eval.evaluate with the run's settings: greedy (n = 1); sampled, n >= 1 samples per question at the
    evaluation's temperature and the checkpoint's top-p/top-k, from the evaluation seed's streams; torchrun:
    spread."""
    args = run.args
    top_p, top_k = sampling_filters(run.tok)  # the checkpoint's, whatever --top-p/--top-k say
    sampling = dict(n=n, temperature=args.eval_temperature, seed=args.eval_seed, top_p=top_p, top_k=top_k,
                    sampled=True) if sampled else {}
    return evaluate(model, run.tok, rows, args.eval_max_new_tokens, batch_size=args.eval_batch_size,
                    progress=progress and run.rank == 0, share=(run.rank, run.nproc) if run.sharded else None,
                    **sampling)


def sample(run, model, rows):
    """The method's self-generated rollouts (upft.sample_method) and its token accounting. torchrun: each
    rank samples every nproc-th question; all ranks get every rollout, in question order. Every question
    draws from its own random streams (model.generate): the rollouts of one process, whatever the ranks."""
    args, share = run.args, (run.rank, run.nproc) if run.sharded else None
    rollouts, sampled, dropped = upft.sample_method(
        args.method, model, run.tok, [r["question"] for r in rows], [r.get("gold") for r in rows],
        args.prefix_len, args.structure_ratio, args.num_samples, share=share, prefixes=not args.full_only,
        max_new_tokens=args.max_new_tokens, seed=args.seed, batch_size=args.sample_batch_size,
        progress=run.rank == 0, temperature=args.temperature, top_p=run.top_p, top_k=run.top_k)
    if share:
        parts = all_gather_json([rollouts, sampled, dropped])
        rollouts = sorted((r for part in parts for r in part[0]), key=lambda r: r["index"])
        sampled, dropped = sum(part[1] for part in parts), sum(part[2] for part in parts)
    return rollouts, upft.sampling_accounting(args.method, len(rows), rollouts, sampled, dropped, args.num_samples)


def make_examples(run, rows, rollouts, acct, started):
    """(training examples, acct): upft.build_examples of the rollouts (the controls of §7.1 first); rank 0
    writes rollouts.jsonl, accounting.json and, last, train_examples.jsonl (the sampling is complete)."""
    args, tok, questions = run.args, run.tok, [r["question"] for r in rows]
    if args.full_only or args.random_targets:  # the controls (§7.1), on UPFT's own samples
        rollouts = upft.ablate_rollouts(rollouts, questions, args.full_only, args.random_targets, seed=args.seed)
    examples, dropped = upft.build_examples(
        tok, questions, rollouts, args.prefix_len, args.max_len, eos=not args.no_eos,
        instruction="" if args.no_instruction else upft.PREFIX_INSTRUCTION)
    acct.update(questions_used=len(examples), dropped_over_max_len=dropped,
                prefix_examples=sum(e["kind"] == "prefix" for e in examples),
                full_examples=sum(e["kind"] == "full" for e in examples),
                tokens_supervised=upft.supervised_tokens(examples), sampling_seconds=time.time() - started)
    if not examples:
        raise UpftError("no training examples (every question was dropped)")
    for r in rollouts:
        r.update(question=questions[r["index"]], response=tok.decode(r["response_ids"]))
    if run.rank == 0:
        write_jsonl(run.out / "rollouts.jsonl", rollouts)
        write_json(run.out / "accounting.json", acct)
        write_jsonl(run.out / "train_examples.jsonl", examples)  # last: the sampling phase is complete
    return examples, acct


def read_examples(run):
    """--resume: the interrupted run's training examples and accounting, read back (not sampled again)."""
    path = run.out / "train_examples.jsonl"
    examples, acct = read_jsonl(path), json.loads((run.out / "accounting.json").read_text())
    run.log(f"resume: reusing {len(examples)} training examples from {path}")
    return examples, acct


def finetune(run, model, examples, rows, eval_rows, acct):
    """fit on the examples, in an order drawn over the questions taken canonically (by their text,
    upft.canonical_order), so a shuffled data file gives the same run; the training time goes to acct."""
    args = run.args
    tc = TrainConfig(lr=args.lr, epochs=args.epochs, batch_size=args.batch_size,
                     micro_batch_size=args.micro_batch_size, loss_norm=args.loss_norm, seed=args.seed,
                     save_every=args.save_every, grad_ckpt=args.grad_ckpt, bf16=args.autocast_bf16,
                     objective="entropy" if args.method == "em" else "ce", eval_every=args.eval_every)
    subset = eval_rows[:args.eval_subset]  # held-out questions evaluated during training (--eval-every)
    evaluate_subset = functools.partial(accuracy_during_training, run, subset) if subset else None
    started = time.time()
    rank_of = {i: k for k, i in enumerate(upft.canonical_order([r["question"] for r in rows]))}
    examples = sorted(examples, key=lambda e: rank_of[e["index"]])
    fit(model, examples, tc, pad_id=run.tok.pad_id, out=run.out, resume=args.resume, desc=args.method,
        log=run.log, evaluate=evaluate_subset)
    acct["training_seconds"] = time.time() - started - run.eval_seconds  # without the evaluations during it
    acct["eval_during_training_seconds"] = run.eval_seconds


def accuracy_during_training(run, subset, model):
    """fit's `evaluate`: greedy accuracy on a fixed held-out subset, with its own inference-mode generate
    (no RNG); under torchrun from a full copy spread over the ranks, as the base and tuned accuracy."""
    started = time.time()
    _, summary = evaluate_model(run, decoder(run, model), subset, progress=False)
    run.eval_seconds += time.time() - started
    return {"eval_accuracy": summary["accuracy"], "eval_questions": summary["questions"]}


def save_model(run, model):
    """The tuned model in HF layout (out/model; torchrun: gathered); it supersedes the resumable checkpoint."""
    if run.sharded:
        save_gathered(model, run.dtype, run.out / "model", run.rank)
    else:
        model.save_pretrained(run.out / "model")
    if run.rank == 0:
        shutil.rmtree(run.out / "checkpoint", ignore_errors=True)


def write_results(run, base, tuned, acct, t0):
    """results.json: the settings that name the run, base and tuned accuracy, the token accounting, the time."""
    args = run.args
    results = {"method": args.method, "prefix_len": args.prefix_len, "structure_ratio": args.structure_ratio,
               "num_samples": args.num_samples, "seed": args.seed, "loss_norm": args.loss_norm,
               "controls": [k for k in ABLATIONS if getattr(args, k)], "base": base[0], "tuned": tuned[0],
               "base_sampled": base[1], "tuned_sampled": tuned[1],
               "accounting": acct, "wall_seconds": time.time() - t0,
               # a resumed run's clocks (wall, training) restart at the resume: its times are partial
               "resumed": bool(args.resume)}
    if run.rank == 0:
        write_json(run.out / "results.json", results)
    return results


def report(results, out):  # the lines a finished run prints
    acct = results["accounting"]
    lines = [f"\n== {results['method']} (L={results['prefix_len']}, p={results['structure_ratio']}, "
             f"N={results['num_samples']}, seed={results['seed']}) -> {out}",
             f"base  accuracy: {accuracy_line(results['base'], results.get('base_sampled'))}",
             f"tuned accuracy: {accuracy_line(results['tuned'], results.get('tuned_sampled'))}",
             f"questions: {acct['questions']} sampled, {acct['questions_used']} trained on "
             f"({acct['prefix_examples']} prefix + {acct['full_examples']} full)",
             f"tokens sampled: {acct['tokens_sampled']:,}   tokens supervised: {acct['tokens_supervised']:,}",
             f"wall time: {results['wall_seconds']:.0f}s"]
    return "\n".join(lines)


def main(argv=None):
    try:
        args = parse_args(argv)
        if args.plan is not None:
            return print_plan(args)
        run(args)
        if dist.is_initialized():
            dist.destroy_process_group()
    except UpftError as e:  # exit 2: bad input; 1: the machine (UpftFault)
        if int(os.environ.get("RANK", 0)) == 0:  # torchrun: every rank checks alike; one line, not N
            print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
