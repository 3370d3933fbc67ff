"""UPFT end to end, and the one masked cross-entropy loop that every training in upft goes through.

    python train.py --prefix-len 8                      # the embedded toy world (shipped in assets/toy)
    python train.py --model DIR_OR_ID --data train.jsonl --eval-data test.jsonl --prefix-len 8
    torchrun --nproc-per-node 8 train.py --model ... --device cuda   # sharded with FSDP2 (section "torchrun")
    python train.py --plan 8 --model DIR_OR_ID --device cuda         # the memory plan per GPU, then exit

Steps (docs/method.md §3): check every input; load the model; greedy base accuracy on the eval set;
sample ONE answer per question from the model itself (upft.py: prefix-only decoding for D_p, full
traces for the fraction p); build the training examples; train; save in HF layout; tuned accuracy;
token accounting.

The loss (docs/method.md §4): the sum of token cross-entropy over every supervised token of an
optimizer step, divided by that step's supervised-token count, so gradient accumulation with unequal
micro-batches equals one big batch, and every token weighs the same (Eq. 8 read literally). Under
torchrun the count is the whole step's, over all ranks. `--loss-norm sample` reproduces the official
code's weighting instead (each sample's token mean, averaged over the step's samples). AdamW (0.9,
0.95), weight decay 0, clip 1.0, constant LR after a 3% linear warmup. fp32 on CPU; bf16 autocast on
CUDA (sharded: bf16 compute, fp32 master weights and gradient reduction).

The run folder is built as `<out>.partial` and renamed to `<out>` when the run is complete, so a
folder without that suffix is always a finished run. A failed run deletes its `.partial` folder unless
it holds something worth resuming (its samples or a training checkpoint); then `--resume` continues it.
Outputs: args.json, memory_plan.json / memory_measured.json, rollouts.jsonl, train_examples.jsonl (the
exact input_ids/labels trained on), accounting.json, metrics.jsonl, eval_{base,tuned}.json[l],
results.json, model/ (HF layout). Left out: torch.compile, packing.
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
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts OpenMP: README, "A busy machine"

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file

import toy
import upft
from data import (IGNORE, Progress, Tokenizer, UpftError, UpftFault, atomic_dir, chat_prompt, load_rows, read_jsonl,
                  resolve, supervised_count, write_json, write_jsonl)
from eval import evaluate, summarize
from model import HEAD_CHUNK, Config, Transformer, gather_full, load_shards, save_safetensors, shard_rows

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
    sharded = is_sharded(model)
    rank, world = (dist.get_rank(), dist.get_world_size()) if sharded else (0, 1)
    device = next(model.parameters()).device
    # bf16 on CUDA: autocast for one process; sharded, FSDP's mixed-precision policy casts instead
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and not sharded else None
    if tc.bf16 and device.type == "cpu":  # the option for CPUs with fast bf16 (--autocast-bf16)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=(0.9, 0.95), weight_decay=0.0,
                            foreach=device.type == "cuda")
    # the loss of a micro-batch: the head and the loss on the supervised rows only (Transformer.supervised_loss)
    loss_sum = functools.partial(supervised_rows_loss, objective=tc.objective, per_sample=tc.loss_norm == "sample")
    steps = step_batches(len(examples), tc)
    start, stop = 0, min(len(steps), tc.max_steps or len(steps))
    metrics_path = Path(out) / "metrics.jsonl" if out else None
    if resume and out and (Path(out) / "checkpoint").is_dir():
        start = (load_sharded_checkpoint if sharded else load_checkpoint)(Path(out) / "checkpoint", model, opt)
        log(f"resumed from {Path(out) / 'checkpoint'} at step {start}/{len(steps)}")
    elif metrics_path and metrics_path.exists() and rank == 0:
        metrics_path.unlink()

    def log_metrics(rec):
        if metrics_path and rank == 0:
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
        gnorm = 0.0
        if n > 0:
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.max_grad_norm)
            gnorm = float(gnorm.full_tensor() if sharded else gnorm)  # sharded: the norm over all ranks
            opt.step()
            if out and not measured:  # the memory plan's static figures, measured (memory_measured.json)
                record_state_bytes(Path(out) / "memory_measured.json", model, opt, rank)
                measured = True
        opt.zero_grad(set_to_none=True)
        rec = {"step": step + 1, "loss": loss, "lr": lr, "grad_norm": gnorm,
               "supervised_tokens" if tc.loss_norm == "token" else "samples": n}
        history.append(rec)
        bar.update(loss=f"{loss:.4f}")
        log_metrics(rec)
        if evaluating and ((step + 1) % tc.eval_every == 0 or step + 1 == stop):
            eval_now(step + 1)
        if out and tc.save_every and (step + 1) % tc.save_every == 0 and step + 1 < stop:
            (save_sharded_checkpoint if sharded else save_checkpoint)(Path(out) / "checkpoint", model, opt,
                                                                      step + 1)
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


# ----------------------------------------------------------------------------- torchrun: FSDP2 and collectives
# The paper fine-tunes 7-8B models in full on 8 GPUs (its hyperparameters: App. B, Table 3); its released
# code runs bf16 DeepSpeed ZeRO-3. Here the same sharding is PyTorch's own FSDP2 (`fully_shard`):
# `torchrun --nproc-per-node N train.py ...`.
# Each rank holds 1/N of the fp32 master weights, gradients and AdamW moments; a layer's full weights
# exist only while it runs. Without torchrun nothing below is used and `python train.py` is unchanged.

def init_distributed(device):
    """(rank, world, this rank's device). Under torchrun (LOCAL_RANK set) join the process group first:
    NCCL on CUDA (one GPU per process), gloo on CPU."""
    if "LOCAL_RANK" not in os.environ:
        return 0, 1, device
    if torch.device(device).type == "cuda":
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def is_sharded(model):
    from torch.distributed.fsdp import FSDPModule
    return isinstance(model, FSDPModule)


def sharded_step(examples, count, micro_batch_size, pad_id):
    """torchrun: (the step's normaliser, all ranks' counts summed, so that no rank divides by its own;
    this rank's examples, padded with fully masked ones so that every rank runs as many micro-batches as
    the busiest: FSDP's all-gathers and reduce-scatters must pair up across ranks). A masked row's loss
    and gradient are exactly 0 (no NaN), and FSDP sums the ranks' gradients, so any split over ranks
    equals one big batch."""
    total = all_reduce([count], "sum")[0]
    n_micro = all_reduce([-(-len(examples) // micro_batch_size)], "max")[0]
    short = max(0, (n_micro - 1) * micro_batch_size + 1 - len(examples))
    return total, examples + [{"input_ids": [pad_id, pad_id], "labels": [IGNORE, IGNORE]}] * short


def load_sharded_model(model_dir, device, dtype):
    """Build the model on the meta device (no memory), shard every decoder layer and then the root with
    fully_shard, allocate only this rank's shards and read them from the checkpoint (model.load_shards).

    On CUDA the policy is bf16 compute with fp32 master weights and an fp32 gradient reduce-scatter
    (what ZeRO-3 with bf16 does); on CPU everything stays in `dtype` (fp32) and gloo carries it."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
    path = resolve(model_dir)
    cfg = Config.from_json(path / "config.json")
    with torch.device("meta"):
        model = Transformer(cfg).to(dtype)
    mesh = init_device_mesh(torch.device(device).type, (dist.get_world_size(),))
    cuda = torch.device(device).type == "cuda"
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if cuda else \
        MixedPrecisionPolicy()
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)  # the root: embeddings, final norm, lm_head
    for m in model.modules():
        if isinstance(m, FSDPModule):
            # FSDP averages gradients over ranks by default (each rank's loss a local mean, as in DDP);
            # our loss is already divided by the whole step's count, so the ranks' gradients are summed.
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)
    model.to_empty(device=device)
    load_shards(model, path, dtype)
    cfg.torch_dtype = str(dtype).removeprefix("torch.")
    model.source_dir = path
    return model.eval()


