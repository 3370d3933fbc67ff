"""One prepared GPU check: every CUDA path of upft runs once, in under 8 minutes, and leaves evidence.

    python scripts/gpu_check.py --out runs/gpu-check                  # one CUDA device (the default)
    python scripts/gpu_check.py --out runs/gpu-check-cpu --device cpu  # the same parts, tiny, on CPU (CI)
    python scripts/gpu_check.py --reference                           # rewrite gpu_check_reference.json (CPU)

A GPU comes rarely and for minutes, so the check is written before one does. Five independent parts (and
`env`, what the machine is), each in a child process with its own time budget:

  1 toy       the toy world's UPFT run end to end (`train.py --prefix-len 8 --device cuda`): sampling,
              bf16-autocast training, evaluation; accuracies, token counts and seconds per phase next to
              the CPU run of the same command (gpu_check_reference.json, beside this script)
  2 parity    random tiny Llama and Qwen2 in fp32: our logits vs transformers' (|diff| <= 1e-4 + 1e-4 |ref|,
              as tests/test_model.py); a larger random shape decoded greedily in bf16 (and fp32) by both:
              the share of identical tokens
  3 bench     tests/bench.py on a random Qwen2.5-1.5B shape in bf16, batches 1 and 64: tokens/s of ours
              and of transformers in the same run, peak memory
  4 torchrun  a random Qwen2.5-0.5B shape trained by `python train.py` and by `torchrun --nproc-per-node 1
              train.py` (FSDP2, bf16 mixed precision, NCCL): the same examples, the loss per step within a
              bf16 tolerance; the memory plan's exact figures vs the tensors, its peak vs
              torch.cuda.max_memory_allocated
  5 refusal   a micro-batch far too large for the device: train.py stops before loading anything (exit 2)
              with one line `error: memory plan: ...` naming a smaller micro-batch that fits

The time: the deadline (480 s on CUDA) is shared out in proportion to each part's weight (env: a fixed
30 s), and what a part leaves unused goes to the parts after it; a part whose share would fall below its
minimum is skipped, and the report says so. A failing part is recorded with its error and the others still
run. Writes <out>/report.json (every number), <out>/summary.md (one page) and each part's logs and run files
(no weights) under <out>/<part>/; exit 0 when every part passed, 1 otherwise, 2 for bad arguments.

What it relies on: the command lines (train.py, torchrun, tests/bench.py), the files a run writes
(results.json, accounting, metrics.jsonl, memory_plan.json, memory_measured.json), model.Transformer /
model.generate and data.Tokenizer. To read torch.cuda.max_memory_allocated of a train.py run, this script
runs train.py's own command line in its process (`--as-train`, also as torchrun's worker), then reads it.
Random checkpoints are built from transformers' config classes in a temporary folder, with the toy world's
tokenizer: no network, no hub id, no file outside the repository. Nothing newer than torch 2.11 is used.
The orchestrator and the parts that only run command lines never import torch: a broken install still
gets its report.
"""
import argparse
import json
import os
import re
import resource
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (docs/performance.md, "A busy machine")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model is a local folder: never wait on a network (children too)

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
REFERENCE = Path(__file__).with_name("gpu_check_reference.json")
TOY_TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")  # from assets/toy/model
GiB = 2 ** 30

# ----------------------------------------------------------------------------- what runs, at which size

# The toy command of part 1 (and of the reference): the full default run on CUDA; on CPU 16 training and 16
# held-out questions, greedy evaluation only.
TOY_ARGS = {"full": [], "tiny": ["--limit", "16", "--eval-limit", "16", "--eval-samples", "0"]}

# Random shapes in transformers' config.json terms. The tiny two are tests/conftest.py's (GQA, llama3 RoPE
# scaling and an untied head; q/k/v biases and a tied head).
LLAMA_TINY = dict(model_type="llama", vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=500000.0,
                  max_position_embeddings=256, tie_word_embeddings=False, initializer_range=0.1,
                  rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                    original_max_position_embeddings=32))
QWEN2_TINY = dict(model_type="qwen2", vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=10000.0,
                  max_position_embeddings=256, tie_word_embeddings=True, initializer_range=0.1)
# Qwen2.5-0.5B's shape (494M parameters, 136M of them the tied 152k-token embedding)
QWEN_05B = dict(model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                num_attention_heads=14, num_key_value_heads=2, rope_theta=1000000.0, max_position_embeddings=4096,
                tie_word_embeddings=True, rms_norm_eps=1e-6)

PROFILES = {
    "cuda": dict(
        deadline=480, toy="full",
        # bf16 decoding: a 155M Llama shape, 16 prompts of 32 random tokens, 64 new tokens
        decode_shape=dict(model_type="llama", vocab_size=32000, hidden_size=1024, intermediate_size=2816,
                          num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=4,
                          max_position_embeddings=1024),
        decode=(16, 32, 64),
        bench=["--shape", "qwen2.5-1.5b", "--device", "cuda", "--dtype", "bfloat16", "--batches", "1", "64"],
        dist_shape=QWEN_05B, dist_max_len=512),
    "cpu": dict(
        deadline=240, toy="tiny",
        decode_shape=dict(model_type="llama", vocab_size=1024, hidden_size=128, intermediate_size=384,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=256),
        decode=(4, 16, 16),
        bench=["--shape", "tiny", "--device", "cpu", "--dtype", "float32", "--new-tokens", "8", "--prompt-len", "8",
               "--repeats", "1", "--batches", "1", "2"],
        dist_shape={**LLAMA_TINY, "vocab_size": 640, "initializer_range": 0.02}, dist_max_len=192),
}

# Each part: (weight: its share of the time left, minimum seconds on CUDA, on CPU, what it checks), in the
# order they run. env does not share: it gets ENV_BUDGET seconds.
ENV_BUDGET = 30
PARTS = {
    "env": (0, 5, 5, "the machine: torch, CUDA, the device, transformers"),
    "toy": (4, 40, 10, "1. the toy UPFT run end to end vs the CPU run of the same command"),
    "parity": (2, 20, 5, "2. logits vs transformers (fp32), greedy decoding agreement (bf16 and fp32)"),
    "bench": (6, 60, 8, "3. tests/bench.py: tokens/s of ours and transformers, peak memory"),
    "torchrun": (6, 60, 10, "4. torchrun (FSDP2, 1 process) vs one process: loss per step, memory plan vs measured"),
    "refusal": (1, 10, 3, "5. the memory plan's refusal of a micro-batch too large for the device"),
}

