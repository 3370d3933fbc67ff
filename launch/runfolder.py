"""The run folder and what a training run does besides training: resumable checkpoints, metrics,
evaluation during training, the memory measured, and faults. A reader of the method can skip this file.

A finished run folder holds args.json, memory_plan.json, memory_measured.json, rollouts.jsonl,
train_examples.jsonl (the exact input_ids/labels trained on), accounting.json, metrics.jsonl,
eval_{base,tuned}[_sampled].json[l], results.json and model/ (HF layout).

  partial_dir, check_resume    a run lives in <out>.partial until complete; --resume continues exactly
                               the interrupted run (same flags, same launch)
  run_folder                   creates it, writes the records, renames it when complete; on a failure
                               keeps it only if it holds something to resume from (clean_up)
  copy_base_eval, read_examples    what a run reuses: --base-from's base evaluation, --resume's examples
  save_state, load_state       fit's resumable checkpoint: weights, AdamW moments, step, RNG (safetensors
                               and JSON, no pickle); under torchrun each process its shards (fsdp.py)
  FitExtras                    train.fit's hooks (a train.Hooks): metrics, checkpoints, resume, evaluations
"""
from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

import train
from data import UpftError, UpftFault, atomic_dir, read_jsonl, write_json
from launch.fsdp import (all_reduce, check_shared_folder, checkpoint_world, is_sharded, load_sharded_checkpoint,
                         part_of_step, rank_and_world, record_state_bytes, save_sharded_checkpoint)
from model import save_safetensors

# ----------------------------------------------------------------------------- the run folder


def partial_dir(out) -> Path:
    """Where a run lives until it is complete."""
    return Path(str(out).rstrip("/") + ".partial")


# Flags that change neither what is sampled nor what is trained: a resumed run may set them anew.
# Every other flag must equal the interrupted run's (its args.json), so a run's record never mixes two
# configurations.
RESUME_FREE = ("out", "resume", "save_every", "sample_batch_size", "eval_batch_size", "loss_chunk", "plan", "gpu_mem",
               "base_from")


def check_resume(args, launch):
    """--resume continues exactly the interrupted run: the same flags (but RESUME_FREE) and launch."""
    out = partial_dir(args.out)
    if not args.resume:
        return
    if (out / "args.json").is_file():
        saved = json.loads((out / "args.json").read_text())
        diff = [f"--{k.replace('_', '-')} {saved.get(k)} (now {v})" for k, v in vars(args).items()
                if k not in RESUME_FREE and saved.get(k) != v]
        if diff:
            raise UpftError(f"--resume: {out} was started with other settings: {', '.join(diff)}; resume it "
                            f"with the same flags, or start a new --out")
    if (out / "checkpoint" / "meta.json").is_file():
        saved, now = checkpoint_world(out / "checkpoint"), launch.world if launch.sharded else None
        if saved != now:
            raise UpftError(f"--resume: {out / 'checkpoint'} was written by "
                            f"{f'torchrun with {saved} process(es)' if saved else 'plain python'}; resume it "
                            f"with the same launch")


@contextlib.contextmanager
def run_folder(args, launch, records, log):
    """Yields <out>.partial with `records` ({file name: JSON}) written in it (args.json only if absent:
    a resumed run keeps the record of how it started); renamed to <out> when the body completes."""
    out = partial_dir(args.out)
    try:
        if launch.writes:
            out.mkdir(parents=True, exist_ok=args.resume)
            for name, record in records.items():
                if name != "args.json" or not (out / name).is_file():
                    write_json(out / name, record)
        if launch.sharded:  # every rank sees the folder (several machines: a shared filesystem; a barrier)
            check_shared_folder(out, f"--out {args.out}",
                                required=bool(args.save_every or args.resume or args.base_from))
        yield out
    except BaseException as e:
        fault = clean_up(out, launch.writes, e, log)  # the folder goes, unless it holds something to resume from
        if fault:
            raise fault from None
        raise
    launch.barrier()  # every process is done with the folder
    if launch.writes:
        shutil.rmtree(out / "checkpoint", ignore_errors=True)  # superseded by model/
        out.rename(args.out)  # complete: the folder takes its final name


def clean_up(out, writes, error, log):
    """After a run failed with `error`: its folder is removed unless it holds something to resume from.
    Returns the one-line UpftFault to raise instead when the error is the machine's, not the input's (an
    OSError: a full disk, a permission), else None (the error itself is raised)."""
    kept = kept_state(out)
    if writes and out.is_dir() and not kept:
        shutil.rmtree(out, ignore_errors=True)  # nothing worth keeping: leave no trace
    if isinstance(error, OSError):
        what = f"{error.filename}: {error.strerror}" if error.filename else str(error)
        return UpftFault(f"{what}; " + (f"kept in {out}: {kept}; fix the cause and rerun the same command "
                                        f"with --resume" if kept else "nothing was kept"))
    if kept and not isinstance(error, UpftError):
        log(f"the interrupted run is kept in {out}: rerun with --resume to continue it")
    return None


def kept_state(out):
    """What an interrupted run folder holds that --resume can continue from, in words ('' if nothing)."""
    kept = ["its samples"] if (out / "train_examples.jsonl").is_file() else []
    if (out / "checkpoint" / "meta.json").is_file():
        kept.append(f"a checkpoint at step {json.loads((out / 'checkpoint' / 'meta.json').read_text())['step']}")
    return " and ".join(kept)