def _comm_device():
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"


def all_reduce(values, op="sum", dtype=torch.int64):
    """Element-wise sum or max of a list of numbers over ranks."""
    t = torch.tensor(values, dtype=dtype, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return t.tolist()


def all_gather_json(obj):
    """Every rank's `obj` (JSON-serialisable), in rank order, on every rank. Sent as UTF-8 bytes in a
    uint8 tensor rather than through all_gather_object, which pickles."""
    data = torch.frombuffer(bytearray(json.dumps(obj).encode()), dtype=torch.uint8).to(_comm_device())
    sizes = [torch.zeros(1, dtype=torch.int64, device=data.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([data.numel()], device=data.device))
    longest = max(int(n) for n in sizes)
    bufs = [torch.zeros(longest, dtype=torch.uint8, device=data.device) for _ in sizes]
    dist.all_gather(bufs, torch.cat([data, data.new_zeros(longest - data.numel())]))
    return [json.loads(bytes(b[:int(n)].cpu().tolist())) for b, n in zip(bufs, sizes)]


def state_bytes(model, opt):
    """Bytes this rank holds in parameters, gradients and optimizer state (local shards when sharded;
    a tied head counted once; AdamW's `step` scalars included, 4 bytes each)."""
    def nbytes(t):
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()
    params = list(model.parameters())
    return {"weights": sum(nbytes(p) for p in params),
            "grads": sum(nbytes(p.grad) for p in params if p.grad is not None),
            "optimizer": sum(nbytes(v) for st in opt.state.values() for v in st.values() if torch.is_tensor(v))}


def record_state_bytes(path, model, opt, rank):
    """Write every rank's state_bytes to `path` (rank 0 writes; all ranks must call when sharded)."""
    mine = state_bytes(model, opt)
    ranks = all_gather_json(mine) if is_sharded(model) else [mine]
    if rank == 0:
        write_json(path, {"ranks": ranks})


def save_sharded_checkpoint(path: Path, model, opt, step):
    """torchrun: each rank writes its own shards (weights, AdamW moments and steps) and its RNG to
    rank<r>.safetensors in the folder rank 0 builds aside (atomic_dir); once all have, rank 0 adds
    meta.json (step, world size, the rows each rank holds) and swaps the folder in. No pickle anywhere
    (torch.distributed.checkpoint pickles its metadata). A rank that dies midway leaves the previous
    checkpoint untouched."""
    rank, world = dist.get_rank(), dist.get_world_size()
    local = lambda t: t.to_local() if hasattr(t, "to_local") else t  # noqa: E731
    tensors = {}
    for n, p in model.named_parameters():
        tensors[f"model.{n}"] = local(p.detach()).contiguous().cpu()
        for k, v in opt.state.get(p, {}).items():
            tensors[f"opt.{k}.{n}"] = local(v).detach().reshape(-1 if k == "step" else local(v).shape).cpu()
    tensors["rng.torch"] = torch.get_rng_state()
    with atomic_dir(path) if rank == 0 else contextlib.nullcontext() as tmp:
        tmp = Path(all_gather_json(str(tmp) if rank == 0 else None)[0])  # rank 0's folder, for every rank
        save_safetensors(tensors, tmp / f"rank{rank:05d}.safetensors")
        dist.barrier()  # every shard is written
        if rank == 0:
            layout = {n: {"shape": list(p.shape), "rows": [shard_rows(p.shape[0], world, r) for r in range(world)]}
                      for n, p in model.named_parameters()}
            write_json(tmp / "meta.json", {"step": step, "world_size": world, "layout": layout})
    dist.barrier()  # swapped in


def checkpoint_world(path: Path):
    """The number of processes a checkpoint was written by (None for a plain `python train.py` one)."""
    try:
        return json.loads((path / "meta.json").read_text()).get("world_size")
    except (OSError, json.JSONDecodeError) as e:
        raise UpftError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e})") from None


def load_sharded_checkpoint(path: Path, model, opt):
    rank, world = dist.get_rank(), dist.get_world_size()
    if checkpoint_world(path) != world:
        raise UpftError(f"{path}: written by {checkpoint_world(path) or 'plain python'} process(es); "
                        f"resume it with the same launch, not {world} processes")
    try:
        t = load_file(path / f"rank{rank:05d}.safetensors")
    except Exception as e:
        raise UpftError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e})") from None
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.to_local().copy_(t[f"model.{n}"])
            if f"opt.exp_avg.{n}" in t:
                st = {"step": t[f"opt.step.{n}"].reshape(())}
                for k in ("exp_avg", "exp_avg_sq"):
                    st[k] = torch.zeros_like(p)  # a DTensor sharded like p
                    st[k].to_local().copy_(t[f"opt.{k}.{n}"])
                opt.state[p] = st
    torch.set_rng_state(t["rng.torch"])
    return json.loads((path / "meta.json").read_text())["step"]


