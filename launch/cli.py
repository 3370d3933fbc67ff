"""train.py's command line under launch/: the core's flags (train.build_parser) and launch/'s own, their
checks, and the memory plan of the flags, all before any model is loaded.

  LAUNCH_DEFAULTS, add_launch_flags   resumable checkpoints, evaluation during training, the memory plan,
                                      --base-from; their defaults (toy, real), as train.HYPERPARAMETERS
  parse_args                          every flag and its checks (train.check_flags and train.check_out, then
                                      launch/'s: the run folder <out>.partial, --resume, --base-from)
  plan_for, print_plan                the memory plan of these flags (plan.py), and --plan
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

import train
from data import TOY_WORLD, UpftError, require
from launch.fsdp import Launch
from launch.plan import PLAN_GPU_GIB, Plan, format_plan, plan_run, usable_bytes
from launch.runfolder import partial_dir
from model import Config


# launch/'s defaults that depend on the model: (the toy world, a real checkpoint via --model).
LAUNCH_DEFAULTS = {"save_every": (20, 50), "eval_subset": (100, 100)}


def add_launch_flags(parser):
    """What launch/ adds to train.py's flags: resumable checkpoints, evaluation during training, the plan."""
    add = parser.add_argument
    add("--eval-every", type=int, default=0, help="greedy accuracy on the first --eval-subset held-out questions "
        "every K optimizer steps (and before the first, after the last), into metrics.jsonl; 0 = never "
        "(default: 0)")
    add("--eval-subset", type=int, help="held-out questions evaluated during training (--eval-every) (default: 100)")
    add("--resume", action="store_true", help="continue the interrupted run <out>.partial from its samples and "
        "last checkpoint")
    add("--save-every", type=int, help="optimizer steps between resumable checkpoints, 0 = never (default: 20 on "
        "the toy world, 50 with --model)")
    add("--plan", nargs="?", type=int, const=-1, metavar="NPROC", help="print the memory plan and exit (reads "
        "only config.json); NPROC: plan for torchrun with that many processes (default: this launch)")
    add("--gpu-mem", type=float, metavar="GIB", help=f"GPU memory to plan against, GiB (default: the device's; "
        f"{PLAN_GPU_GIB} with --plan on a machine without one)")
    add("--base-from", help="a finished run on the same model and held-out questions whose base accuracy is "
        "reused instead of evaluated again (greedy: the same numbers; the training does not depend on it)")
    add("--autocast-bf16", action="store_true", help="CPU: train under bf16 autocast (fp32 master weights; faster "
        "on CPUs with AVX512-BF16 or AMX, docs/performance.md; refused on others; CUDA always trains in bf16)")
    add("--decode-bf16", action="store_true", help="sample and evaluate with a bf16 copy of the weights (CPU: "
        "needs fast bf16 as above)")
    return parser


def build_parser():
    return add_launch_flags(train.build_parser())


def parse_args(argv=None):
    """Parse and check every flag (ranges, combinations, the run folder); nothing is read or written.
    On CUDA, --sample-batch-size and --eval-batch-size not given stay None: the memory plan picks them."""
    args = build_parser().parse_args(argv)
    train.check_flags(args, planned=True)
    for k, (toy_default, real_default) in LAUNCH_DEFAULTS.items():
        if getattr(args, k) is None:
            setattr(args, k, real_default if args.model else toy_default)
    require(args.save_every >= 0, f"--save-every must be >= 0, got {args.save_every}")
    require(args.plan in (None, -1) or args.plan >= 1,
            f"--plan NPROC must be a positive number of processes, got {args.plan}")
    require(args.gpu_mem is None or args.gpu_mem > 0, f"--gpu-mem must be positive, got {args.gpu_mem}")
    require(args.eval_every >= 0, f"--eval-every must be >= 0, got {args.eval_every}")
    require(args.eval_subset > 0, f"--eval-subset must be positive, got {args.eval_subset}")
    require(not (args.eval_every and args.no_eval), "--eval-every needs held-out evaluation (drop --no-eval)")
    require(not (args.eval_every and args.model and not args.eval_data),
            "--eval-every needs --eval-data (held-out questions with answers)")
    check_bf16(args)
    if args.plan is None:  # --plan reads config.json only: no data, no run folder
        check_run_folder(args)
    return args