def copy_base_eval(args, out, launch):
    """--base-from: the base model's evaluation files, copied from the earlier run that measured them."""
    if args.base_from and launch.writes:
        sampled = ("eval_base_sampled.json", "eval_base_sampled.jsonl") if args.eval_samples else ()
        for name in ("eval_base.json", "eval_base.jsonl") + sampled:
            shutil.copyfile(Path(args.base_from) / name, out / name)
    if args.base_from:
        launch.barrier()  # copied before any process reads it


def read_examples(out, log):
    """--resume: the interrupted run's training examples and accounting, read back (not sampled again)."""
    path = out / "train_examples.jsonl"
    examples, accounting = read_jsonl(path), json.loads((out / "accounting.json").read_text())
    log(f"resume: reusing {len(examples)} training examples from {path}")
    return examples, accounting


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
    """The step of a checkpoint written by save_checkpoint, its weights, AdamW state and RNG restored."""
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
    """fit's resumable checkpoint: the whole state, or under torchrun each process its shards (all call)."""
    if is_sharded(model):
        return save_sharded_checkpoint(path, model, opt, step)
    return save_checkpoint(path, model, opt, step)


def load_state(path: Path, model, opt):
    """The step a checkpoint written by save_state was at, its state restored (weights, AdamW, RNG)."""
    if is_sharded(model):
        return load_sharded_checkpoint(path, model, opt)
    return load_checkpoint(path, model, opt)


# ----------------------------------------------------------------------------- fit's extras

class FitExtras(train.Hooks):
    """train.fit's hooks under launch/: metrics.jsonl and a resumable checkpoint every `save_every` steps in
    `out` (with `resume`, fit starts from it); `evaluate(model) -> dict` before the first step, every
    `eval_every` steps and after the last (in eval mode; it must not draw from the training's random
    streams); memory_measured.json after the first update; under torchrun each process's part of every step;
    `cpu_bf16`: bf16 autocast on CPU."""

    def __init__(self, out=None, resume=False, save_every=0, evaluate=None, eval_every=0, log=print, cpu_bf16=False):
        self.out, self.resume, self.save_every, self.log, self.cpu_bf16 = out, resume, save_every, log, cpu_bf16
        self.evaluate, self.eval_every = evaluate, eval_every
        self.eval_seconds = 0.0

    def first_step(self, model, opt, total_steps):
        """0, or with `resume` the step of the checkpoint in `out`; the evaluation before the first step."""
        self.model, self.opt, out = model, opt, self.out
        self.sharded = is_sharded(model)
        self.rank, self.world = rank_and_world(model)
        self.metrics = Path(out) / "metrics.jsonl" if out and self.rank == 0 else None  # process 0 writes them
        self.checkpoint = Path(out) / "checkpoint" if out else None
        self.measure = Path(out) / "memory_measured.json" if out else None
        start = 0
        if self.resume and self.checkpoint and self.checkpoint.is_dir():
            start = load_state(self.checkpoint, self.model, self.opt)
            self.log(f"resumed from {self.checkpoint} at step {start}/{total_steps}")
        elif self.metrics and self.metrics.exists():
            self.metrics.unlink()
        if self.evaluate and self.eval_every and start == 0:
            self.evaluate_now(0)
        return start

    def part_of_step(self, batch, micro_batch_size, pad_id):
        """This process's part of a step's examples (all of them on one process)."""
        return part_of_step(batch, self.rank, self.world, micro_batch_size, pad_id) if self.sharded else batch

    def step_loss(self, loss, n):
        """The step's mean loss: under torchrun each process returned its part of it."""
        return all_reduce([loss], "sum", torch.float64)[0] if self.sharded and n > 0 else loss

    def grad_norm(self, norm):
        """The gradient norm clip_grad_norm_ returned, as a float (under torchrun: over every shard)."""
        return float(norm.full_tensor() if self.sharded else norm)

    def autocast(self, device):
        """--autocast-bf16 on CPU; a sharded model on CUDA: none (FSDP's mixed-precision policy casts instead)."""
        return None if self.sharded and device.type == "cuda" else train.autocast_for(device, self.cpu_bf16)

    def after_update(self):
        """After the first optimizer step: the plan's static figures, measured (memory_measured.json)."""
        if self.measure:
            record_state_bytes(self.measure, self.model, self.opt, self.rank)
            self.measure = None

    def after_step(self, rec, stop):
        """The step's metrics; the evaluation and the checkpoint when they are due."""
        self.append(rec)
        step = rec["step"]
        if self.evaluate and self.eval_every and (step % self.eval_every == 0 or step == stop):
            self.evaluate_now(step)
        if self.checkpoint and self.save_every and step % self.save_every == 0 and step < stop:
            save_state(self.checkpoint, self.model, self.opt, step)

    def evaluate_now(self, step):
        """The held-out evaluation at `step` (the rise-then-fall of self-training, §7): in eval mode, then
        back to training; logged and appended to the metrics."""
        training, started = self.model.training, time.time()
        self.model.train(False)
        rec = {"step": step, **self.evaluate(self.model)}
        self.log(f"step {step}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                              for k, v in rec.items() if k != "step"))
        self.append(rec)
        self.model.train(training)
        self.eval_seconds += time.time() - started

    def append(self, rec):
        """One line of metrics.jsonl (on the process that writes them)."""
        if self.metrics:
            with open(self.metrics, "a") as f:
                f.write(json.dumps(rec) + "\n")
