"""train.py's command line: every flag, its default and its checks, the inputs the flags name and the run
folder, all before any model is loaded.

  DEFAULTS, build_parser     every flag; the defaults that depend on the model in one table (toy, real)
  parse_args                 the flags and their checks (ranges, combinations, the run folder): a bad one is
                             one line, `error: ...`, exit 2, and nothing is created
  load_inputs                the questions, config.json, tokenizer and chat template, read and checked
  plan_for, print_plan       the memory plan of these flags (plan.py), and --plan
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile
import time
from pathlib import Path

import torch

import toy
from data import Tokenizer, UpftError, chat_prompt, load_rows, resolve
from fsdp import Launch
from model import Config, default_device
from plan import LOSS_CHUNK, PLAN_GPU_GIB, Plan, format_plan, plan_run, usable_bytes
from runfolder import partial_dir

# ----------------------------------------------------------------------------- the flags

# Every default that depends on the model, in one place: (the toy world, a real checkpoint via --model).
# Real: the paper's LR is 1e-6 for most runs, 1 epoch on the large sets, the official code's global
# batch is 64 and its max length 4096 (docs/method.md §4). Toy: 1e-5 keeps the paper's ratio of
# fine-tuning LR to pretraining peak LR (~1/300; the toy model was pretrained at 4e-3). The toy's
# evaluation (200 held-out questions, greedy + 2 samples each, in batches of 512) keeps the first run
# near a minute on 2 cores; the results table evaluates on all 2,000 with 4 samples
# (scripts/results_table.py, docs/experiments.md).
DEFAULTS = {               # toy,   real
    "lr":                  (1e-5, 1e-6),
    "epochs":              (2, 1),
    "batch_size":          (16, 64),
    "micro_batch_size":    (16, 4),
    "max_len":             (512, 4096),
    "max_new_tokens":      (256, 4096),
    "eval_max_new_tokens": (256, 4096),
    "limit":               (1000, None),
    "eval_limit":          (200, None),
    "save_every":          (20, 50),
    "sample_batch_size":   (256, 64),
    "eval_batch_size":     (512, 64),
    "eval_subset":         (100, 100),
    "eval_samples":        (2, 0),
}
# The last line of a toy run (a lower tuned accuracy on one run says little: see docs/results.md's table).
TOY_NOTE = ("toy world: one run, one seed (the intervals above cover the questions, not the seed); what each "
            "method does here over 3 seeds and 2,000 held-out questions: docs/results.md")
METHODS = ("upft", "sft", "rft", "em", "vote")
# The switches of the controls that take UPFT apart (docs/method.md §7.1; --method upft only). Each builds
# its examples from the same split and samples as plain UPFT with the same seed.
ABLATIONS = ("no_instruction", "no_eos", "full_only", "random_targets")


# The smallest sampling temperature the flags take (train.py's and eval.py's; 0 = greedy): sampling divides
# the logits by it in fp32, and below ~1e-37 the quotient overflows to inf (a NaN softmax, an out-of-range
# token id). At 1e-6 only logits beyond 3e32 would; for anything colder, use 0.
MIN_TEMPERATURE = 1e-6


def add_flag(parser, flag, help, **options):
    """parser.add_argument, with the default in the help text, wherever it comes from (DEFAULTS or here)."""
    name = flag[2:].replace("-", "_")
    if name in DEFAULTS:
        toy_default, real_default = DEFAULTS[name]
        help += f" (default: {toy_default if toy_default is not None else 'all'} on the toy world, " \
                f"{real_default if real_default is not None else 'all'} with --model)"
    elif options.get("default") is not None and options.get("action") != "store_true":
        help += " (default: %(default)s)"
    parser.add_argument(flag, help=help, **options)


def build_parser():
    parser = argparse.ArgumentParser(description="Unsupervised Prefix Fine-Tuning (and the SFT / RFT / EM-FT / "
                                                 "majority-vote baselines, and the controls that take UPFT apart).")
    add = functools.partial(add_flag, parser)
    add_method_flags(add)
    add_run_flags(add)
    return parser


def add_method_flags(add):
    """What is trained on, and how: the model, the data, the method and its sampling, the optimizer, the controls."""
    add("--model", "HF checkpoint directory or hub id (default: the embedded toy world in assets/toy)")
    add("--world", "a toy world folder (scripts/build_toy.py writes one) instead of the shipped assets/toy: its "
        "model, questions and the toy defaults")
    add("--data", "training questions, JSONL with 'question' or 'problem' (answers only needed by rft)")
    add("--eval-data", "held-out JSONL with answers for base/tuned greedy accuracy (toy: its test split)")
    add("--method", "what to train on: UPFT, or a baseline (sft: one self-generated trace; rft: the first of N "
        "that matches the label; em: sft's traces, entropy-minimisation loss; vote: the first of N that "
        "matches the majority answer, no labels)", default="upft", choices=METHODS)
    add("--prefix-len", "L: prefix tokens kept per sample (paper: 8 Llama, 32 Qwen-Math, 128 R1)", type=int,
        default=8)
    add("--structure-ratio", "p: fraction of questions trained on a full trace (the paper's 'structure tuning', "
        "which keeps the model's whole-solution structure)", type=float, default=0.1)
    add("--num-samples", "prefixes per question for voting (upft; 1 = the paper), or full samples per "
        "question (rft, vote) (default: 1 for upft, 16 for rft and vote)", type=int)
    add("--temperature", "sampling temperature (the official code's value)", type=float, default=0.6)
    add("--top-p", "sampling top-p (default: the model's generation_config.json, else 1.0)", type=float)
    add("--top-k", "sampling top-k, 0 = off (default: the model's generation_config.json, else 0)", type=int)
    add("--max-new-tokens", "budget of a full self-generated trace", type=int)
    add("--max-len", "longest training sequence; longer ones are cut (no forced EOS)", type=int)
    add("--lr", "peak learning rate (constant after a 3%% warmup)", type=float)
    add("--epochs", "passes over the training examples", type=int)
    add("--batch-size", "examples per optimizer step", type=int)
    add("--micro-batch-size", "examples per forward/backward (gradient accumulation)", type=int)
    add("--loss-norm", "token: sum CE / supervised tokens of the step; sample: the official per-sample mean",
        default="token", choices=["token", "sample"])
    add("--grad-ckpt", "gradient checkpointing (less memory, slower)", action="store_true")
    add("--loss-chunk", "K: the loss at most K rows of logits at a time, in windows recomputed in the backward pass "
        "(less memory for long traces); 0 = all supervised rows at once (default: the memory plan's, {LOSS_CHUNK} "
        "when --max-len is longer, else 0)".format(LOSS_CHUNK=LOSS_CHUNK), type=int)
    add("--no-instruction", "control (upft): prefix examples without the prefix instruction", action="store_true")
    add("--no-eos", "control (upft): no EOS after the prefix (L supervised tokens, not L + 1)", action="store_true")
    add("--full-only", "control (upft): train only on the full traces of the fraction p (prefix questions "
        "are neither sampled nor trained)", action="store_true")
    add("--random-targets", "control (upft): each prefix example gets the sampled prefix of another question "
        "(a seeded derangement)", action="store_true")


def add_run_flags(add):
    """How it is measured and run: the evaluations, batches, seed, run folder, device and precision, --plan."""
    add("--eval-every", "greedy accuracy on the first --eval-subset held-out questions every K optimizer "
        "steps (and before the first, after the last), into metrics.jsonl; 0 = never", type=int, default=0)
    add("--eval-subset", "held-out questions evaluated during training (--eval-every)", type=int)
    add("--limit", "use the first K training questions", type=int)
    add("--eval-limit", "use the first K eval questions", type=int)
    add("--eval-max-new-tokens", "budget of an evaluation answer", type=int)
    add("--eval-samples", "K: besides the greedy answer, K sampled answers per held-out question (mean accuracy "
        "and pass@K), at --eval-temperature with the checkpoint's top-p/top-k; 0 = greedy only", type=int)
    add("--eval-temperature", "temperature of the sampled evaluation (the same for every method, whatever it "
        "sampled its training data at)", type=float, default=0.6)
    add("--eval-seed", "seed of the sampled evaluation's random streams (the same for base and tuned, so the "
        "two are compared on the same uniform numbers, question by question)", type=int, default=0)
    add("--eval-batch-size", "sequences decoded together while evaluating; on CUDA the largest the memory plan "
        "fits", type=int)
    add("--sample-batch-size", "sequences decoded together while sampling; on CUDA the largest the memory plan "
        "fits", type=int)
    add("--seed", "seed of the split, the sampling and the data order", type=int, default=0)
    add("--out", "run folder (default: runs/<time>-<method>-L<L>-s<seed>); must not exist unless --resume")
    add("--resume", "continue the interrupted run <out>.partial from its samples and last checkpoint",
        action="store_true")
    add("--save-every", "optimizer steps between resumable checkpoints, 0 = never", type=int)
    add("--device", "cpu or cuda", default=default_device())
    add("--dtype", "weights dtype (fp32 master weights with bf16 autocast on CUDA is the default)",
        choices=["float32", "bfloat16"], default="float32")
    add("--autocast-bf16", "CPU: train under bf16 autocast (fp32 master weights; faster steps on CPUs with "
        "AVX512-BF16 or AMX, docs/performance.md; refused on others; CUDA always trains in bf16)", action="store_true")
    add("--decode-bf16", "sample and evaluate with a bf16 copy of the weights (CPU: needs fast bf16 as above)",
        action="store_true")
    add("--no-eval", "skip base/tuned accuracy", action="store_true")
    add("--plan", "print the memory plan and exit (reads only config.json); NPROC: plan for torchrun with that "
        "many processes (default: this launch)", nargs="?", type=int, const=-1, metavar="NPROC")  # -1: --plan alone
    add("--gpu-mem", f"GPU memory to plan against, GiB (default: the device's; {PLAN_GPU_GIB} with --plan on a "
        "machine without one)", type=float, metavar="GIB")
    add("--base-from", "a finished run on the same model and held-out questions whose base accuracy is "
        "reused instead of evaluated again (greedy: the same numbers; the training does not depend on it)")


# ----------------------------------------------------------------------------- their checks

def require(ok, message):
    """A failed check of the input: one line, `error: message`, exit 2 (main prints it)."""
    if not ok:
        raise UpftError(message)


def parse_args(argv=None):
    """Parse and check every flag (ranges, combinations, the run folder); nothing is read or written.
    On CUDA, --sample-batch-size and --eval-batch-size not given stay None: the memory plan picks them."""
    args = build_parser().parse_args(argv)
    for k, (toy_default, real_default) in DEFAULTS.items():
        if k in ("sample_batch_size", "eval_batch_size") and args.device.startswith("cuda"):
            continue  # from the memory plan (plan_for)
        if getattr(args, k) is None:
            setattr(args, k, real_default if args.model else toy_default)
    if args.num_samples is None:
        args.num_samples = 16 if args.method in ("rft", "vote") else 1
    check_numbers(args)
    check_combinations(args)
    if args.plan is not None:
        return args  # --plan reads config.json only: no data, no run folder
    check_run_folder(args)
    return args


def check_numbers(args):
    """Every number in its range."""
    require(args.prefix_len >= 1, f"--prefix-len must be a positive number of tokens, got {args.prefix_len}")
    require(0.0 <= args.structure_ratio <= 1.0, f"--structure-ratio must be in [0, 1], got {args.structure_ratio}")
    require(args.num_samples >= 1, f"--num-samples must be >= 1, got {args.num_samples}")
    require(args.temperature == 0 or args.temperature >= MIN_TEMPERATURE,
            f"--temperature must be 0 (greedy) or at least {MIN_TEMPERATURE:g}, got {args.temperature}")
    require(args.top_p is None or 0 < args.top_p <= 1, f"--top-p must be in (0, 1], got {args.top_p}")
    require(args.top_k is None or args.top_k >= 0, f"--top-k must be >= 0 (0 = off), got {args.top_k}")
    for k in ("lr", "epochs", "batch_size", "micro_batch_size", "max_len", "max_new_tokens", "eval_batch_size",
              "sample_batch_size", "eval_max_new_tokens", "limit", "eval_limit"):
        v = getattr(args, k)
        require(v is None or v > 0, f"--{k.replace('_', '-')} must be positive, got {v}")
    require(args.save_every >= 0, f"--save-every must be >= 0, got {args.save_every}")
    require(args.loss_chunk is None or args.loss_chunk >= 0, f"--loss-chunk must be >= 0, got {args.loss_chunk}")
    require(args.plan in (None, -1) or args.plan >= 1,
            f"--plan NPROC must be a positive number of processes, got {args.plan}")
    require(args.gpu_mem is None or args.gpu_mem > 0, f"--gpu-mem must be positive, got {args.gpu_mem}")


def check_combinations(args):
    """Flags that do not go together, bf16 where this CPU would emulate it, the evaluation's settings."""
    bf16 = [f for f, on in (("--autocast-bf16", args.autocast_bf16), ("--decode-bf16", args.decode_bf16)) if on]
    if bf16 and not args.device.startswith("cuda"):
        fast, why = cpu_bf16()
        require(fast, f"{' '.join(bf16)}: {why}; bf16 matrix products would run several times slower than fp32 "
                      f"here: drop the flag")
    require(not (args.autocast_bf16 and args.dtype == "bfloat16"), "--autocast-bf16 needs fp32 master weights "
            "(--dtype float32)")
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
    require(args.eval_every >= 0, f"--eval-every must be >= 0, got {args.eval_every}")
    require(args.eval_samples >= 0, f"--eval-samples must be >= 0, got {args.eval_samples}")
    require(args.eval_temperature >= MIN_TEMPERATURE, f"--eval-temperature must be at least {MIN_TEMPERATURE:g} "
            f"(greedy is always evaluated), got {args.eval_temperature}")
    require(args.eval_subset > 0, f"--eval-subset must be positive, got {args.eval_subset}")
    require(not (args.eval_every and args.no_eval), "--eval-every needs held-out evaluation (drop --no-eval)")
    require(not (args.eval_every and args.model and not args.eval_data),
            "--eval-every needs --eval-data (held-out questions with answers)")


