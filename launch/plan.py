"""The memory plan: the bytes one process (one rank under torchrun) needs, printed at the start of every run
and by `python train.py --plan`, and the refusal of a run that cannot fit, before anything is loaded.

    memory_plan(cfg, **settings)    bytes by kind (weights, grads, AdamW, activations, logits, decoding)
    plan_run(cfg, capacity, ...)    a run's plan: the decoding batches not given are the largest that fit,
                                    and the smallest change that fits when the plan does not (a Plan)
    decoding_fix(cfg, capacity, ...)  eval.py's: decoding only, refused in one line when it cannot fit
    usable_bytes(...)               what a process may fill: 90% of its GPU, or of this machine's free memory
    format_plan(plan)               the lines a run prints
    parameter_count(cfg)            the model's parameters (a tied head once), from config.json alone

`settings` are memory_plan's keyword arguments (world, rank, sharded, cuda, master_bytes, micro_batch,
max_len, grad_ckpt, loss_chunk, sample_batch, sample_tokens, eval_batch, eval_tokens): what a run writes to
memory_plan.json as "settings". The static figures are exact (the tensors fit() holds after an optimizer
step; `state_bytes` measures them, tests/test_dist.py compares); activations, FSDP's transient buffers and
decoding are estimates from the formulas in memory_plan's docstring. Nothing here reads a weight.
"""
from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass

import torch

from model import Config, Transformer
from train import LOSS_CHUNK  # the loss's rows of logits at a time for long sequences (the core's rule)

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


def param_shapes(cfg):
    """(shapes of the unique parameters, parameters of one decoder layer, of the root), from the config
    alone (the model is built on the meta device: no memory)."""
    return _param_shapes(json.dumps(cfg.to_dict(), sort_keys=True))


def parameter_count(cfg):
    """The model's parameters, a tied head counted once."""
    return sum(math.prod(s) for s in param_shapes(cfg)[0])