def check_bf16(args):
    """The bf16 options: refused where this CPU would emulate bf16, and with bf16 master weights."""
    bf16 = [f for f, on in (("--autocast-bf16", args.autocast_bf16), ("--decode-bf16", args.decode_bf16)) if on]
    if bf16 and not args.device.startswith("cuda"):
        fast, why = cpu_bf16()
        require(fast, f"{' '.join(bf16)}: {why}; bf16 matrix products would run several times slower than fp32 "
                      f"here: drop the flag")
    require(not (args.autocast_bf16 and args.dtype == "bfloat16"), "--autocast-bf16 needs fp32 master weights "
            "(--dtype float32)")


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


def check_run_folder(args):
    """train.check_out, and the run folder: <out>.partial must be creatable, and exist exactly when --resume
    says so; --base-from's run must match."""
    if args.base_from:
        check_base_from(args)
    require(not (args.resume and args.out and Path(args.out).exists()), f"--out {args.out} already exists "
            "(a finished run)")
    train.check_out(args)
    partial = partial_dir(args.out)
    require(args.resume or not partial.exists(),
            f"{partial} holds an interrupted run: add --resume to continue it, or delete it")
    require(not args.resume or partial.is_dir(), f"--resume: no interrupted run at {partial}")


# What the base evaluation depends on: a reused one must agree on all of them.
BASE_EVAL_KEYS = ("model", "world", "eval_data", "eval_limit", "eval_max_new_tokens", "eval_batch_size", "device",
                  "dtype", "eval_samples", "eval_temperature", "eval_seed", "decode_bf16")


def check_base_from(args):
    src = Path(args.base_from)
    require((src / "eval_base.json").is_file() and (src / "args.json").is_file(),
            f"--base-from {src}: not a finished run with a base evaluation (eval_base.json, args.json)")
    prev = {"decode_bf16": False, **json.loads((src / "args.json").read_text())}  # (train.py alone: no bf16 copy)
    diff = [k for k in BASE_EVAL_KEYS if prev.get(k) != getattr(args, k)]
    require(not diff, f"--base-from {src}: its base evaluation used other settings ({', '.join(diff)})")
    require(not args.eval_samples or (src / "eval_base_sampled.json").is_file(),
            f"--base-from {src}: no sampled base evaluation (eval_base_sampled.json)")
    require(not args.no_eval, "--base-from with --no-eval: there is no evaluation to reuse")


# ----------------------------------------------------------------------------- the memory plan of these flags

def plan_for(args, cfg, launch, has_eval=True) -> Plan:
    """This run's memory plan (plan.plan_run) from its flags. Its sample_batch_size and eval_batch_size
    are the flags', or on CUDA, where parse_args leaves them None, the largest that fit; the caller
    decides what to do with them (train.run uses them and records them in args.json)."""
    cuda = torch.device(args.device).type == "cuda"
    # the longest sampling budget: full traces (none for UPFT with p = 0: prefixes only)
    budget = args.max_new_tokens if args.method != "upft" or args.structure_ratio > 0 else args.prefix_len
    # the processes sharing this machine's memory: torchrun's LOCAL_WORLD_SIZE (--nnodes 2: half of them)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", launch.world))
    return plan_run(cfg, usable_bytes(cuda, args.device, args.gpu_mem, local_world), world=launch.world,
                    rank=launch.rank, sharded=launch.sharded, cuda=cuda,
                    master_bytes=2 if args.dtype == "bfloat16" else 4,
                    micro_batch=args.micro_batch_size, max_len=args.max_len, grad_ckpt=args.grad_ckpt,
                    loss_chunk=args.loss_chunk,
                    sample_batch=args.sample_batch_size, sample_tokens=budget, eval_batch=args.eval_batch_size,
                    eval_tokens=args.eval_max_new_tokens, has_eval=has_eval and not args.no_eval)


def plan_config(args):
    """config.json alone (--plan loads no weights): a local folder's, the hub's, or the toy model's."""
    if not args.model:
        return Config.from_json(Path(getattr(args, "world", None) or TOY_WORLD) / "model" / "config.json")
    path = Path(args.model).expanduser()
    if path.is_dir():
        return Config.from_json(path / "config.json")
    if path.exists() or str(args.model).startswith(("/", ".", "~")):  # a path, not a hub id (as data.resolve)
        raise UpftError(f"{args.model}: not a checkpoint directory")
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
    plan = plan_for(args, cfg, Launch(0, world, args.device, sharded), has_eval=True)
    if int(os.environ.get("RANK", 0)) == 0:
        print(format_plan(plan))
        if plan.fix:
            print(plan.fix)