def check_run_folder(args):
    """The inputs a run needs besides the flags, and its folder: --out (default: a new name) must not
    exist, its <out>.partial must be creatable, and exist exactly when --resume says so."""
    require(not args.model or args.data, "--data is required with --model (JSONL of training questions)")
    require(not (args.model and args.world), "--world and --model: one or the other")
    require(not args.world or (Path(args.world) / "build.json").is_file(),
            f"--world {args.world}: no toy world there (build.json missing)")
    if args.base_from:
        check_base_from(args)
    if args.out is None:
        args.out = f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{args.method}-L{args.prefix_len}-s{args.seed}"
    out, partial = Path(args.out), partial_dir(args.out)
    require(not out.exists(), f"--out {out} already exists" + (" (a finished run)" if args.resume else
                                                               " (choose another --out)"))
    check_writable(partial, "--out")
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
    prev = json.loads((src / "args.json").read_text())
    diff = [k for k in BASE_EVAL_KEYS if prev.get(k) != getattr(args, k)]
    require(not diff, f"--base-from {src}: its base evaluation used other settings ({', '.join(diff)})")
    require(not args.eval_samples or (src / "eval_base_sampled.json").is_file(),
            f"--base-from {src}: no sampled base evaluation (eval_base_sampled.json)")
    require(not args.no_eval, "--base-from with --no-eval: there is no evaluation to reuse")


def check_writable(path: Path, flag):
    """A folder that will be created at `path` can be: its nearest existing ancestor is a folder in which
    a folder can be made (tried, and removed at once: permission bits do not tell root or a read-only
    file system)."""
    parent = Path(path).absolute().parent
    while not parent.exists():
        parent = parent.parent
    require(parent.is_dir(), f"{flag} {path}: {parent} is not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".upft-write-check-", dir=parent))
    except OSError as e:
        require(False, f"{flag} {path}: cannot write in {parent} ({e.strerror})")



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


# ----------------------------------------------------------------------------- the inputs

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
        shipped = Path(args.world or toy.WORLD_DIR) / "model" / "config.json"
        return Config.from_json(shipped) if shipped.is_file() else Config.from_dict(toy.model_config())
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