# ----------------------------------------------------------------------------- memory plan
# Bytes per rank, printed at the start of every run and by --plan. The static figures are exact (the
# tensors fit() holds after an optimizer step; tests/test_dist.py compares them with the real ones);
# activations, FSDP's transient buffers and decoding are estimates from the formulas below.

GiB = 2 ** 30
PROMPT_TOKENS = 512     # prompt slots assumed per decoded sequence (chat template + a MATH-style question)
USABLE = 0.9            # share of a GPU's memory the plan may fill (CUDA context, NCCL, fragmentation)
PLAN_GPU_GIB = 79.0     # --plan without a GPU: about what an "80 GB" A100 / H100 reports
MAX_DECODE_BATCH = 1024


@functools.lru_cache(maxsize=8)
def _param_shapes(cfg_json):
    """Shapes of the unique parameters (a tied head once), and the parameter count of one decoder layer
    and of the root (embeddings, final norm, head): FSDP's units."""
    with torch.device("meta"):
        m = Transformer(Config.from_dict(json.loads(cfg_json)))
    layer = sum(p.numel() for p in m.model.layers[0].parameters())
    shapes = tuple(tuple(p.shape) for p in m.parameters())
    root = sum(math.prod(s) for s in shapes) - layer * len(m.model.layers)
    return shapes, layer, root


def memory_plan(cfg, world=1, rank=0, sharded=False, cuda=False, master_bytes=4, micro_batch=1, max_len=4096,
                grad_ckpt=False, sample_batch=64, sample_tokens=4096, eval_batch=64, eval_tokens=4096,
                prompt_tokens=PROMPT_TOKENS):
    """Bytes one rank needs, by kind; `sharded` = under torchrun (FSDP2), else the plain single process.

    exact:     weights, grads (this rank's shard of every parameter, master dtype), optimizer (AdamW's
               exp_avg and exp_avg_sq, plus one 4-byte float32 `step` scalar per tensor, which torch
               keeps on the CPU even on CUDA).
    estimates, with a = bytes of an activation (2 on CUDA: bf16 compute; else the master dtype):
      gathered     sharded: the root's parameters (unsharded for the whole step) + 3 layers in a
                   (running, prefetched, its gradient) + the fp32 reduce-scatter input of one layer;
                   plain CUDA: autocast's cached bf16 copy of every weight.
      activations  saved for backward per token and layer: a*(2C + (5H + 4K)D + 4I) + 8C (norm inputs
                   in fp32, q/k/v, rotated q/k, attention in/out, the SwiGLU products); with gradient
                   checkpointing only each layer's input (C*a) plus one layer recomputed;
                   times micro_batch * max_len tokens.
      logits       the loss head on supervised rows (Transformer.supervised_loss): one chunk of
                   min(tokens, HEAD_CHUNK) rows, V*(a + 12) + C*(a + 4) bytes each (the head's output, its
                   fp32 copy, log-softmax and its gradient, the normed rows), + the supervised rows' hidden
                   states and their gradient (every position supervised at worst: 2*C*a per token) + the
                   head's gradient, accumulated over the chunks and one chunk's (2*V*C*a).
      decoding     the weights decoded with (sharded: a full copy, bf16 on CUDA) + the KV cache
                   2 * layers * batch * K * (prompt + budget) * D * bytes + the prefill's working set
                   (one layer's activations and attention scores for batch * prompt tokens).
    """
    shapes, layer_n, root_n = _param_shapes(json.dumps(cfg.to_dict(), sort_keys=True))
    n_all = sum(math.prod(s) for s in shapes)
    local = sum(shard_rows_of(s, world, rank) for s in shapes) if sharded else n_all
    a = 2 if cuda else master_bytes
    C, I, V, L = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_hidden_layers
    H, K, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    p = {"weights": local * master_bytes, "grads": local * master_bytes,
         "optimizer": 2 * local * master_bytes + 4 * len(shapes)}
    p["gathered"] = ((root_n + 3 * layer_n) * a + 4 * layer_n if sharded else 2 * n_all if cuda else 0)
    per_layer = a * (2 * C + (5 * H + 4 * K) * D + 4 * I) + 8 * C
    tokens = micro_batch * max_len
    p["activations_full"] = tokens * L * per_layer
    p["activations_ckpt"] = tokens * (L * C * a + per_layer)
    p["activations"] = p["activations_ckpt"] if grad_ckpt else p["activations_full"]
    p["logits"] = (min(tokens, HEAD_CHUNK) * (V * (a + 12) + C * (a + 4)) + 2 * tokens * C * a + 2 * V * C * a)
    p["train_total"] = sum(p[k] for k in ("weights", "grads", "optimizer", "gathered", "activations", "logits"))
    d = 2 if (sharded and cuda) else master_bytes   # bytes of a decoded weight / cache entry
    p["decode_weights"] = n_all * d if sharded else 0
    for phase, batch, budget in (("sample", sample_batch, sample_tokens), ("eval", eval_batch, eval_tokens)):
        kv, prefill = decode_row_bytes(cfg, prompt_tokens, budget, d)
        p[f"{phase}_batch"], p[f"{phase}_tokens"] = batch, budget
        p[f"{phase}_kv"], p[f"{phase}_prefill"] = batch * kv, batch * prefill
        p[f"{phase}_total"] = p["weights"] + p["decode_weights"] + batch * (kv + prefill)
    return p


def shard_rows_of(shape, world, rank):
    return shard_rows(shape[0], world, rank)[1] * math.prod(shape[1:])


def decode_row_bytes(cfg, prompt, budget, d):
    """(KV cache, prefill working set) of one decoded sequence, in bytes."""
    C, I, V, L = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_hidden_layers
    H, K, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    kv = 2 * L * K * (prompt + budget) * D * d
    prefill = prompt * d * (2 * C + 3 * I + (H + 2 * K) * D + H * prompt) + V * 4
    return kv, prefill