def memory_plan(cfg, world=1, rank=0, sharded=False, cuda=False, master_bytes=4, micro_batch=1, max_len=4096,
                grad_ckpt=False, loss_chunk=0, sample_batch=64, sample_tokens=4096, eval_batch=64, eval_tokens=4096,
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
      logits       the loss on supervised rows (train.micro_batch_loss), every position supervised at
                   worst: all rows at once, or with loss_chunk = K a window of at most K rows;
                   V*(a + 12) + C*(a + 4) bytes per row (the head's output, its fp32 copy, log-softmax
                   and its gradient, the normed rows), + the rows' hidden states and their gradient
                   (2*C*a per token) + the head's gradient and one window's (2*V*C*a).
      decoding     the weights decoded with (sharded: a full copy, bf16 on CUDA) + the KV cache
                   2 * layers * batch * K * (prompt + budget) * D * bytes + the prefill's working set
                   (one layer's activations and attention scores for batch * prompt tokens).
    """
    shapes, layer_n, root_n = param_shapes(cfg)
    n_all = sum(math.prod(s) for s in shapes)
    local = sum(shard_rows_of(s, world, rank) for s in shapes) if sharded else n_all
    a = 2 if cuda else master_bytes  # the docstring's a: bytes of an activation
    C, I, V, L = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_hidden_layers
    H, K, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    plan = {"weights": local * master_bytes, "grads": local * master_bytes,
            "optimizer": 2 * local * master_bytes + 4 * len(shapes)}
    plan["gathered"] = ((root_n + 3 * layer_n) * a + 4 * layer_n if sharded else 2 * n_all if cuda else 0)
    per_layer = a * (2 * C + (5 * H + 4 * K) * D + 4 * I) + 8 * C
    tokens = micro_batch * max_len
    plan["activations_full"] = tokens * L * per_layer
    plan["activations_ckpt"] = tokens * (L * C * a + per_layer)
    plan["activations"] = plan["activations_ckpt"] if grad_ckpt else plan["activations_full"]
    rows = min(tokens, loss_chunk) if loss_chunk else tokens
    plan["logits"] = rows * (V * (a + 12) + C * (a + 4)) + 2 * tokens * C * a + 2 * V * C * a
    plan["train_total"] = sum(plan[k] for k in ("weights", "grads", "optimizer", "gathered", "activations", "logits"))
    decoded = decoded_bytes(sharded, cuda, master_bytes)
    plan["decode_weights"] = n_all * decoded if sharded else 0
    for phase, batch, budget in (("sample", sample_batch, sample_tokens), ("eval", eval_batch, eval_tokens)):
        kv, prefill = decode_row_bytes(cfg, prompt_tokens, budget, decoded)
        plan[f"{phase}_batch"], plan[f"{phase}_tokens"] = batch, budget
        plan[f"{phase}_kv"], plan[f"{phase}_prefill"] = batch * kv, batch * prefill
        plan[f"{phase}_total"] = plan["weights"] + plan["decode_weights"] + batch * (kv + prefill)
    return plan


def shard_rows(d0: int, world: int, rank: int) -> tuple:
    """(first row, number of rows) of rank's dim-0 shard of a d0-row tensor (FSDP2's Shard(0))."""
    chunk = -(-d0 // world)
    start = min(rank * chunk, d0)
    return start, max(0, min(chunk, d0 - start))


def shard_rows_of(shape, world, rank):
    return shard_rows(shape[0], world, rank)[1] * math.prod(shape[1:])


def decoded_bytes(sharded, cuda, master_bytes):
    """Bytes of a decoded weight and of a KV-cache entry: bf16 for torchrun's decoding copy on CUDA, else
    the master dtype."""
    return 2 if (sharded and cuda) else master_bytes


def decode_row_bytes(cfg, prompt, budget, entry_bytes):
    """(KV cache, prefill working set) of one decoded sequence, in bytes; entry_bytes = decoded_bytes."""
    C, I, V, L = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_hidden_layers
    H, K, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    kv = 2 * L * K * (prompt + budget) * D * entry_bytes
    prefill = prompt * entry_bytes * (2 * C + 3 * I + (H + 2 * K) * D + H * prompt) + V * 4
    return kv, prefill


def decode_batch(cfg, plan, capacity, budget, entry_bytes):
    """The largest decoding batch whose KV cache and prefill fit next to the weights (capped)."""
    kv, prefill = decode_row_bytes(cfg, PROMPT_TOKENS, budget, entry_bytes)
    free = capacity - plan["weights"] - plan["decode_weights"]
    return max(0, min(MAX_DECODE_BATCH, int(free // (kv + prefill))))


def smallest_fix(cfg, settings, capacity):
    """None if the plan fits `capacity` bytes per rank, else one line naming the smallest change that
    fits. Tried in this order, the first that fits wins: a smaller micro-batch (same results), gradient
    checkpointing (same results, ~1/3 more compute), both, more processes (more GPUs), more processes
    with both; for decoding, the largest sampling or evaluation batch that fits."""
    plan = memory_plan(cfg, **settings)
    where = "per GPU" if settings["cuda"] else "of memory"
    if plan["train_total"] > capacity:
        problem = (f"memory plan: training needs {plan['train_total'] / GiB:.1f} GiB {where}, "
                   f"{capacity / GiB:.1f} GiB usable")
        for flag, change in training_changes(settings):
            total = memory_plan(cfg, **{**settings, **change})["train_total"]
            if total <= capacity:
                return f"{problem}; smallest change that fits: {flag} ({total / GiB:.1f} GiB)"
        return f"{problem}; nothing fits" + (", up to 64 processes with --grad-ckpt --micro-batch-size 1"
                                             if settings["cuda"] else ", even with --grad-ckpt --micro-batch-size 1")
    entry_bytes = decoded_bytes(settings["sharded"], settings["cuda"], settings["master_bytes"])
    for phase, flag in (("sample", "--sample-batch-size"), ("eval", "--eval-batch-size")):
        if plan[f"{phase}_total"] > capacity:
            batch = decode_batch(cfg, plan, capacity, plan[f"{phase}_tokens"], entry_bytes)
            problem = (f"memory plan: {phase} decoding needs {plan[f'{phase}_total'] / GiB:.1f} GiB {where}, "
                       f"{capacity / GiB:.1f} GiB usable")
            if batch < 1:
                return f"{problem}; not even one sequence fits next to the weights"
            return f"{problem}; smallest change that fits: {flag} {batch}"
    return None


def decoding_fix(cfg, capacity, batch, budget, cuda=False, master_bytes=4, least=1):
    """eval.py's plan (one process, no training): None if the weights and `batch` decoded sequences of
    `budget` new tokens fit `capacity` bytes, else one line naming the smallest change that fits: the
    largest --batch-size, or, when not even `least` sequences fit (one question's samples: a smaller
    batch decodes no fewer), that many sequences and the largest --max-new-tokens."""
    plan = memory_plan(cfg, cuda=cuda, master_bytes=master_bytes, sample_batch=batch, sample_tokens=budget,
                       eval_batch=0)
    if plan["sample_total"] <= capacity:
        return None
    problem = (f"memory plan: decoding {batch} sequence(s) of {PROMPT_TOKENS} + {budget:,} tokens needs "
               f"{plan['sample_total'] / GiB:.1f} GiB {'per GPU' if cuda else 'of memory'}, "
               f"{capacity / GiB:.1f} GiB usable")
    fits = decode_batch(cfg, plan, capacity, budget, master_bytes)
    if fits >= least:
        return f"{problem}; smallest change that fits: --batch-size {fits}"
    kv0, prefill = decode_row_bytes(cfg, PROMPT_TOKENS, 0, master_bytes)
    per_token = decode_row_bytes(cfg, PROMPT_TOKENS, 1, master_bytes)[0] - kv0
    tokens = int(((capacity - plan["weights"]) / least - kv0 - prefill) // per_token)
    if plan["weights"] > capacity:
        return f"{problem}; the weights alone need {plan['weights'] / GiB:.1f} GiB"
    if tokens < 1:
        return f"{problem}; not even {least} sequence(s) of one new token fit next to the weights"
    smaller = f"--batch-size {least} " if batch > least else ""
    return f"{problem}; smallest change that fits: {smaller}--max-new-tokens {tokens}"


def training_changes(settings):
    """(flags, the settings they change) that make training smaller, in the order smallest_fix tries them."""
    micro, world = settings["micro_batch"], settings["world"]
    changes = [(f"--micro-batch-size {m}", dict(micro_batch=m)) for m in range(micro - 1, 0, -1)]
    if not settings["grad_ckpt"]:
        changes += [("--grad-ckpt" + (f" --micro-batch-size {m}" if m < micro else ""),
                     dict(grad_ckpt=True, micro_batch=m)) for m in range(micro, 0, -1)]
    if settings["cuda"]:  # more GPUs; on a CPU the processes would share the same memory
        changes += [(f"torchrun --nproc-per-node {w}", dict(world=w, rank=0, sharded=True))
                    for w in range(world + 1, 65)]
        changes += [(f"torchrun --nproc-per-node {w} --grad-ckpt --micro-batch-size 1",
                     dict(world=w, rank=0, sharded=True, grad_ckpt=True, micro_batch=1)) for w in range(world + 1, 65)]
    return changes


# ----------------------------------------------------------------------------- a run's plan

@dataclass
class Plan:
    """One run's memory plan (plan_run), what memory_plan.json records and format_plan prints."""
    settings: dict             # memory_plan's keyword arguments (memory_plan.json's "settings")
    bytes: dict                # memory_plan(cfg, **settings)
    capacity: int | None       # usable bytes per process (None: unknown)
    fix: str | None            # smallest_fix's line when the plan does not fit, else None
    sample_batch_size: int     # the decoding batches the run uses: as given, else the largest that fits
    eval_batch_size: int
    loss_chunk: int            # rows of logits at a time in the loss (0: all): as given, else plan_run's choice


def plan_run(cfg, capacity, *, world=1, rank=0, sharded=False, cuda=False, master_bytes=4, micro_batch=1,
             max_len=4096, grad_ckpt=False, loss_chunk=None, sample_batch=None, sample_tokens=4096, eval_batch=None,
             eval_tokens=4096, has_eval=True) -> Plan:
    """A run's plan. A decoding batch given as None is the largest that fits `capacity` (at least 1);
    loss_chunk None: the loss at most LOSS_CHUNK rows at a time when a sequence may be longer (max_len),
    else all at once;
    has_eval=False leaves the evaluation out of the plan (its batch size is still chosen)."""
    settings = dict(world=world, rank=rank, sharded=sharded, cuda=cuda, master_bytes=master_bytes,
                    micro_batch=micro_batch, max_len=max_len, grad_ckpt=grad_ckpt, loss_chunk=loss_chunk or 0,
                    sample_batch=sample_batch or 0, sample_tokens=sample_tokens,
                    eval_batch=(eval_batch or 0) if has_eval else 0, eval_tokens=eval_tokens)
    if loss_chunk is None and max_len > LOSS_CHUNK:  # the logits of one window at a time (R1: 16k positions)
        settings["loss_chunk"] = LOSS_CHUNK
    unbatched = memory_plan(cfg, **settings)  # decode_batch reads its weights only, which no batch changes
    entry_bytes = decoded_bytes(sharded, cuda, master_bytes)
    if sample_batch is None:
        sample_batch = settings["sample_batch"] = max(1, decode_batch(cfg, unbatched, capacity, sample_tokens,
                                                                      entry_bytes))
    if eval_batch is None:
        eval_batch = max(1, decode_batch(cfg, unbatched, capacity, eval_tokens, entry_bytes))
        settings["eval_batch"] = eval_batch if has_eval else 0
    return Plan(settings, memory_plan(cfg, **settings), capacity,
                smallest_fix(cfg, settings, capacity) if capacity else None, sample_batch, eval_batch,
                settings["loss_chunk"])


def usable_bytes(cuda, device="cuda", gpu_mem=None, local_world=1):
    """Bytes one process may plan to fill: USABLE of the GPU's memory (gpu_mem GiB if given, else the
    device's, else PLAN_GPU_GIB on a machine without one); on CPU, USABLE of this machine's available
    memory shared by this machine's own `local_world` processes (torchrun's LOCAL_WORLD_SIZE: with
    --nnodes 2 the other machine's processes use the other machine's memory); None if unknown."""
    if cuda:
        gib = gpu_mem or (torch.cuda.get_device_properties(torch.device(device)).total_memory / GiB
                          if torch.cuda.is_available() else PLAN_GPU_GIB)
        return int(USABLE * gib * GiB)
    free = available_memory()
    return int(USABLE * free / local_world) if free else None


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


def state_bytes(model, opt):
    """The static figures, measured: bytes this rank holds in parameters, gradients and optimizer state
    (local shards when sharded; a tied head counted once; AdamW's `step` scalars included, 4 bytes each)."""
    def nbytes(t):
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()
    params = list(model.parameters())
    return {"weights": sum(nbytes(p) for p in params),
            "grads": sum(nbytes(p.grad) for p in params if p.grad is not None),
            "optimizer": sum(nbytes(v) for st in opt.state.values() for v in st.values() if torch.is_tensor(v))}


def plan_record(cfg, plan: Plan):
    """memory_plan.json: the settings, the usable bytes and every rank's plan (their shards differ)."""
    return {"settings": plan.settings, "usable_bytes": plan.capacity,
            "ranks": [memory_plan(cfg, **{**plan.settings, "rank": r}) for r in range(plan.settings["world"])]}


def plan_line(plan: Plan):
    """The plan in one line: what a plain run prints when the plan does not matter (--plan prints it all)."""
    f, usable = plan.bytes, f" of {plan.capacity / GiB:.1f} GiB usable" if plan.capacity else ""
    decode = max(f["sample_total"], f["eval_total"] if f["eval_batch"] else 0)
    return (f"memory plan: training {f['train_total'] / GiB:.2f} GiB, decoding {decode / GiB:.2f} GiB{usable} "
            f"(--plan for the details)")


def format_plan(plan: Plan):
    """The lines a run prints first (and --plan prints): bytes per rank in GiB, exact and estimated."""
    gib = lambda b: f"{b / GiB:7.2f}"  # noqa: E731
    settings, figures, capacity = plan.settings, plan.bytes, plan.capacity
    mode = (f"torchrun, {settings['world']} process(es), FSDP2" if settings["sharded"] else "one process") + \
        (", bf16 compute" if settings["cuda"] else "") + f", {settings['master_bytes'] * 8}-bit master weights"
    ckpt = "with" if settings["grad_ckpt"] else "without"
    window = f", loss {settings['loss_chunk']} rows at a time" if settings["loss_chunk"] else ""
    lines = [f"memory plan per rank, GiB ({mode}; rank {settings['rank']}):",
             f"  weights {gib(figures['weights'])}   grads {gib(figures['grads'])}   AdamW "
             f"{gib(figures['optimizer'])}   (exact)",
             f"  gathered/cast weights {gib(figures['gathered'])}   logits {gib(figures['logits'])}   activations, "
             f"{settings['micro_batch']} x {settings['max_len']} tokens: {gib(figures['activations_full'])} without, "
             f"{gib(figures['activations_ckpt'])} with gradient checkpointing   (estimates)",
             f"  training total {gib(figures['train_total'])} ({ckpt} gradient checkpointing{window})"]
    for phase in ("sample", "eval") if figures["eval_batch"] else ("sample",):
        lines.append(f"  {phase:6s} decoding: weights {gib(figures['weights'] + figures['decode_weights'])} + "
                     f"KV cache {gib(figures[f'{phase}_kv'])} + prefill {gib(figures[f'{phase}_prefill'])} = "
                     f"{gib(figures[f'{phase}_total'])}   (batch {figures[f'{phase}_batch']}, {PROMPT_TOKENS} + "
                     f"{figures[f'{phase}_tokens']} tokens)")
    if capacity and settings["cuda"]:
        lines.append(f"  usable per GPU: {capacity / GiB:.1f} GiB ({USABLE:.0%} of the device)")
    elif capacity:
        shared = "" if settings["world"] == 1 else f", shared by {settings['world']} processes"
        lines.append(f"  usable per process: {capacity / GiB:.1f} GiB ({USABLE:.0%} of this machine's available "
                     f"memory{shared})")
    return "\n".join(lines)