# Tolerances, one place (justified where they are used)
ACC_POINTS = {"base": (0.02, 1), "tuned": (0.04, 2)}   # |accuracy difference| <= max(share, k questions)
TOKENS_RTOL = 0.02                                    # tokens sampled, relative
LOSS_MEAN_RTOL = 0.02                                 # toy: mean training loss over the steps, bf16 vs fp32
LOGITS_TOL = 1e-4                                     # fp32 logits: atol = rtol = 1e-4 (tests/test_model.py)
AGREE = {"float32": 0.95, "bfloat16": 0.8}            # share of tokens decoded identically before a row parts
DIST_RTOL = {"cuda": (2e-3, 1e-2), "cpu": (1e-6, 1e-5)}  # torchrun vs one process: (loss, grad norm), relative
PEAK_MARGIN = 1 / 0.9                                 # the plan fills at most 90% of the device


# ----------------------------------------------------------------------------- the orchestrator

def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--as-train"]:  # a train.py run inside this process (part 4): ... --as-train PEAK ARGS
        return as_train(Path(argv[1]), argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="report folder (must not exist or be empty)")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                    help="cuda (the check) or cpu (the same parts at tiny sizes: CI)")
    ap.add_argument("--deadline", type=float, help="seconds for everything (default: 480 on cuda, 240 on cpu)")
    ap.add_argument("--parts", nargs="+", choices=list(PARTS)[1:], help="run only these parts (env always runs)")
    ap.add_argument("--reference", nargs="*", choices=list(TOY_ARGS), help="run part 1's toy commands on CPU "
                    f"(both, or the sizes named) and write their numbers into {REFERENCE.name} (full: about 4 "
                    "minutes on 2 cores)")
    ap.add_argument("--part", help=argparse.SUPPRESS)           # internal: run one part (a child process)
    ap.add_argument("--budget", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.reference is not None:
        return write_reference(args.reference or list(TOY_ARGS))
    if args.part:
        return run_child(args)
    if not args.out:
        ap.error("--out DIR is required")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        print(f"error: --out {out} already exists and is not empty (choose another)", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    deadline = args.deadline or PROFILES[args.device]["deadline"]
    names = ["env"] + [p for p in list(PARTS)[1:] if not args.parts or p in args.parts]
    t0 = time.time()
    report = {"device": args.device, "deadline_s": deadline, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": " ".join([Path(sys.argv[0]).name, *argv]), "parts": {}}
    for i, name in enumerate(names):
        left = deadline - (time.time() - t0)
        # env: a fixed short budget; every other part: its share of what is left (unused time flows on)
        budget = min(ENV_BUDGET, left) if name == "env" else \
            left * PARTS[name][0] / sum(PARTS[n][0] for n in names[i:])
        minimum = PARTS[name][1 if args.device == "cuda" else 2]
        env = report["parts"].get("env", {})
        if name != "env" and args.device == "cuda" and env.get("numbers", {}).get("cuda_available") is False:
            rec = {"status": "skipped", "why": "no CUDA device (see env)"}
        elif budget < minimum:
            rec = {"status": "skipped", "why": f"its share of the time left, {budget:.0f} s of {left:.0f} s before "
                                               f"the {deadline:.0f} s deadline, is below its minimum {minimum} s"}
        else:
            rec = run_part(name, out, args.device, budget)
        rec.update(part=name, title=PARTS[name][3])
        report["parts"][name] = rec
        why = rec.get("why") or rec.get("error") or ""
        print(f"{name:9s} {rec['status']:9s} {rec.get('seconds', 0):6.1f} s  {why}", flush=True)
    report["seconds"] = time.time() - t0
    report["passed"] = all(r["status"] == "passed" for r in report["parts"].values())
    write_json(out / "report.json", report)
    (out / "summary.md").write_text(summary(report))
    print(f"{'PASSED' if report['passed'] else 'FAILED'} in {report['seconds']:.0f} s: {out / 'summary.md'}")
    return 0 if report["passed"] else 1


def run_part(name, out, device, budget):
    """Run one part in a child process (its own session, so that everything it started can be stopped)
    for at most `budget` seconds; return its record (part.json), whatever happened to it."""
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [PY, str(Path(__file__).resolve()), "--part", name, "--out", str(out), "--device", device,
           "--budget", f"{budget:.1f}"]
    t = time.time()
    with open(folder / "child.log", "w") as log:
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            p.wait(timeout=budget)
            timed_out = False
        except subprocess.TimeoutExpired:  # SIGTERM first: torchrun then stops its workers (their own sessions)
            stop_group(p)
            timed_out = True
    try:
        rec = json.loads((folder / "part.json").read_text())
    except (OSError, ValueError):
        rec = {"checks": [], "numbers": {}, "notes": []}
    rec["seconds"], rec["budget_s"] = time.time() - t, round(budget, 1)
    if timed_out:
        rec["error"] = f"stopped at its budget of {budget:.0f} s (what it had measured is kept)"
    elif p.returncode != 0 and not rec.get("error"):
        rec["error"] = f"the part's process exited with {p.returncode}: " + tail(folder / "child.log")
    failed = [c["what"] for c in rec["checks"] if not c["ok"]]
    rec["status"] = "timed out" if timed_out else "failed" if rec.get("error") or failed or not rec["checks"] \
        else "passed"
    if failed:
        rec.setdefault("why", "failed: " + "; ".join(failed))
    return rec


def stop_group(p, grace=20):
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        try:
            p.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            pass


def tail(path, n=600):
    try:
        return Path(path).read_text(errors="replace").strip()[-n:]
    except OSError:
        return ""


def write_json(path, obj):
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- a part, in its child process

class Part:
    """One part's record: its checks (each with what was measured, against what, and the tolerance), its
    numbers and notes; saved to part.json after every change, so a part stopped at its budget keeps them."""

    def __init__(self, name, out, device, budget):
        self.name, self.dir, self.device = name, out / name, device
        self.cuda = device == "cuda"
        self.profile = PROFILES[device]
        # the command lines it runs stop a little before the orchestrator would stop the part
        self.deadline = time.time() + budget - min(25.0, 0.15 * budget)
        self.rec = {"checks": [], "numbers": {}, "notes": []}

    def check(self, what, ok, got="", want="", tol=""):
        self.rec["checks"].append({"what": what, "ok": bool(ok), "got": got, "want": want, "tolerance": tol})
        self.save()
        return ok

    def number(self, **kw):
        self.rec["numbers"].update(kw)
        self.save()

    def note(self, text):
        self.rec["notes"].append(text)
        self.save()

    def save(self):
        write_json(self.dir / "part.json", self.rec)

    def sh(self, tag, cmd):
        """Run a command line to completion (or until this part's time is up); (exit code, stdout, stderr,
        seconds). Its output is kept in <tag>.stdout / <tag>.stderr (the first line: the command)."""
        return self.sh_together({tag: cmd})[tag]

    def sh_together(self, commands):
        """Run several command lines side by side ({tag: command}); {tag: (exit code, stdout, stderr, seconds)}."""
        t, procs = time.time(), {}
        for tag, cmd in commands.items():
            cmd = [str(c) for c in cmd]
            files = [open(self.dir / f"{tag}.{k}", "w") for k in ("stdout", "stderr")]
            files[0].write(f"$ {' '.join(cmd)}\n")
            files[0].flush()
            procs[tag] = (subprocess.Popen(cmd, cwd=ROOT, stdout=files[0], stderr=files[1]), files)
        results = {}
        for tag, (p, files) in procs.items():
            try:
                p.wait(timeout=max(1.0, self.deadline - time.time()))
            except subprocess.TimeoutExpired:
                for q, _ in procs.values():
                    stop(q)
                raise TimeoutError(f"{tag}: {' '.join(map(str, commands[tag][1:3]))} ... did not finish in "
                                   f"this part's time")
            finally:
                for f in files:
                    f.close()
            out, err = ((self.dir / f"{tag}.{k}").read_text(errors="replace") for k in ("stdout", "stderr"))
            results[tag] = (p.returncode, out.split("\n", 1)[1], err, time.time() - t)
            with open(self.dir / f"{tag}.stdout", "a") as f:
                f.write(f"\n# exit {p.returncode}, {time.time() - t:.1f} s\n")
        return results


def stop(p):
    """Stop a command line: SIGTERM first (torchrun passes it on to its workers), SIGKILL after 15 s."""
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def run_child(args):
    part = Part(args.part, Path(args.out), args.device, args.budget)
    part.save()
    try:
        if os.environ.get("UPFT_GPU_CHECK_BREAK") == args.part:  # for tests/test_gpu_check.py only
            raise RuntimeError("broken on purpose (UPFT_GPU_CHECK_BREAK)")
        FUNCTIONS[args.part](part)
    except Exception as e:  # recorded; the orchestrator goes on with the next part
        part.rec["error"] = f"{type(e).__name__}: {e}"
        part.rec["traceback"] = traceback.format_exc()[-4000:]
        part.save()
        return 1
    return 0


# ----------------------------------------------------------------------------- env

def part_env(part):
    """What the machine is: versions, the device, its memory. Fails in cuda mode without a CUDA device.
    (The CPU mode reads the versions only: it does not load torch here, to save CI its seconds.)"""
    import importlib.metadata as md
    n = {"python": sys.version.split()[0]}
    for pkg in ("torch", "transformers", "tokenizers", "safetensors"):
        try:
            n[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            n[pkg] = None
    if part.cuda:
        import torch
        import torch.distributed
        n.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
        part.number(**n)  # saved first: the other parts run only where this says a device is there
    if n.get("cuda_available"):
        props = torch.cuda.get_device_properties(0)
        n.update(device_count=torch.cuda.device_count(), device_name=props.name,
                 device_gib=props.total_memory / GiB, capability=f"{props.major}.{props.minor}",
                 bf16_supported=torch.cuda.is_bf16_supported())
        try:  # a tuple (2, 21, 5) in recent torch; recorded as it comes
            v = torch.cuda.nccl.version() if torch.distributed.is_nccl_available() else None
            n["nccl"] = ".".join(map(str, v)) if isinstance(v, tuple) else v
        except Exception as e:  # noqa: BLE001  (a version string is not worth failing the check for)
            n["nccl"] = f"unknown ({type(e).__name__})"
    try:
        n["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                     text=True, timeout=10).stdout.strip() or None
    except OSError:
        n["commit"] = None
    part.number(**n)
    part.check("transformers is installed (the reference of parts 2 and 3)", n["transformers"], n["transformers"])
    if part.cuda:
        part.check("a CUDA device", n["cuda_available"], n.get("device_name", "none"))


# ----------------------------------------------------------------------------- 1. toy

def toy_numbers(run):
    """The numbers of a finished toy run folder that part 1 compares (results.json, metrics.jsonl, args.json:
    the decoding batches, the memory plan's on CUDA). accounting.json is written before training; results.json
    holds it complete."""
    r = json.loads((run / "results.json").read_text())
    a = r["accounting"]
    losses = [m["loss"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in m]
    used = json.loads((run / "args.json").read_text())
    n = {"questions": a["questions"], "prefix_examples": a["prefix_examples"], "full_examples": a["full_examples"],
         "tokens_sampled": a["tokens_sampled"], "tokens_supervised": a["tokens_supervised"],
         "eval_questions": r["base"]["questions"], "base_accuracy": r["base"]["accuracy"],
         "tuned_accuracy": r["tuned"]["accuracy"], "losses": losses,
         "sampling_seconds": a["sampling_seconds"], "training_seconds": a["training_seconds"],
         "wall_seconds": r["wall_seconds"], "sample_batch": used["sample_batch_size"], "eval_batch": used["eval_batch_size"]}
    for k in ("base", "tuned"):
        if r.get(f"{k}_sampled"):
            n[f"{k}_sampled_accuracy"] = r[f"{k}_sampled"]["accuracy"]
    return n


def toy_command(size, device, out):
    return [PY, ROOT / "train.py", "--prefix-len", "8", "--device", device, *TOY_ARGS[size], "--out", out]


def part_toy(part):
    """1. `train.py --prefix-len 8 --device cuda` on the shipped toy world: sampling on the device, bf16-autocast
    training, evaluation; against the CPU run of the same command (committed: gpu_check_reference.json)."""
    size = part.profile["toy"]
    ref = json.loads(REFERENCE.read_text())["toy"][size]
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        cmd = toy_command(size, part.device, run)
        rc, out, err, secs = part.sh("train", cmd)
        part.number(command=" ".join(["python", "train.py", *map(str, cmd[2:-2])]),
                    reference=f"{REFERENCE.name}: {ref['made']}")
        if not part.check("train.py exits 0", rc == 0, rc, 0, err.strip()[-300:] if rc else ""):
            return
        got = toy_numbers(run)
        keep_files(run, part.dir / "run")
    part.number(device_run=got, cpu_reference=ref["numbers"])
    want = ref["numbers"]
    # The split is seeded, whatever the device: the same questions get a prefix or a full trace.
    for k in ("questions", "prefix_examples", "full_examples", "eval_questions"):
        part.check(f"{k} as on CPU", got[k] == want[k], got[k], want[k], "exact")
    # Base: fp32 greedy decoding on both devices; only float noise in the kernels differs, which can turn a
    # near-tie of the top two tokens. Tuned: the device trains under bf16 autocast (CPU in fp32), a
    # perturbation of the weights of about bf16's precision; allowed about one Wilson half-width (500
    # questions give +-4.3 points). A first guess (no GPU run yet): NaN weights or a wrong loss move it far more.
    for k, (share, q) in ACC_POINTS.items():
        tol = max(share, q / got["eval_questions"])
        d = got[f"{k}_accuracy"] - want[f"{k}_accuracy"]
        part.check(f"{k} greedy accuracy near CPU's", abs(d) <= tol + 1e-9, pct(got[f"{k}_accuracy"]),
                   pct(want[f"{k}_accuracy"]), f"+-{tol * 100:.1f} pts (max({share * 100:.0f} pts, {q} question(s)))")
    # Samples draw from per-sample random streams (docs/method.md 3.2): the same uniform numbers on every device,
    # so the tokens agree but where float noise moves a draw across a boundary (rare: docs/usage.md, 1 in 44,336).
    rel = abs(got["tokens_sampled"] - want["tokens_sampled"]) / want["tokens_sampled"]
    part.check("tokens sampled near CPU's", rel <= TOKENS_RTOL, got["tokens_sampled"], want["tokens_sampled"],
               f"rtol {TOKENS_RTOL}")
    # Training loss: bf16 autocast vs fp32, per token about bf16's 2^-8; the mean over every step averages it.
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    steps_ok = len(got["losses"]) == len(want["losses"])
    part.check("optimizer steps as on CPU", steps_ok, len(got["losses"]), len(want["losses"]), "exact")
    if steps_ok:
        rel = abs(mean(got["losses"]) - mean(want["losses"])) / mean(want["losses"])
        worst = max(abs(x - y) / y for x, y in zip(got["losses"], want["losses"]))
        part.check("mean training loss near CPU's", rel <= LOSS_MEAN_RTOL, f"{mean(got['losses']):.5f}",
                   f"{mean(want['losses']):.5f}", f"rtol {LOSS_MEAN_RTOL}")
        part.number(loss_worst_step_rel_diff=worst)
    part.note(f"seconds: sampling {got['sampling_seconds']:.1f} (CPU {want['sampling_seconds']:.1f}), training "
              f"{got['training_seconds']:.1f} (CPU {want['training_seconds']:.1f}), whole run "
              f"{got['wall_seconds']:.1f} (CPU {want['wall_seconds']:.1f}); decoding batches: sampling "
              f"{got['sample_batch']}, evaluation {got['eval_batch']} (on CUDA: the largest the memory plan fits)")


def keep_files(run, dest):
    """Copy a run folder's small files (its JSON and JSONL, not its weights) into the report."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in run.iterdir():
        if f.is_file() and f.suffix in (".json", ".jsonl"):
            shutil.copyfile(f, dest / f.name)


def pct(x):
    return f"{x * 100:.1f}%"


def write_reference(sizes):
    """The CPU numbers of part 1's commands (full, tiny), run here, into gpu_check_reference.json."""
    import platform
    ref = json.loads(REFERENCE.read_text()) if REFERENCE.is_file() else \
        {"note": "CPU runs of part 1's commands (scripts/gpu_check.py --reference); part 1 compares the device's "
                 "run with them", "toy": {}}
    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = toy_command(size, "cpu", Path(tmp) / "run")
            print("$", " ".join(map(str, cmd)), flush=True)
            subprocess.run([str(c) for c in cmd], cwd=ROOT, check=True)
            made = (f"{time.strftime('%Y-%m-%d')}, python train.py {' '.join(map(str, cmd[2:-2]))}, "
                    f"{os.cpu_count()} CPU cores ({platform.machine()}), torch {torch_version()}")
            ref["toy"][size] = {"made": made, "numbers": toy_numbers(Path(tmp) / "run")}
    write_json(REFERENCE, ref)
    print(f"wrote {REFERENCE}")
    return 0


def torch_version():
    import importlib.metadata as md
    return md.version("torch")


# ----------------------------------------------------------------------------- 2. parity

def save_random_hf(shape, folder, seed=0, perturb=False, tokenizer=False):
    """A random transformers model of `shape`, saved by its own save_pretrained (as tests/conftest.py).
    perturb: norms and biases moved off 1 and 0, so a mix-up cannot hide. tokenizer: the toy world's
    tokenizer files beside it (a train.py run needs them). No bos/eos/pad: nothing stops a decoding early."""
    import torch
    import transformers
    cfg = dict(shape)
    if tokenizer:  # every id the toy tokenizer makes must have an embedding row (its world sets the count)
        toy_vocab = json.loads((ROOT / "assets" / "toy" / "model" / "config.json").read_text())["vocab_size"]
        cfg["vocab_size"] = max(cfg["vocab_size"], toy_vocab)
    classes = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
               "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM)}[cfg.pop("model_type")]
    torch.manual_seed(seed)
    hf = classes[1](classes[0](**cfg, bos_token_id=None, eos_token_id=None, pad_token_id=None)).eval()
    if perturb:
        with torch.no_grad():
            for name, p in hf.named_parameters():
                if name.endswith("norm.weight") or name.endswith("bias"):
                    p.add_(0.1 * torch.randn_like(p))
    hf.save_pretrained(folder)
    if tokenizer:
        for f in TOY_TOKENIZER:
            shutil.copyfile(ROOT / "assets" / "toy" / "model" / f, Path(folder) / f)
    return Path(folder)


def load_pair(folder, device, dtype, eager=False):
    """(ours, transformers') on the device, in dtype, from one folder."""
    import transformers
    sys.path.insert(0, str(ROOT))
    from model import Transformer
    ours = Transformer.from_pretrained(folder, device=device, dtype=dtype)
    kw = {"attn_implementation": "eager"} if eager else {}
    ref = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kw).to(device).eval()
    return ours, ref


def agreement(ours, ref):
    """Greedy rows of ours vs transformers': the share of tokens decoded identically before each row's first
    difference (after it the two continue different texts), the same share position by position, whole rows
    identical, first tokens identical."""
    n = len(ours[0])
    first_diff = [next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), n) for x, y in zip(ours, ref)]
    return {"before_first_difference": sum(first_diff) / (n * len(ours)),
            "positionwise": sum(a == b for x, y in zip(ours, ref) for a, b in zip(x, y)) / (n * len(ours)),
            "rows_identical": f"{sum(k == n for k in first_diff)}/{len(ours)}",
            "first_token": f"{sum(x[0] == y[0] for x, y in zip(ours, ref))}/{len(ours)}"}


def part_parity(part):
    """2. Ours vs transformers on the device: logits of random tiny Llama and Qwen2 in fp32 (the tolerance of
    tests/test_model.py); greedy decoding of a larger random shape in bf16 and in fp32."""
    import torch
    sys.path.insert(0, str(ROOT))
    from model import generate
    dev = part.device
    with tempfile.TemporaryDirectory() as tmp:
        for name, shape, seed in (("llama", LLAMA_TINY, 0), ("qwen2", QWEN2_TINY, 1)):
            folder = save_random_hf(shape, Path(tmp) / name, seed=seed, perturb=True)
            ours, ref = load_pair(folder, dev, torch.float32, eager=True)
            ids = torch.randint(0, shape["vocab_size"], (3, 40), generator=torch.Generator().manual_seed(0)).to(dev)
            with torch.no_grad():
                a, b = ours(ids), ref(ids).logits
            diff = (a - b).abs()
            ok = bool((diff <= LOGITS_TOL + LOGITS_TOL * b.abs()).all())
            part.check(f"{name} fp32 logits equal transformers'", ok, f"max |diff| {diff.max().item():.2e}",
                       "", f"atol {LOGITS_TOL} + rtol {LOGITS_TOL}")
            del ours, ref
        # Greedy decoding: prompts of random tokens, exactly n new tokens on both sides (no stop token).
        # bf16: both round every product to 8 significant bits, in different kernels and orders, so a row may
        # part where its top two logits nearly tie; a bug parts nearly every row at once. fp32: a control.
        B, P, N = part.profile["decode"]
        shape = part.profile["decode_shape"]
        folder = save_random_hf(shape, Path(tmp) / "decode")
        prompts = torch.randint(0, shape["vocab_size"], (B, P), generator=torch.Generator().manual_seed(1))
        part.number(decode_shape={k: v for k, v in shape.items() if k != "model_type"},
                    decode=f"{B} prompts of {P} random tokens, {N} new tokens, greedy")
        for dtype in ("bfloat16", "float32"):
            ours, ref = load_pair(folder, dev, getattr(torch, dtype))
            mine = generate(ours, prompts.tolist(), N)
            with torch.inference_mode():
                theirs = ref.generate(prompts.to(dev), attention_mask=torch.ones_like(prompts).to(dev),
                                      max_new_tokens=N, min_new_tokens=N, do_sample=False,
                                      pad_token_id=0)[:, P:].tolist()
            agree = agreement(mine, theirs)
            part.number(**{f"decode_{dtype}": agree})
            part.check(f"{dtype} greedy tokens as transformers'", agree["before_first_difference"] >= AGREE[dtype],
                       f"{agree['before_first_difference']:.3f} (rows identical {agree['rows_identical']})",
                       f">= {AGREE[dtype]}", "share of tokens before each row's first difference")
            del ours, ref


# ----------------------------------------------------------------------------- 3. bench

BENCH_ROW = re.compile(r"^\s*(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x\s+(\d+)/(\d+)\s+(\S+)\s*$")


def part_bench(part):
    """3. tests/bench.py as a user runs it; its table parsed: tokens/s of ours and of transformers on the same
    random weights, the ratio, rows decoded alike, peak memory (GiB allocated, CUDA only)."""
    cmd = [PY, ROOT / "tests" / "bench.py", *part.profile["bench"]]
    rc, out, err, secs = part.sh("bench", cmd)
    part.number(command="python tests/bench.py " + " ".join(part.profile["bench"]), seconds=secs)
    if not part.check("bench.py exits 0", rc == 0, rc, 0, err.strip()[-300:] if rc else ""):
        return
    rows = {}
    for line in out.splitlines():
        m = BENCH_ROW.match(line)
        if m:
            b, ours, hf, ratio, same, _, peak = m.groups()
            peaks = peak.rstrip("G").split("/") if peak != "-" else None
            rows[int(b)] = {"ours_tok_s": float(ours), "hf_tok_s": float(hf), "ours_over_hf": float(ratio),
                            "same_rows": f"{same}/{b}", "peak_gib_ours": float(peaks[0]) if peaks else None,
                            "peak_gib_hf": float(peaks[1]) if peaks else None}
    part.number(header=next((line for line in out.splitlines() if line.startswith("shape")), ""), rows=rows)
    batches = [int(b) for b in part.profile["bench"][part.profile["bench"].index("--batches") + 1:]]  # the last flag
    part.check("a row per batch", sorted(rows) == batches, sorted(rows), batches, "exact")
    for b, r in rows.items():
        peak = f", peak {r['peak_gib_ours']}/{r['peak_gib_hf']} GiB" if r["peak_gib_ours"] is not None else ""
        part.check(f"batch {b}: both sides decode" + (", peak memory reported" if part.cuda else ""),
                   r["ours_tok_s"] > 0 and r["hf_tok_s"] > 0 and (peak or not part.cuda),
                   f"ours {r['ours_tok_s']:.1f} tok/s, HF {r['hf_tok_s']:.1f} tok/s ({r['ours_over_hf']:.2f}x), "
                   f"same rows {r['same_rows']}{peak}", "> 0 tok/s", "")
    part.note("no speed is required: ours/HF is the figure to read. Same rows: rows whose greedy tokens agree over "
              "every new token (in bf16 a row may part at a near-tie). Peak: torch.cuda.max_memory_allocated during "
              "the side's timed runs, both models resident (ours/HF)")


# ----------------------------------------------------------------------------- 4. torchrun

def as_train(peak_file, argv):
    """train.py's command line, run in this process (`python train.py ARGS` as it is, or as torchrun's worker),
    then this process's peak memory into <peak_file>.rank<r>.json: torch.cuda.max_memory_allocated (and
    reserved) on CUDA, the resident set's peak on CPU; and the process group's backend."""
    import torch
    import torch.distributed as dist
    backend = {}
    init = dist.init_process_group

    def remember(*a, **kw):  # which backend train.py joined with (the group is gone once it returns)
        init(*a, **kw)
        backend["name"] = dist.get_backend()
    dist.init_process_group = remember
    sys.path.insert(0, str(ROOT))
    sys.argv = [str(ROOT / "train.py"), *argv]
    code = 0
    try:
        runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
    rank = int(os.environ.get("RANK", 0))
    rec = {"rank": rank, "exit": code, "backend": backend.get("name"),
           "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rec.update(max_allocated_bytes=torch.cuda.max_memory_allocated(),
                   max_reserved_bytes=torch.cuda.max_memory_reserved(),
                   device_bytes=torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)
    write_json(Path(f"{peak_file}.rank{rank}.json"), rec)
    return code


def long_questions(tok, n, tokens):
    """n different questions whose chat prompts are `tokens` tokens long or a little more, so that every
    training example nearly fills --max-len (the plan's activation estimate assumes full-length rows)."""
    words = ("Emma has some cards in her room and gives a few of them to Noah who buys more packs of "
             "cards then shares them equally with his cousins and keeps one share for himself").split()
    out = []
    for i in range(n):
        q, k = f"Question {i}:", 0
        while len(tok.encode(tok.apply_chat_template([{"role": "user", "content": q}]))) < tokens:
            q += " " + words[(i + k) % len(words)]
            k += 1
        out.append(q + " How many cards are left?")
    return out


def part_torchrun(part):
    """4. The same UPFT run (a random ~0.5B Qwen2 shape, 16 questions, 2 optimizer steps) by one process
    (bf16 autocast) and by torchrun with one process (FSDP2: bf16 compute, fp32 master weights and gradient
    reduction; NCCL on CUDA, gloo on CPU); then the memory plan against the tensors and the peak."""
    sys.path.insert(0, str(ROOT))
    from data import Tokenizer
    max_len = part.profile["dist_max_len"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = save_random_hf(part.profile["dist_shape"], tmp / "model", tokenizer=True)
        tok = Tokenizer.from_pretrained(model)
        # room for the prefix instruction (91 toy tokens), 8 prefix tokens and an EOS; a full trace is 32 tokens
        qs = long_questions(tok, 16, max_len - 112)
        (tmp / "q.jsonl").write_text("".join(json.dumps({"question": q}) + "\n" for q in qs))
        common = ["--model", model, "--data", tmp / "q.jsonl", "--no-eval", "--prefix-len", "8",
                  "--structure-ratio", "0.25", "--max-new-tokens", "32", "--temperature", "0.8",
                  "--batch-size", "8", "--micro-batch-size", "2", "--epochs", "1", "--lr", "1e-5",
                  "--max-len", max_len, "--save-every", "0", "--device", part.device]
        # decoding: torchrun decodes from a gathered bf16 copy on CUDA; --decode-bf16 makes the plain run do
        # the same, so both sample the same prefixes (on CPU both decode in fp32)
        common += ["--decode-bf16"] if part.cuda else []
        me = [PY, Path(__file__).resolve(), "--as-train"]
        torchrun = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"]
        commands = {name: [*launch, tmp / f"{name}.peak", *common, "--out", tmp / name]
                    for name, launch in (("plain", me), ("torchrun", torchrun + me[1:]))}
        # on CUDA one after the other, each with the device to itself; on CPU side by side (CI's time)
        done = part.sh_together(commands) if not part.cuda else \
            {name: part.sh(name, cmd) for name, cmd in commands.items()}
        runs = {}
        for name, (rc, out, err, secs) in done.items():
            run = tmp / name
            if not part.check(f"{name} run exits 0", rc == 0, rc, 0, err.strip()[-300:] if rc else ""):
                return
            keep_files(run, part.dir / name)
            runs[name] = {"dir": run, "seconds": secs,
                          "peak": json.loads((tmp / f"{name}.peak.rank0.json").read_text()),
                          "plan": json.loads((run / "memory_plan.json").read_text()),
                          "measured": json.loads((run / "memory_measured.json").read_text())["ranks"][0],
                          "metrics": [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]}
        one, two = runs["plain"], runs["torchrun"]
        part.check("torchrun's process group backend", two["peak"]["backend"] == ("nccl" if part.cuda else "gloo"),
                   two["peak"]["backend"], "nccl" if part.cuda else "gloo", "exact")
        sharded = two["plan"]["settings"]["sharded"]
        part.check("torchrun's plan: sharded (FSDP2)", sharded, sharded, True, "exact")
        same = all((one["dir"] / f).read_bytes() == (two["dir"] / f).read_bytes()
                   for f in ("rollouts.jsonl", "train_examples.jsonl"))
        part.check("the same samples and training examples", same, same, True, "byte for byte")
        compare_losses(part, one["metrics"], two["metrics"])
        part.number(seconds={k: round(r["seconds"], 1) for k, r in runs.items()},
                    derived_sample_batch={k: r["plan"]["settings"]["sample_batch"] for k, r in runs.items()})
        for name, r in runs.items():
            compare_memory(part, name, r)


def compare_losses(part, m1, m2):
    """Loss and gradient norm per optimizer step, torchrun vs one process.
    CUDA: both compute in bf16 but round at other places (autocast keeps the residual stream and RoPE in fp32
    and casts each weight at its product; FSDP2's param_dtype casts the weights, so the residual stream is
    bf16 too). bf16 holds 8 significant bits (a relative step of 2^-8 = 3.9e-3); the loss is an fp32 mean of
    many tokens' cross-entropy, in which these errors partly cancel. Measured on CPU at this shape (random
    Qwen2.5-0.5B, 24 layers, the same weights, autocast vs all-bf16): loss 2.2e-4 relative, gradient norm
    1.3e-4 (4 layers). Allowed: 2e-3 for the loss (half a bf16 step, ~10x the measured gap) and 1e-2 for the
    gradient norm; a real fault (a normaliser of one rank, a dropped micro-batch, an average instead of a
    sum) moves either by a whole factor or a micro-batch's share. CPU: fp32 on both sides, gloo; only the
    order of sums differs: tests/test_dist.py's rtol 1e-6 and 1e-5."""
    rtol_loss, rtol_gnorm = DIST_RTOL[part.device]
    steps = [(a["step"], a["supervised_tokens"]) for a in m1 if "loss" in a]
    part.check("the same steps and supervised tokens per step", steps == [(b["step"], b["supervised_tokens"])
               for b in m2 if "loss" in b], steps, "", "exact")
    pairs = [(a, b) for a, b in zip(m1, m2) if "loss" in a and "loss" in b]
    if not pairs:
        return
    loss = max(abs(b["loss"] - a["loss"]) / abs(a["loss"]) for a, b in pairs)
    gnorm = max(abs(b["grad_norm"] - a["grad_norm"]) / abs(a["grad_norm"]) for a, b in pairs)
    part.number(losses={"plain": [a["loss"] for a, _ in pairs], "torchrun": [b["loss"] for _, b in pairs]})
    part.number(grad_norms={"plain": [a["grad_norm"] for a, _ in pairs],
                            "torchrun": [b["grad_norm"] for _, b in pairs]})
    part.check("loss per step, torchrun vs one process", loss <= rtol_loss, f"max rel diff {loss:.1e}", "",
               f"rtol {rtol_loss:g}")
    part.check("gradient norm per step, torchrun vs one process", gnorm <= rtol_gnorm, f"max rel diff {gnorm:.1e}",
               "", f"rtol {rtol_gnorm:g}")


def compare_memory(part, name, r):
    """The plan's exact figures (weights, gradients, AdamW) against the tensors after the first step; on CUDA
    its largest phase (training, sampling) against torch.cuda.max_memory_allocated over the whole run. The plan
    is built to be an upper bound that fills at most 90% of the device, so the peak may exceed it by 1/0.9."""
    plan = r["plan"]["ranks"][0]
    static = {k: plan[k] for k in ("weights", "grads", "optimizer")}
    shown = lambda d: ", ".join(f"{k} {v:,}" for k, v in d.items())  # noqa: E731
    part.check(f"{name}: plan's weights/grads/AdamW = the tensors (bytes)", static == r["measured"],
               shown(r["measured"]), shown(static), "exact")
    phases = {"training": plan["train_total"], "sampling": plan["sample_total"]}
    top = max(phases, key=phases.get)
    peak = r["peak"]
    if "max_allocated_bytes" not in peak:
        part.note(f"{name}: peak resident set {peak['max_rss_bytes'] / GiB:.2f} GiB (CPU: the Python process and "
                  f"its libraries, not comparable with the plan, which is checked on CUDA); the plan's largest "
                  f"phase: {top}, {phases[top] / GiB:.2f} GiB")
        return
    ratio = peak["max_allocated_bytes"] / phases[top]
    part.number(**{f"{name}_peak": {"max_allocated_gib": peak["max_allocated_bytes"] / GiB,
                                    "max_reserved_gib": peak["max_reserved_bytes"] / GiB,
                                    "plan_training_gib": phases["training"] / GiB,
                                    "plan_sampling_gib": phases["sampling"] / GiB, "measured_over_plan": ratio}})
    part.check(f"{name}: peak allocated within the plan's {top} estimate", ratio <= PEAK_MARGIN,
               f"{peak['max_allocated_bytes'] / GiB:.2f} GiB ({ratio:.2f}x the plan)", f"{phases[top] / GiB:.2f} GiB",
               f"<= {PEAK_MARGIN:.2f}x (the plan's 10% margin)")


# ----------------------------------------------------------------------------- 5. refusal

def part_refusal(part):
    """5. A micro-batch of 512 x 1,024 tokens on a 0.5B shape: on CUDA the plan reads the device's memory
    (on CPU --gpu-mem 24 stands in for it). The checkpoint folder has a config.json and a tokenizer and NO
    weights, so a run that got as far as loading would fail with another error."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = tmp / "model"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({**QWEN_05B, "architectures": ["Qwen2ForCausalLM"]}))
        for f in TOY_TOKENIZER:
            shutil.copyfile(ROOT / "assets" / "toy" / "model" / f, folder / f)
        (tmp / "q.jsonl").write_text("".join(json.dumps({"question": f"What is {i} plus {i}?"}) + "\n"
                                             for i in range(4)))
        flags = ["--model", folder, "--data", tmp / "q.jsonl", "--device", "cuda", "--max-len", "1024"]
        flags += [] if part.cuda else ["--gpu-mem", "24"]
        run = tmp / "run"
        rc, out, err, secs = part.sh("refused", [PY, ROOT / "train.py", *flags, "--micro-batch-size", "512",
                                                 "--out", run])
        lines = err.strip().splitlines()
        part.number(error_line=lines[0] if lines else "", seconds=secs)
        part.check("exit code 2", rc == 2, rc, 2, "exact")
        part.check("one line on stderr: error: memory plan: training needs ...",
                   len(lines) == 1 and lines[0].startswith("error: memory plan: training needs"),
                   lines[-1][:200] if lines else "", "error: memory plan: training needs ...", "")
        part.check("nothing created", not run.exists() and not Path(f"{run}.partial").exists(), "", "", "")
        usable = re.search(r"usable per GPU: ([\d.]+) GiB", out)
        device_gib = json.loads((part.dir.parent / "env" / "part.json").read_text())["numbers"].get("device_gib") \
            if part.cuda else 24.0
        part.check("planned against the device's memory (90% of it)",
                   usable and abs(float(usable.group(1)) - 0.9 * device_gib) < 0.11,
                   f"{usable.group(1) if usable else '?'} GiB usable", f"0.9 x {device_gib:.1f} GiB", "0.1 GiB")
        # the change it names: a smaller micro-batch, whose planned GiB (in the same line) fit the usable GiB
        fix = re.search(r"training needs ([\d.]+) GiB per GPU, ([\d.]+) GiB usable; smallest change that fits: "
                        r"--micro-batch-size (\d+) \(([\d.]+) GiB\)", err)
        part.check("it names a smaller micro-batch, planned within the usable memory",
                   fix and int(fix.group(3)) < 512 and float(fix.group(4)) <= float(fix.group(2)) < float(fix.group(1)),
                   f"--micro-batch-size {fix.group(3)} ({fix.group(4)} GiB)" if fix else err.strip()[-120:],
                   f"< 512, <= {fix.group(2) if fix else '?'} GiB", "")
        if fix:
            part.number(suggested_micro_batch=int(fix.group(3)))


FUNCTIONS = {"env": part_env, "toy": part_toy, "parity": part_parity, "bench": part_bench,
             "torchrun": part_torchrun, "refusal": part_refusal}


# ----------------------------------------------------------------------------- the summary

def summary(report):
    parts = report["parts"]
    env = parts.get("env", {}).get("numbers", {})
    ok = sum(p["status"] == "passed" for p in parts.values())
    dev = (f"{env.get('device_name')} ({env.get('device_gib', 0):.1f} GiB), CUDA {env.get('torch_cuda')}, NCCL "
           f"{env.get('nccl')}" if report["device"] == "cuda" else "CPU (the tiny sizes of the CPU mode)")
    lines = [f"# GPU check: {'PASSED' if report['passed'] else 'FAILED'} ({ok} of {len(parts)} parts passed)", "",
             f"`{report['command']}`, {report['started']}; {report['seconds']:.0f} s of a {report['deadline_s']:.0f} s "
             f"deadline.", f"Device: {dev}; torch {env.get('torch')}, transformers {env.get('transformers')}, "
             f"python {env.get('python')}, commit {env.get('commit')}.", "",
             "| part | result | seconds (budget) | what it checks |", "|---|---|---|---|"]
    for name, p in parts.items():
        lines.append(f"| {name} | {p['status']} | {p.get('seconds', 0):.0f} ({p.get('budget_s', '-')}) | "
                     f"{p['title']} |")
    for name, p in parts.items():
        lines += ["", f"## {name}: {p['status']}", "", p["title"] + "."]
        if p.get("why") or p.get("error"):
            lines += ["", f"**{p.get('error') or p.get('why')}**"]
        if p.get("checks"):
            lines += ["", "| check | ok | measured | expected | tolerance |", "|---|---|---|---|---|"]
            for c in p["checks"]:
                cell = lambda v: str(v).replace("|", "/").replace("\n", " ")[:160]  # noqa: E731
                lines.append(f"| {cell(c['what'])} | {'yes' if c['ok'] else '**NO**'} | {cell(c['got'])} | "
                             f"{cell(c['want'])} | {cell(c['tolerance'])} |")
        lines += [f"- {n}" for n in p.get("notes", [])]
        if name == "toy" and "device_run" in p.get("numbers", {}):
            lines += ["", toy_table(p["numbers"]["device_run"], p["numbers"]["cpu_reference"], report["device"]),
                      "", f"CPU numbers: {p['numbers']['reference']}."]
        if name == "bench" and p.get("numbers", {}).get("header"):
            lines += ["", f"`{p['numbers']['command']}`: {p['numbers']['header']}"]
    return "\n".join(lines) + "\n"


def toy_table(got, want, device):
    rows = [("base greedy accuracy", pct(got["base_accuracy"]), pct(want["base_accuracy"])),
            ("tuned greedy accuracy", pct(got["tuned_accuracy"]), pct(want["tuned_accuracy"]))]
    rows += [(f"{k} sampled accuracy", pct(got[f"{k}_sampled_accuracy"]), pct(want[f"{k}_sampled_accuracy"]))
             for k in ("base", "tuned") if f"{k}_sampled_accuracy" in got and f"{k}_sampled_accuracy" in want]
    rows += [(k.replace("_", " "), f"{got[k]:,}", f"{want[k]:,}")
             for k in ("tokens_sampled", "tokens_supervised", "prefix_examples", "full_examples")]
    rows += [(k.replace("_", " "), f"{got[k]:.1f}", f"{want[k]:.1f}")
             for k in ("sampling_seconds", "training_seconds", "wall_seconds")]
    return "\n".join([f"| toy run | {device} | cpu (reference) |", "|---|---|---|"] +
                     [f"| {a} | {b} | {c} |" for a, b, c in rows])


if __name__ == "__main__":
    sys.exit(main())