def decode_batch(cfg, p, capacity, budget, d):
    """The largest decoding batch whose KV cache and prefill fit next to the weights (capped)."""
    kv, prefill = decode_row_bytes(cfg, PROMPT_TOKENS, budget, d)
    return max(0, min(MAX_DECODE_BATCH, int((capacity - p["weights"] - p["decode_weights"]) // (kv + prefill))))


def smallest_fix(cfg, kw, capacity):
    """None if the plan fits `capacity` bytes per rank, else one line naming the smallest change that
    fits. Tried in this order, the first that fits wins: a smaller micro-batch (same results), gradient
    checkpointing (same results, ~1/3 more compute), both, more processes (more GPUs), more processes
    with both; for decoding, the largest sampling or evaluation batch that fits."""
    p = memory_plan(cfg, **kw)
    where = "per GPU" if kw["cuda"] else "of memory"
    if p["train_total"] > capacity:
        mb, w0 = kw["micro_batch"], kw["world"]
        tries = [(f"--micro-batch-size {m}", dict(micro_batch=m)) for m in range(mb - 1, 0, -1)]
        if not kw["grad_ckpt"]:
            tries += [("--grad-ckpt" + (f" --micro-batch-size {m}" if m < mb else ""),
                       dict(grad_ckpt=True, micro_batch=m)) for m in range(mb, 0, -1)]
        if kw["cuda"]:  # more GPUs; on a CPU the processes would share the same memory
            tries += [(f"torchrun --nproc-per-node {w}", dict(world=w, rank=0, sharded=True))
                      for w in range(w0 + 1, 65)]
            tries += [(f"torchrun --nproc-per-node {w} --grad-ckpt --micro-batch-size 1",
                       dict(world=w, rank=0, sharded=True, grad_ckpt=True, micro_batch=1)) for w in range(w0 + 1, 65)]
        need = f"memory plan: training needs {p['train_total'] / GiB:.1f} GiB {where}, {capacity / GiB:.1f} GiB usable"
        for flag, change in tries:
            q = memory_plan(cfg, **{**kw, **change})["train_total"]
            if q <= capacity:
                return f"{need}; smallest change that fits: {flag} ({q / GiB:.1f} GiB)"
        return f"{need}; nothing fits" + (", up to 64 processes with --grad-ckpt --micro-batch-size 1"
                                          if kw["cuda"] else ", even with --grad-ckpt --micro-batch-size 1")
    d = 2 if (kw["sharded"] and kw["cuda"]) else kw["master_bytes"]
    for phase, flag in (("sample", "--sample-batch-size"), ("eval", "--eval-batch-size")):
        if p[f"{phase}_total"] > capacity:
            b = decode_batch(cfg, p, capacity, p[f"{phase}_tokens"], d)
            need = (f"memory plan: {phase} decoding needs {p[f'{phase}_total'] / GiB:.1f} GiB {where}, "
                    f"{capacity / GiB:.1f} GiB usable")
            if b < 1:
                return f"{need}; not even one sequence fits next to the weights"
            return f"{need}; smallest change that fits: {flag} {b}"
    return None


def format_plan(p, kw, capacity=None):
    g = lambda b: f"{b / GiB:7.2f}"  # noqa: E731
    mode = (f"torchrun, {kw['world']} process(es), FSDP2" if kw["sharded"] else "one process") + \
        (", bf16 compute" if kw["cuda"] else "") + f", {kw['master_bytes'] * 8}-bit master weights"
    ck = "with" if kw["grad_ckpt"] else "without"
    lines = [f"memory plan per rank, GiB ({mode}; rank {kw['rank']}):",
             f"  weights {g(p['weights'])}   grads {g(p['grads'])}   AdamW {g(p['optimizer'])}   (exact)",
             f"  gathered/cast weights {g(p['gathered'])}   logits {g(p['logits'])}   activations, "
             f"{kw['micro_batch']} x {kw['max_len']} tokens: {g(p['activations_full'])} without, "
             f"{g(p['activations_ckpt'])} with gradient checkpointing   (estimates)",
             f"  training total {g(p['train_total'])} ({ck} gradient checkpointing)"]
    for phase in ("sample", "eval") if p["eval_batch"] else ("sample",):
        lines.append(f"  {phase:6s} decoding: weights {g(p['weights'] + p['decode_weights'])} + KV cache "
                     f"{g(p[f'{phase}_kv'])} + prefill {g(p[f'{phase}_prefill'])} = {g(p[f'{phase}_total'])}   "
                     f"(batch {p[f'{phase}_batch']}, {PROMPT_TOKENS} + {p[f'{phase}_tokens']} tokens)")
    if capacity and kw["cuda"]:
        lines.append(f"  usable per GPU: {capacity / GiB:.1f} GiB ({USABLE:.0%} of the device)")
    elif capacity:
        lines.append(f"  usable per process: {capacity / GiB:.1f} GiB ({USABLE:.0%} of this machine's available "
                     f"memory{'' if kw['world'] == 1 else ', shared by ' + str(kw['world']) + ' processes'})")
    return "\n".join(lines)


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
    "eval_samples":        (4, 0),
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
    a("--world", "a toy world folder (scripts/build_toy.py writes one) instead of the shipped assets/toy: its "
      "model, questions and the toy defaults")
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
    a("--eval-max-new-tokens", "budget of an evaluation answer", type=int)
    a("--eval-samples", "K: besides the greedy answer, K sampled answers per held-out question (mean accuracy "
      "and pass@K), at --eval-temperature with the checkpoint's top-p/top-k; 0 = greedy only", type=int)
    a("--eval-temperature", "temperature of the sampled evaluation (the same for every method, whatever it "
      "sampled its training data at)", type=float, default=0.6)
    a("--eval-seed", "seed of the sampled evaluation's random streams (the same for base and tuned, so the "
      "two are compared on the same uniform numbers, question by question)", type=int, default=0)
    a("--eval-batch-size", "sequences decoded together while evaluating; on CUDA the largest the memory plan "
      "fits", type=int)
    a("--sample-batch-size", "sequences decoded together while sampling; on CUDA the largest the memory plan "
      "fits", type=int)
    a("--seed", "seed of the split, the sampling and the data order", type=int, default=0)
    a("--out", "run folder (default: runs/<time>-<method>-L<L>-s<seed>); must not exist unless --resume")
    a("--resume", "continue the interrupted run <out>.partial from its samples and last checkpoint",
      action="store_true")
    a("--save-every", "optimizer steps between resumable checkpoints, 0 = never", type=int)
    a("--device", "cpu or cuda", default="cuda" if torch.cuda.is_available() else "cpu")
    a("--dtype", "weights dtype (fp32 master weights with bf16 autocast on CUDA is the default)",
      choices=["float32", "bfloat16"], default="float32")
    a("--autocast-bf16", "CPU: train under bf16 autocast (fp32 master weights; ~1.6x faster steps on CPUs with "
      "AVX512-BF16 or AMX, refused on others; CUDA always trains in bf16)", action="store_true")
    a("--decode-bf16", "sample and evaluate with a bf16 copy of the weights (CPU: needs fast bf16 as above)",
      action="store_true")
    a("--no-eval", "skip base/tuned accuracy", action="store_true")
    a("--plan", "print the memory plan and exit (reads only config.json); NPROC: plan for torchrun with that "
      "many processes (default: this launch)", nargs="?", type=int, const=-1, metavar="NPROC")  # -1: --plan alone
    a("--gpu-mem", f"GPU memory to plan against, GiB (default: the device's; {PLAN_GPU_GIB} with --plan on a "
      "machine without one)", type=float, metavar="GIB")
    a("--base-from", "a finished run on the same model and held-out questions whose base accuracy is "
      "reused instead of evaluated again (greedy: the same numbers; the training does not depend on it)")
    return ap


def parse_args(argv=None):
    """Parse and check every flag (ranges, combinations, the run folder); nothing is read or written."""
    args = build_parser().parse_args(argv)
    for k, (toy_v, real_v) in DEFAULTS.items():
        if k in ("sample_batch_size", "eval_batch_size") and args.device.startswith("cuda"):
            continue  # from the memory plan (plan_for)
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
    need(args.plan in (None, -1) or args.plan >= 1,
         f"--plan NPROC must be a positive number of processes, got {args.plan}")
    need(args.gpu_mem is None or args.gpu_mem > 0, f"--gpu-mem must be positive, got {args.gpu_mem}")
    bf16 = [f for f, on in (("--autocast-bf16", args.autocast_bf16), ("--decode-bf16", args.decode_bf16)) if on]
    if bf16 and not args.device.startswith("cuda"):
        fast, why = cpu_bf16()
        need(fast, f"{' '.join(bf16)}: {why}; bf16 matrix products would run several times slower than fp32 "
                   f"here: drop the flag")
    need(not (args.autocast_bf16 and args.dtype == "bfloat16"), "--autocast-bf16 needs fp32 master weights "
         "(--dtype float32)")
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
    need(args.eval_samples >= 0, f"--eval-samples must be >= 0, got {args.eval_samples}")
    need(args.eval_temperature > 0, f"--eval-temperature must be > 0 (greedy is always evaluated), got "
                                    f"{args.eval_temperature}")
    need(args.eval_subset > 0, f"--eval-subset must be positive, got {args.eval_subset}")
    need(not (args.eval_every and args.no_eval), "--eval-every needs held-out evaluation (drop --no-eval)")
    need(not (args.eval_every and args.model and not args.eval_data),
         "--eval-every needs --eval-data (held-out questions with answers)")
    if args.plan is not None:
        return args  # --plan reads config.json only: no data, no run folder
    need(not args.model or args.data, "--data is required with --model (JSONL of training questions)")
    need(not (args.model and args.world), "--world and --model: one or the other")
    need(not args.world or (Path(args.world) / "build.json").is_file(),
         f"--world {args.world}: no toy world there (build.json missing)")
    if args.base_from:
        check_base_from(args, need)
    if args.out is None:
        args.out = f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{args.method}-L{args.prefix_len}-s{args.seed}"
    out, partial = Path(args.out), partial_dir(args.out)
    need(not out.exists(), f"--out {out} already exists" + (" (a finished run)" if args.resume else
                                                            " (choose another --out)"))
    check_writable(partial, "--out", need)
    need(args.resume or not partial.exists(),
         f"{partial} holds an interrupted run: add --resume to continue it, or delete it")
    need(not args.resume or partial.is_dir(), f"--resume: no interrupted run at {partial}")
    return args


# What the base evaluation depends on: a reused one must agree on all of them.
BASE_EVAL_KEYS = ("model", "world", "eval_data", "eval_limit", "eval_max_new_tokens", "eval_batch_size", "device", "dtype",
                  "eval_samples", "eval_temperature", "eval_seed", "decode_bf16")


def check_base_from(args, need):
    src = Path(args.base_from)
    need((src / "eval_base.json").is_file() and (src / "args.json").is_file(),
         f"--base-from {src}: not a finished run with a base evaluation (eval_base.json, args.json)")
    prev = json.loads((src / "args.json").read_text())
    diff = [k for k in BASE_EVAL_KEYS if prev.get(k) != getattr(args, k)]
    need(not diff, f"--base-from {src}: its base evaluation used other settings ({', '.join(diff)})")
    need(not args.eval_samples or (src / "eval_base_sampled.json").is_file(),
         f"--base-from {src}: no sampled base evaluation (eval_base_sampled.json)")
    need(not args.no_eval, "--base-from with --no-eval: there is no evaluation to reuse")


def check_writable(path: Path, flag, need):
    """A folder that will be created at `path` can be: its nearest existing ancestor is a folder in which
    a folder can be made (tried, and removed at once: permission bits do not tell root or a read-only
    file system)."""
    parent = Path(path).absolute().parent
    while not parent.exists():
        parent = parent.parent
    need(parent.is_dir(), f"{flag} {path}: {parent} is not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".upft-write-check-", dir=parent))
    except OSError as e:
        need(False, f"{flag} {path}: cannot write in {parent} ({e.strerror})")


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
        world = toy.load_world(args.world or toy.WORLD_DIR)
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
    rank, nproc, device = init_distributed(args.device)
    sharded = dist.is_initialized()  # under torchrun (even with one process): FSDP2
    log = log if rank == 0 else (lambda *_: None)
    model_dir, tok, rows, eval_rows = load_inputs(args)  # bad input fails here: nothing written yet
    out = partial_dir(args.out)
    if args.resume:
        check_resume(args, out, nproc if sharded else None)
    cfg = Config.from_json(Path(model_dir) / "config.json")
    kw, plan, capacity, fix = plan_for(args, cfg, nproc, rank, sharded, has_eval=bool(eval_rows))
    log(format_plan(plan, kw, capacity))
    if fix:  # refuse before loading anything
        raise UpftError(fix)
    try:
        if rank == 0:
            out.mkdir(parents=True, exist_ok=args.resume)
            write_json(out / "memory_plan.json", {"settings": kw, "usable_bytes": capacity, "ranks": [
                memory_plan(cfg, **{**kw, "rank": r}) for r in range(nproc)]})
            if not (out / "args.json").is_file():  # a resumed run keeps the record of how it started
                gen = tok.generation_config
                write_json(out / "args.json", {**vars(args), "model_dir": str(model_dir),
                                               "top_p_used": sampling_top_p(args, gen),
                                               "top_k_used": sampling_top_k(args, gen)})
        if sharded:
            dist.barrier()  # the folder exists for every rank
        results = _run(args, model_dir, tok, rows, eval_rows, out, t0, log, rank, nproc, device)
    except BaseException as e:
        kept = kept_state(out)
        if rank == 0 and out.is_dir() and not kept:
            shutil.rmtree(out, ignore_errors=True)  # nothing worth keeping: leave no trace
        if isinstance(e, OSError):  # the machine, not the input: a full disk, a permission, ...
            what = f"{e.filename}: {e.strerror}" if e.filename else str(e)
            raise UpftFault(f"{what}; " + (f"kept in {out}: {kept}; fix the cause and rerun the same command "
                                           f"with --resume" if kept else "nothing was kept")) from None
        if kept and not isinstance(e, UpftError):
            log(f"the interrupted run is kept in {out}: rerun with --resume to continue it")
        raise
    if sharded:
        dist.barrier()  # every rank is done with the folder
    if rank == 0:
        out.rename(args.out)  # complete: the folder takes its final name
    log(report(results, args.out))
    return results


def kept_state(out):
    """What an interrupted run folder holds that --resume can continue from, in words ('' if nothing)."""
    kept = ["its samples"] if (out / "train_examples.jsonl").is_file() else []
    if (out / "checkpoint" / "meta.json").is_file():
        kept.append(f"a checkpoint at step {json.loads((out / 'checkpoint' / 'meta.json').read_text())['step']}")
    return " and ".join(kept)


# Flags that change neither what is sampled nor what is trained: a resumed run may set them anew.
# Every other flag must equal the interrupted run's (its args.json), so a run's record never mixes two
# configurations.
RESUME_FREE = ("out", "resume", "save_every", "sample_batch_size", "eval_batch_size", "plan", "gpu_mem",
               "base_from")


def check_resume(args, out, launch):
    """--resume continues exactly the interrupted run: the same flags (but RESUME_FREE) and launch."""
    if (out / "args.json").is_file():
        saved = json.loads((out / "args.json").read_text())
        diff = [f"--{k.replace('_', '-')} {saved.get(k)} (now {v})" for k, v in vars(args).items()
                if k not in RESUME_FREE and saved.get(k) != v]
        if diff:
            raise UpftError(f"--resume: {out} was started with other settings: {', '.join(diff)}; resume it "
                            f"with the same flags, or start a new --out")
    if (out / "checkpoint" / "meta.json").is_file():
        saved = checkpoint_world(out / "checkpoint")
        if saved != launch:
            raise UpftError(f"--resume: {out / 'checkpoint'} was written by "
                            f"{f'torchrun with {saved} process(es)' if saved else 'plain python'}; resume it "
                            f"with the same launch")


def sampling_top_p(args, gen_cfg):
    return args.top_p if args.top_p is not None else gen_cfg.get("top_p", 1.0)


def sampling_top_k(args, gen_cfg):
    return args.top_k if args.top_k is not None else gen_cfg.get("top_k", 0) or 0


def _run(args, model_dir, tok, rows, eval_rows, out, t0, log, rank=0, nproc=1, device=None):
    torch.manual_seed(args.seed)
    sharded, device = dist.is_initialized(), device or args.device
    dtype = getattr(torch, args.dtype)
    if sharded:
        model = load_sharded_model(model_dir, device, dtype)
    else:
        model = Transformer.from_pretrained(model_dir, device=args.device, dtype=dtype)
    top_p, top_k = sampling_top_p(args, tok.generation_config), sampling_top_k(args, tok.generation_config)

    def decoder():
        """The model to decode with. Sharded: a full copy for the decoding phase only (bf16 on CUDA, the
        master dtype on CPU), freed before training. The alternative, decoding through the sharded model,
        all-gathers every layer for every generated token (the whole model's bytes per decoding step over
        the interconnect, several times the time to read them from HBM) and keeps every rank in lockstep.
        The memory plan shows the copy fits: a 7-8B model's is 14-15 GiB next to 1/N of the fp32 state."""
        if sharded:
            return gather_full(model, torch.bfloat16 if "cuda" in device or args.decode_bf16 else dtype, device)
        return model.to_dtype_copy(torch.bfloat16) if args.decode_bf16 else model

    def evaluate_spread(dec, rows, progress, n=1):
        """evaluate() (n = 1: greedy; n > 1: n samples per question at the evaluation's temperature, the
        checkpoint's top-p/top-k, from the evaluation seed's streams); under torchrun each rank decodes
        every nproc-th row and all ranks get every record back, in order, with the summary of them all."""
        sampling = {} if n == 1 else dict(n=n, temperature=args.eval_temperature, seed=args.eval_seed,
                                          top_p=sampling_top_p(argparse.Namespace(top_p=None), tok.generation_config),
                                          top_k=sampling_top_k(argparse.Namespace(top_k=None), tok.generation_config))
        records, summary = evaluate(dec, tok, rows[rank::nproc], args.eval_max_new_tokens,
                                    batch_size=args.eval_batch_size, progress=progress and rank == 0, **sampling)
        if sharded:
            for k, r in enumerate(records):
                r["index"] = rank + k * nproc
            records = sorted((r for part in all_gather_json(records) for r in part), key=lambda r: r["index"])
            summary = summarize(records, n, args.eval_max_new_tokens)
        return records, summary

    def accuracy(tag, dec, reuse=args.resume):
        """(greedy summary, sampled summary or None) on the held-out questions; records and summaries
        to eval_<tag>[_sampled].json[l]. `reuse`: what is already there (a resumed run's first part, or
        --base-from's copy) is read back instead of measured again."""
        if not eval_rows:
            return None, None
        results = []
        for suffix, n in (("", 1), ("_sampled", args.eval_samples)):
            path = out / f"eval_{tag}{suffix}.json"
            if n == 0:
                results.append(None)
            elif reuse and path.exists():
                results.append(json.loads(path.read_text()))
            else:
                records, summary = evaluate_spread(dec, eval_rows, progress=True, n=n)
                if rank == 0:
                    write_jsonl(out / f"eval_{tag}{suffix}.jsonl", records)
                    write_json(path, summary)
                results.append(summary)
        greedy, sampled = results
        log(f"{tag} accuracy on {len(eval_rows)} held-out questions: greedy {greedy['accuracy']:.1%}" +
            (f", sampled {sampled['accuracy']:.1%} (pass@{args.eval_samples} {sampled['pass@n']:.1%})"
             if sampled else ""))
        return greedy, sampled

    dec = decoder()
    if args.base_from and eval_rows and rank == 0:  # the base's accuracy, measured by an earlier run
        for name in ("eval_base.json", "eval_base.jsonl") + (("eval_base_sampled.json", "eval_base_sampled.jsonl")
                                                             if args.eval_samples else ()):
            shutil.copyfile(Path(args.base_from) / name, out / name)
    if args.base_from and sharded:
        dist.barrier()  # copied before any rank reads it
    base, base_sampled = accuracy("base", dec, reuse=args.resume or bool(args.base_from))

    # self-generated data (reused on --resume: the sampling is not repeated)
    ex_path = out / "train_examples.jsonl"
    if args.resume and ex_path.exists():
        examples = read_jsonl(ex_path)
        acct = json.loads((out / "accounting.json").read_text())
        log(f"resume: reusing {len(examples)} training examples from {ex_path}")
    else:
        t_s = time.time()
        rollouts, acct = sample(dec, tok, rows, args, share=(rank, nproc) if sharded else None,
                                temperature=args.temperature, top_p=top_p, top_k=top_k)
        questions = [r["question"] for r in rows]
        if args.full_only or args.random_targets:  # the controls (§7.1), on UPFT's own samples
            rollouts = upft.ablate_rollouts(rollouts, questions, args.full_only, args.random_targets,
                                            seed=args.seed)
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
        if rank == 0:
            write_jsonl(out / "rollouts.jsonl", rollouts)
            write_json(out / "accounting.json", acct)
            write_jsonl(ex_path, examples)  # last: its presence marks the sampling phase as complete
    del dec
    if "cuda" in device:
        torch.cuda.empty_cache()  # the decoding copy and its cache, before training

    tc = TrainConfig(lr=args.lr, epochs=args.epochs, batch_size=args.batch_size,
                     micro_batch_size=args.micro_batch_size, loss_norm=args.loss_norm, seed=args.seed,
                     save_every=args.save_every, grad_ckpt=args.grad_ckpt, bf16=args.autocast_bf16,
                     objective="entropy" if args.method == "em" else "ce", eval_every=args.eval_every)
    subset, eval_seconds = eval_rows[:args.eval_subset], [0.0]

    def during(m):  # greedy accuracy on a fixed held-out subset; its own inference-mode generate, no RNG
        t_e = time.time()  # torchrun: from a full copy, spread over ranks, as the base and tuned accuracy
        _, s = evaluate_spread(decoder() if sharded or args.decode_bf16 else m, subset, progress=False)
        eval_seconds[0] += time.time() - t_e
        return {"eval_accuracy": s["accuracy"], "eval_questions": s["questions"]}
    t_t = time.time()
    # the training order is drawn over the questions in a canonical order (by their text), so a shuffled
    # data file gives the same run (upft.canonical_order)
    rank_of = {i: k for k, i in enumerate(upft.canonical_order([r["question"] for r in rows]))}
    examples = sorted(examples, key=lambda e: rank_of[e["index"]])
    fit(model, examples, tc, pad_id=tok.pad_id, out=out, resume=args.resume, desc=args.method, log=log,
        evaluate=during if subset else None)
    acct["training_seconds"] = time.time() - t_t - eval_seconds[0]  # without the evaluations during it
    acct["eval_during_training_seconds"] = eval_seconds[0]
    if sharded:  # gathered tensor by tensor; rank 0 keeps them (on the CPU) and writes the HF layout
        full = gather_full(model, dtype, "cpu", keep=rank == 0)
        if rank == 0:
            full.save_pretrained(out / "model")
        del full
        dist.barrier()
    else:
        model.save_pretrained(out / "model")
    if rank == 0:
        shutil.rmtree(out / "checkpoint", ignore_errors=True)  # the final model supersedes it

    dec = decoder()
    tuned, tuned_sampled = accuracy("tuned", dec)
    del dec
    results = {"method": args.method, "prefix_len": args.prefix_len, "structure_ratio": args.structure_ratio,
               "num_samples": args.num_samples, "seed": args.seed, "loss_norm": args.loss_norm,
               "controls": [k for k in ABLATIONS if getattr(args, k)], "base": base, "tuned": tuned,
               "base_sampled": base_sampled, "tuned_sampled": tuned_sampled,
               "accounting": acct, "wall_seconds": time.time() - t0,
               # a resumed run's clocks (wall, training) restart at the resume: its times are partial
               "resumed": bool(args.resume)}
    if rank == 0:
        write_json(out / "results.json", results)
    return results


def sample(model, tok, rows, args, share=None, **sampling):
    """The method's self-generated rollouts and its token accounting. share=(rank, world) (torchrun):
    this rank samples every world-th question, and the rollouts and counts of all ranks are gathered, in
    question order, on every rank (all of them train on them). Every question draws from its own random
    streams (model.generate), so the rollouts are those of one process, whatever the number of ranks."""
    questions = [r["question"] for r in rows]
    rank, world = share or (0, 1)
    common = dict(max_new_tokens=args.max_new_tokens, seed=args.seed, batch_size=args.sample_batch_size,
                  progress=rank == 0, **sampling)
    acct = {"method": args.method, "questions": len(rows)}
    dropped = 0
    if args.method == "upft":
        rollouts, sampled = upft.sample_upft(model, tok, questions, args.prefix_len, args.structure_ratio,
                                             args.num_samples, share=share, prefixes=not args.full_only,
                                             **common)
    else:
        mine = list(range(rank, len(rows), world))
        if args.method in ("sft", "em"):  # EM-FT trains on SFT's samples; only the loss differs
            rollouts, sampled = upft.sample_sft(model, tok, [questions[i] for i in mine], **common)
        elif args.method == "vote":  # no gold answer is passed: the majority answer is the pseudo-label
            rollouts, sampled, dropped = upft.sample_vote(model, tok, [questions[i] for i in mine],
                                                          args.num_samples, **common)
        else:
            rollouts, sampled, dropped = upft.sample_rft(model, tok, [questions[i] for i in mine],
                                                         [rows[i]["gold"] for i in mine], args.num_samples,
                                                         **common)
        for r in rollouts:
            r["index"] = mine[r["index"]]
    if share:
        parts = all_gather_json([rollouts, sampled, dropped])
        rollouts = sorted((r for part in parts for r in part[0]), key=lambda r: r["index"])
        sampled, dropped = sum(part[1] for part in parts), sum(part[2] for part in parts)
    acct["tokens_sampled"] = sampled
    if args.method == "upft" and args.num_samples > 1:
        agree = [r["agreement"] for r in rollouts if r["kind"] == "prefix"]
        acct["mean_prefix_agreement"] = sum(agree) / max(len(agree), 1)
    if args.method == "rft":
        acct["questions_dropped_no_correct_sample"] = dropped
    if args.method == "vote":
        acct["questions_dropped_no_answer"] = dropped
        shares = [r["vote_share"] for r in rollouts]
        acct["mean_vote_share"] = sum(shares) / max(len(shares), 1)
    return rollouts, acct


def plan_for(args, cfg, world, rank, sharded, has_eval=True):
    """This run's memory plan: (settings, plan, usable bytes per process (GPU memory on CUDA, the machine's
    available memory shared by the processes on CPU; None if unknown), refusal line or None).
    On CUDA, a decoding batch not given is the largest that fits (written back into args)."""
    cuda = torch.device(args.device).type == "cuda"
    if cuda:
        gib = args.gpu_mem or (torch.cuda.get_device_properties(torch.device(args.device)).total_memory / GiB
                               if torch.cuda.is_available() else PLAN_GPU_GIB)
        capacity = int(USABLE * gib * GiB)
    else:  # CPU: the processes of this machine share what it has free now
        free = available_memory()
        capacity = int(USABLE * free / world) if free else None
    master = 2 if args.dtype == "bfloat16" else 4
    # the longest sampling budget: full traces (none for UPFT with p = 0: prefixes only)
    budget = args.max_new_tokens if args.method != "upft" or args.structure_ratio > 0 else args.prefix_len
    has_eval = has_eval and not args.no_eval
    kw = dict(world=world, rank=rank, sharded=sharded, cuda=cuda, master_bytes=master,
              micro_batch=args.micro_batch_size, max_len=args.max_len, grad_ckpt=args.grad_ckpt,
              sample_batch=args.sample_batch_size or 0, sample_tokens=budget,
              eval_batch=(args.eval_batch_size or 0) if has_eval else 0, eval_tokens=args.eval_max_new_tokens)
    plan = memory_plan(cfg, **kw)
    d = 2 if sharded and cuda else master
    if args.sample_batch_size is None:
        args.sample_batch_size = kw["sample_batch"] = max(1, decode_batch(cfg, plan, capacity, budget, d))
    if args.eval_batch_size is None:
        args.eval_batch_size = max(1, decode_batch(cfg, plan, capacity, args.eval_max_new_tokens, d))
        kw["eval_batch"] = args.eval_batch_size if has_eval else 0
    plan = memory_plan(cfg, **kw)
    return kw, plan, capacity, smallest_fix(cfg, kw, capacity) if capacity else None


def cpu_bf16():
    """(whether this CPU multiplies bf16 matrices in hardware, the reason in words). x86: the AVX512-BF16
    or AMX-BF16 flags of /proc/cpuinfo; Arm: the bf16 feature. Without them PyTorch emulates bf16 and
    its matrix products run many times slower than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            words = set(f.read().split())
    except OSError:
        return False, "cannot read /proc/cpuinfo to check for bf16 support"
    found = sorted(words & {"avx512_bf16", "amx_bf16", "bf16"})
    return (True, ", ".join(found)) if found else (False, "this CPU has no AVX512-BF16, AMX-BF16 or Arm bf16")


def available_memory():
    """Bytes of memory this machine can still give: MemAvailable of /proc/meminfo (Linux), else the free
    physical pages; None if neither can be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def plan_config(args):
    """config.json alone (--plan loads no weights): a local folder's, the hub's, or the toy model's."""
    if not args.model:
        shipped = Path(args.world or toy.WORLD_DIR) / "model" / "config.json"
        return Config.from_json(shipped) if shipped.is_file() else Config.from_dict(toy.model_config())
    path = Path(args.model).expanduser()
    if path.is_dir():
        return Config.from_json(path / "config.json")
    try:  # optional, and only for hub ids, as data.resolve
        from huggingface_hub import hf_hub_download
        return Config.from_json(hf_hub_download(args.model, "config.json"))
    except UpftError:
        raise
    except Exception as e:
        raise UpftError(f"{args.model}: no config.json locally or on the Hugging Face Hub ({type(e).__name__})") \
            from None


def print_plan(args):
    """--plan [NPROC]: the plan of this launch, or of torchrun with NPROC processes; exits 0."""
    cfg = plan_config(args)
    nproc = args.plan if args.plan != -1 else None  # --plan NPROC, or (--plan alone) this launch's processes
    world = nproc or int(os.environ.get("WORLD_SIZE", 1))
    sharded = nproc is not None or "LOCAL_RANK" in os.environ
    kw, plan, capacity, fix = plan_for(args, cfg, world, 0, sharded, has_eval=True)
    if int(os.environ.get("RANK", 0)) == 0:
        print(format_plan(plan, kw, capacity))
        if fix:
            print(fix)


def report(r, out):
    a = r["accounting"]

    def acc(s, sampled):
        if not s:
            return "-"
        greedy = f"greedy {s['accuracy']:.1%} [{s['accuracy_ci95'][0]:.1%}, {s['accuracy_ci95'][1]:.1%}]"
        return greedy + ("" if not sampled else f"   sampled {sampled['accuracy']:.1%} [{sampled['pass@1_ci95'][0]:.1%}, "
                         f"{sampled['pass@1_ci95'][1]:.1%}], pass@{sampled['samples_per_question']} "
                         f"{sampled['pass@n']:.1%}")
    lines = [f"\n== {r['method']} (L={r['prefix_len']}, p={r['structure_ratio']}, N={r['num_samples']}, "
             f"seed={r['seed']}) -> {out}",
             f"base  accuracy: {acc(r['base'], r.get('base_sampled'))}",
             f"tuned accuracy: {acc(r['tuned'], r.get('tuned_sampled'))}",
             f"questions: {a['questions']} sampled, {a['questions_used']} trained on "
             f"({a['prefix_examples']} prefix + {a['full_examples']} full)",
             f"tokens sampled: {a['tokens_sampled']:,}   tokens supervised: {a['tokens_supervised']:,}",
             f"wall time: {r['wall_seconds']:.0f}s"]
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
