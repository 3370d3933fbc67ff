"""UPFT end to end, and the masked cross-entropy loop every training in upft goes through.

    python train.py --prefix-len 8                      # the embedded toy world (shipped in assets/toy)
    python train.py --model DIR_OR_ID --data train.jsonl --eval-data test.jsonl --prefix-len 8
    torchrun --nproc-per-node 8 train.py --model ... --device cuda   # several GPUs (fsdp.py)

Top to bottom: the loss (masked_ce_sum, micro_batch_loss, accumulate_grads), the loop (lr_at, fit), then
UPFT end to end in eight numbered steps (`upft_steps`; docs/method.md §3). Skippable, beside it: cli.py
(the flags), plan.py (the memory plan), runfolder.py (the run folder, checkpoints, faults), fsdp.py.

The loss (docs/method.md §4): the sum of token cross-entropy over every supervised token of an optimizer
step / that step's supervised-token count (Eq. 8 read literally), or with `--loss-norm sample` the
official code's per-sample mean. AdamW (0.9, 0.95), weight decay 0, clip 1.0, constant LR after a 3%
linear warmup. fp32 on CPU; bf16 autocast on CUDA. Left out: torch.compile, packing.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts OpenMP: README, "A busy machine"

import torch
import torch.nn.functional as F

import upft
from cli import ABLATIONS, TOY_NOTE, load_inputs, parse_args, plan_for, print_plan
from data import (IGNORE, Progress, Tokenizer, UpftError, sampling_filters, supervised_count, write_json,
                  write_jsonl)
from eval import accuracy_line, evaluate
from fsdp import Launch, gather_rollouts, load_sharded_model, save_gathered
from model import Config, Transformer, gather_full
from plan import format_plan, plan_line, plan_record
from runfolder import FitExtras, check_resume, copy_base_eval, read_examples, run_folder

# ----------------------------------------------------------------------------- the loss


def masked_ce_sum(h, labels, head=None, entropy=False):
    """(Sum of next-token cross-entropy over the supervised positions, their count): Eq. 8's log-likelihoods.
    h (B, T, C) with head(rows) -> logits, or h = the logits (B, T, V) themselves (head None); labels (B, T)
    aligned with input_ids, IGNORE where not trained. entropy (EM-FT, §7): the target is the model's own
    distribution, so each term is its entropy H(p) = CE(p, p). Exercise: docs/teaching.md, "The contracts"."""
    # >>> exercise: masked_ce_sum
    rows, targets = h[:, :-1], labels[:, 1:]                   # position t predicts labels[t + 1]: the shift
    keep = targets != IGNORE                                   # (B, T-1): the supervised positions
    logits = (rows[keep] if head is None else head(rows[keep])).float()  # (N, V): those rows only, in fp32
    loss = F.cross_entropy(logits, logits.softmax(-1) if entropy else targets[keep], reduction="sum")
    return loss, int(keep.sum())
    # <<< exercise: masked_ce_sum


def micro_batch_loss(model, ids, labels, per_sample=False, entropy=False, chunk=0):
    """(loss sum, count) of one micro-batch: masked_ce_sum of the model's last hidden states with its head (on
    the supervised rows only: ~9 of ~150 positions of a prefix example); per_sample: each sample's token mean,
    summed, and the count is of samples (the official code). chunk: windowed_ce_sum."""
    h = model(ids, hidden=True)  # (B, T, C): the last layer's output, before the final norm and lm_head
    if not per_sample:
        return windowed_ce_sum(h, labels, model.head, entropy, chunk)
    parts = [windowed_ce_sum(h[b:b + 1], labels[b:b + 1], model.head, entropy, chunk) for b in range(len(h))]
    return sum(loss / max(n, 1) for loss, n in parts), sum(n > 0 for _, n in parts)


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


def accumulate_grads(model, examples, micro_batch_size, pad_id, loss_sum=micro_batch_loss, normaliser=None,
                     autocast=None):
    """Backward over one optimizer step's examples in micro-batches, adding to .grad the gradient of
    (sum of the step's losses) / normaliser (default: its supervised tokens), however the step is split.
    Returns (that mean loss, normaliser). Exercise: docs/teaching.md, "The contracts"."""
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
    loss_chunk: int = 0           # rows of logits at a time in the loss (0: all at once; micro_batch_loss)


def lr_at(step, total_steps, tc: TrainConfig):
    """The learning rate of 0-based `step`: linear warmup over the first tc.warmup_ratio of the steps, then
    constant (the paper's constant_with_warmup), or (toy pretraining) cosine to 10% of the peak.
    Exercise: docs/teaching.md, "The contracts"."""
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
    """Train `model` in place on examples ({"input_ids", "labels"}); returns the per-step metrics. Lines
    marked `# ---` are extras (runfolder.FitExtras): metrics and resumable checkpoints in `out`, `evaluate`
    every tc.eval_every steps, each process's part of a step when there are several."""
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=(0.9, 0.95), weight_decay=0.0,
                            foreach=device.type == "cuda")
    loss_sum = functools.partial(micro_batch_loss, per_sample=tc.loss_norm == "sample",
                                 entropy=tc.objective == "entropy", chunk=tc.loss_chunk)
    steps = step_batches(len(examples), tc)
    stop = min(len(steps), tc.max_steps or len(steps))
    extras = FitExtras(model, opt, tc, out, evaluate, log)                # ---
    start = extras.first_step(resume, len(steps))                          # --- resumed: the checkpoint's step
    autocast = autocast_for(device, extras.sharded, tc.bf16)
    model.train()
    model.gradient_checkpointing = tc.grad_ckpt  # only in train mode: evaluation never recomputes
    history = []
    bar = Progress(stop, desc, "step", initial=start, enabled=extras.writes)
    for step in range(start, stop):
        lr = lr_at(step, len(steps), tc)
        for g in opt.param_groups:
            g["lr"] = lr
        batch = [examples[i] for i in steps[step]]
        n = step_count(batch, tc.loss_norm)                                # the normaliser of the whole step
        batch = extras.share(batch, pad_id)                                # --- this process's part of it
        loss, n = accumulate_grads(model, batch, tc.micro_batch_size, pad_id, loss_sum, n, autocast)
        loss = extras.step_loss(loss, n)                                   # ---
        grad_norm = 0.0
        if n > 0:
            grad_norm = extras.norm(torch.nn.utils.clip_grad_norm_(model.parameters(), tc.max_grad_norm))  # ---
            opt.step()
            extras.after_update()                                          # --- memory_measured.json
        opt.zero_grad(set_to_none=True)
        rec = {"step": step + 1, "loss": loss, "lr": lr, "grad_norm": grad_norm,
               "supervised_tokens" if tc.loss_norm == "token" else "samples": n}
        history.append(rec)
        bar.update(loss=f"{loss:.4f}")
        extras.after_step(rec, stop)                                       # --- metrics, evaluation, checkpoint
    bar.close()
    model.eval()
    return history


def autocast_for(device, sharded, cpu_bf16):
    """The autocast of the forward and the loss, or None: bf16 on CUDA (a sharded model: FSDP's
    mixed-precision policy casts instead); on CPU only when asked (--autocast-bf16)."""
    if cpu_bf16 and device.type == "cpu":  # the option for CPUs with fast bf16
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and not sharded else None


# ----------------------------------------------------------------------------- UPFT, end to end

@dataclass
class RunContext:
    """What the steps of one run share."""
    args: argparse.Namespace
    tok: Tokenizer
    out: Path                    # the run folder while it is built (<out>.partial)
    log: object                  # print on the process that writes, nothing on the others
    launch: Launch               # this process: plain python is one (fsdp.py)
    dtype: torch.dtype           # of the weights (--dtype)
    top_p: float                 # the sampling's filters: --top-p / --top-k, else the checkpoint's
    top_k: int
    eval_seconds: float = 0.0    # spent evaluating during training (--eval-every)


def run(args, log=print):
    """One run: every input checked and the memory plan made before anything is written; then `upft_steps`
    in the run folder (runfolder.run_folder). Returns results.json."""
    t0 = time.time()
    launch = Launch.start(args.device)
    log = log if launch.writes else (lambda *_: None)
    model_dir, tok, rows, eval_rows = load_inputs(args)  # bad input fails here: nothing written yet
    check_resume(args, launch)
    cfg = Config.from_json(Path(model_dir) / "config.json")
    plan = plan_for(args, cfg, launch, has_eval=bool(eval_rows))
    # the whole plan when it matters: a real checkpoint, torchrun, or a plan that does not fit
    log(format_plan(plan) if args.model or launch.sharded or plan.fix else plan_line(plan))
    if plan.fix:  # refuse before loading anything
        raise UpftError(plan.fix)
    # the decoding batches and the loss windows: the flags', or the plan's (recorded in args.json)
    args.sample_batch_size, args.eval_batch_size, args.loss_chunk = (plan.sample_batch_size, plan.eval_batch_size,
                                                                     plan.loss_chunk)
    top_p, top_k = sampling_filters(tok, args.top_p, args.top_k)
    records = {"memory_plan.json": plan_record(cfg, plan),
               "args.json": {**vars(args), "model_dir": str(model_dir), "top_p_used": top_p, "top_k_used": top_k}}
    with run_folder(args, launch, records, log) as out:
        ctx = RunContext(args, tok, out, log, launch, getattr(torch, args.dtype), top_p, top_k)
        results = upft_steps(ctx, model_dir, rows, eval_rows, t0)
    log(report(results, args.out) + ("" if args.model else "\n" + TOY_NOTE))
    return results


def upft_steps(ctx, model_dir, rows, eval_rows, t0):
    """UPFT's steps, in order (docs/method.md §3)."""
    args = ctx.args
    torch.manual_seed(args.seed)
    # 1. load the model (under torchrun each process holds its shards only: fsdp.py)
    model = load_sharded_model(model_dir, ctx.launch.device, ctx.dtype) if ctx.launch.sharded else \
        Transformer.from_pretrained(model_dir, device=args.device, dtype=ctx.dtype)
    # 2. the base model's accuracy on the held-out questions (reused: --resume, --base-from)
    decoding_model = model_for_decoding(ctx, model)
    copy_base_eval(args, ctx.out, ctx.launch)
    base = accuracy(ctx, "base", decoding_model, eval_rows, reuse=args.resume or bool(args.base_from))
    # 3. sample ONE answer per question from the model itself (a resumed run reuses its samples)
    resumed = args.resume and (ctx.out / "train_examples.jsonl").exists()
    started = time.time()
    rollouts, accounting = (None, None) if resumed else sample(ctx, decoding_model, rows)
    del decoding_model
    if "cuda" in args.device:
        torch.cuda.empty_cache()  # the decoding copy and its cache, before training
    # 4. the training examples: prompt (+ the prefix instruction), the sampled tokens, EOS
    examples, accounting = (read_examples(ctx.out, ctx.log) if resumed else
                            make_examples(ctx, rows, rollouts, accounting, started))
    # 5. train: fit, the masked cross-entropy loop (accuracy during training with --eval-every)
    finetune(ctx, model, examples, rows, eval_rows, accounting)
    # 6. save the tuned model in HF layout (it supersedes the resumable checkpoint)
    if ctx.launch.sharded:  # the full weights gathered, written by one process
        save_gathered(model, ctx.dtype, ctx.out / "model", ctx.launch.rank)
    else:
        model.save_pretrained(ctx.out / "model")
    # 7. the tuned model's accuracy
    tuned = accuracy(ctx, "tuned", model_for_decoding(ctx, model), eval_rows)
    # 8. the results: accuracy before and after, the token accounting, the time
    return write_results(ctx, base, tuned, accounting, t0)


def model_for_decoding(ctx, model):
    """The model to sample and evaluate with: itself, or a bf16 copy (--decode-bf16); with several processes
    a full copy (bf16 on CUDA; the plan counts it), as decoding through the shards would gather every layer."""
    bf16 = "cuda" in ctx.args.device or ctx.args.decode_bf16
    if ctx.launch.sharded:
        return gather_full(model, torch.bfloat16 if bf16 else ctx.dtype, ctx.launch.device)
    return model.to_dtype_copy(torch.bfloat16) if ctx.args.decode_bf16 else model


def accuracy(ctx, tag, model, eval_rows, reuse=None):
    """(greedy summary, sampled summary or None) on the held-out questions; records and summaries to
    eval_<tag>[_sampled].json[l]. `reuse` (default --resume): what is already there is read back."""
    args = ctx.args
    if not eval_rows:
        return None, None
    results = []
    for suffix, n in (("", 1), ("_sampled", args.eval_samples)):
        path, summary = ctx.out / f"eval_{tag}{suffix}.json", None
        if n and (args.resume if reuse is None else reuse) and path.exists():
            summary = json.loads(path.read_text())
        elif n:
            records, summary = evaluate_model(ctx, model, eval_rows, n, tag, sampled=bool(suffix))
            if ctx.launch.writes:
                write_jsonl(ctx.out / f"eval_{tag}{suffix}.jsonl", records)
                write_json(path, summary)
        results.append(summary)
    greedy, sampled = results
    ctx.log(f"{tag} accuracy on {len(eval_rows)} held-out questions: greedy {greedy['accuracy']:.1%}" +
            (f", sampled {sampled['accuracy']:.1%} (pass@{args.eval_samples} {sampled['pass@n']:.1%})"
             if sampled else ""))
    return greedy, sampled


def evaluate_model(ctx, model, rows, n=1, tag=None, sampled=False):
    """eval.evaluate with the run's settings: greedy; `sampled`, n >= 1 samples per question at the
    evaluation's temperature and the checkpoint's top-p/top-k, from the evaluation seed's streams."""
    args = ctx.args
    top_p, top_k = sampling_filters(ctx.tok)  # the checkpoint's, whatever --top-p/--top-k say
    sampling = dict(n=n, temperature=args.eval_temperature, seed=args.eval_seed, top_p=top_p, top_k=top_k,
                    sampled=True) if sampled else {}
    shown = ctx.launch.writes and tag and f"{tag} model, " + (f"{n} samples each" if sampled else "greedy")
    return evaluate(model, ctx.tok, rows, args.eval_max_new_tokens, batch_size=args.eval_batch_size, progress=shown,
                    share=ctx.launch.share, **sampling)


def sample(ctx, model, rows):
    """The method's self-generated rollouts (upft.sample_method) and their token accounting; each process
    samples its share of the questions (each question draws from its own random streams: model.generate)."""
    args, share = ctx.args, ctx.launch.share
    rollouts, sampled, dropped = upft.sample_method(
        args.method, model, ctx.tok, [r["question"] for r in rows], [r.get("gold") for r in rows],
        args.prefix_len, args.structure_ratio, args.num_samples, share=share, prefixes=not args.full_only,
        max_new_tokens=args.max_new_tokens, seed=args.seed, batch_size=args.sample_batch_size,
        progress=ctx.launch.writes, temperature=args.temperature, top_p=ctx.top_p, top_k=ctx.top_k)
    if share:  # every process gets every rollout, in question order
        rollouts, sampled, dropped = gather_rollouts(rollouts, sampled, dropped)
    return rollouts, upft.sampling_accounting(args.method, len(rows), rollouts, sampled, dropped, args.num_samples)


def make_examples(ctx, rows, rollouts, accounting, started):
    """(training examples, accounting): upft.build_examples of the rollouts (the controls of §7.1 first);
    rollouts.jsonl, accounting.json and, last, train_examples.jsonl (the sampling is complete)."""
    args, tok, questions = ctx.args, ctx.tok, [r["question"] for r in rows]
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
    if ctx.launch.writes:
        write_jsonl(ctx.out / "rollouts.jsonl", rollouts)
        write_json(ctx.out / "accounting.json", accounting)
        write_jsonl(ctx.out / "train_examples.jsonl", examples)  # last: the sampling phase is complete
    return examples, accounting


def finetune(ctx, model, examples, rows, eval_rows, accounting):
    """fit on the examples, in an order drawn over the questions taken canonically (by their text,
    upft.canonical_order), so a shuffled data file gives the same run; the training time goes to accounting."""
    args = ctx.args
    tc = TrainConfig(lr=args.lr, epochs=args.epochs, batch_size=args.batch_size,
                     micro_batch_size=args.micro_batch_size, loss_norm=args.loss_norm, seed=args.seed,
                     save_every=args.save_every, grad_ckpt=args.grad_ckpt, bf16=args.autocast_bf16,
                     objective="entropy" if args.method == "em" else "ce", eval_every=args.eval_every,
                     loss_chunk=args.loss_chunk)
    subset = eval_rows[:args.eval_subset]  # held-out questions evaluated during training (--eval-every)
    evaluate_subset = functools.partial(accuracy_during_training, ctx, subset) if subset else None
    started = time.time()
    order = {i: k for k, i in enumerate(upft.canonical_order([r["question"] for r in rows]))}
    examples = sorted(examples, key=lambda e: order[e["index"]])
    fit(model, examples, tc, pad_id=ctx.tok.pad_id, out=ctx.out, resume=args.resume, desc=args.method,
        log=ctx.log, evaluate=evaluate_subset)
    accounting["training_seconds"] = time.time() - started - ctx.eval_seconds  # without the evaluations during it
    accounting["eval_during_training_seconds"] = ctx.eval_seconds


def accuracy_during_training(ctx, subset, model):
    """fit's `evaluate`: greedy accuracy on a fixed held-out subset (greedy draws no random number)."""
    started = time.time()
    _, summary = evaluate_model(ctx, model_for_decoding(ctx, model), subset)
    ctx.eval_seconds += time.time() - started
    return {"eval_accuracy": summary["accuracy"], "eval_questions": summary["questions"]}


def write_results(ctx, base, tuned, accounting, t0):
    """results.json: the settings that name the run, base and tuned accuracy, the token accounting, the time."""
    args = ctx.args
    results = {"method": args.method, "prefix_len": args.prefix_len, "structure_ratio": args.structure_ratio,
               "num_samples": args.num_samples, "seed": args.seed, "loss_norm": args.loss_norm,
               "controls": [k for k in ABLATIONS if getattr(args, k)], "base": base[0], "tuned": tuned[0],
               "base_sampled": base[1], "tuned_sampled": tuned[1],
               "accounting": accounting, "wall_seconds": time.time() - t0,
               "resumed": bool(args.resume)}  # a resumed run's clocks restart at the resume: its times are partial
    if ctx.launch.writes:
        write_json(ctx.out / "results.json", results)
    return results


def report(results, out):  # the lines a finished run prints
    accounting = results["accounting"]
    lines = [f"\n== {results['method']} (L={results['prefix_len']}, p={results['structure_ratio']}, "
             f"N={results['num_samples']}, seed={results['seed']}) -> {out}",
             f"base  accuracy: {accuracy_line(results['base'], results.get('base_sampled'))}",
             f"tuned accuracy: {accuracy_line(results['tuned'], results.get('tuned_sampled'))}",
             f"questions: {accounting['questions']} sampled, {accounting['questions_used']} trained on "
             f"({accounting['prefix_examples']} prefix + {accounting['full_examples']} full)",
             f"tokens sampled: {accounting['tokens_sampled']:,}   "
             f"tokens supervised: {accounting['tokens_supervised']:,}",
             f"wall time: {results['wall_seconds']:.0f}s"]
    return "\n".join(lines)


def main(argv=None):
    try:
        args = parse_args(argv)
        if args.plan is not None:
            return print_plan(args)
        run(args)
        Launch.finish()
    except UpftError as e:  # exit 2: bad input; 1: the machine (UpftFault)
        if Launch.first_process():  # every process checks alike: one line, not one per process
            print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
