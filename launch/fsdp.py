"""torchrun: FSDP2 sharding, the collectives train.py needs, and sharded checkpoints.

The paper fine-tunes 7-8B models in full on 8 GPUs (its hyperparameters: App. B, Table 3); its released
code runs bf16 DeepSpeed ZeRO-3. Here the same sharding is PyTorch's own FSDP2 (`fully_shard`):
`torchrun --nproc-per-node N train.py ...`. Each rank holds 1/N of the fp32 master weights, gradients
and AdamW moments; a layer's full weights exist only while it runs. Without torchrun nothing here is
used and `python train.py` is unchanged.

  Launch, init_distributed             this process's place (rank of world); join the process group (NCCL on
                                       CUDA, gloo on CPU); Launch() alone is plain python's one process
  is_sharded                           is a model sharded
  load_sharded_model, save_gathered    the model on the meta device, sharded, then only this rank's rows read
                                       (load_shards); and back: the full weights gathered (gather_full),
                                       written by rank 0
  part_of_step                         a rank's part of a step, in micro-batches that pair up across ranks
  all_reduce, all_gather_json          numbers summed or maxed over ranks; JSON gathered (no pickle)
  gather_rollouts                      every rank's rollouts on every rank
  record_state_bytes                   every rank's measured state bytes (memory_measured.json)
  check_shared_folder                  several machines: every rank sees the run folder (one filesystem)
  save_sharded_checkpoint / load_...   each rank its own shards, as safetensors; meta.json names the launch
"""
from __future__ import annotations

import contextlib
import json
import os
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import load_file

from data import IGNORE, UpftError, atomic_dir, resolve, write_json
from launch.plan import shard_rows, state_bytes
from model import Config, Transformer, check_tensors, rope_inv_freq, safetensors_files, save_safetensors


@dataclass
class Launch:
    """This process's place in the launch: plain python is rank 0 of 1, nothing sharded; under torchrun
    (even with one process) rank `rank` of `world`, the model sharded with FSDP2."""
    rank: int = 0
    world: int = 1
    device: str = "cpu"
    sharded: bool = False

    @classmethod
    def start(cls, device):
        """Join the process group when under torchrun; this process's Launch."""
        rank, world, device = init_distributed(device)
        return cls(rank, world, device, dist.is_initialized())

    @property
    def writes(self):
        """Only rank 0 writes files and logs."""
        return self.rank == 0

    def barrier(self):
        if self.sharded:
            dist.barrier()

    @staticmethod
    def finish():
        if dist.is_initialized():
            dist.destroy_process_group()

    @staticmethod
    def first_process():
        """Whether this is rank 0 (or plain python), from torchrun's environment alone."""
        return int(os.environ.get("RANK", 0)) == 0


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
    from torch.distributed.fsdp import FSDPModule  # torch's own module, loaded only when asked
    return isinstance(model, FSDPModule)


def rank_and_world(model):
    """(this rank, the number of ranks) of a sharded model; (0, 1) for a plain one."""
    return (dist.get_rank(), dist.get_world_size()) if is_sharded(model) else (0, 1)


def part_of_step(examples, rank, world, micro_batch_size, pad_id):
    """This rank's part of a step's examples (every world-th, from `rank`), padded with fully masked ones so
    that every rank runs as many micro-batches as the busiest (rank 0): FSDP's all-gathers and
    reduce-scatters must pair up across ranks. A masked row's loss and gradient are exactly 0 (no NaN),
    and FSDP sums the ranks' gradients, so any split over ranks equals one big batch."""
    own = examples[rank::world]
    n_micro = -(-len(examples[0::world]) // micro_batch_size)
    short = max(0, (n_micro - 1) * micro_batch_size + 1 - len(own))
    return own + [{"input_ids": [pad_id, pad_id], "labels": [IGNORE, IGNORE]}] * short


def load_sharded_model(model_dir, device, dtype):
    """Build the model on the meta device (no memory), shard every decoder layer and then the root with
    fully_shard, allocate only this rank's shards and read them from the checkpoint (load_shards).

    On CUDA the policy is bf16 compute with fp32 master weights and an fp32 gradient reduce-scatter
    (what ZeRO-3 with bf16 does); on CPU everything stays in `dtype` (fp32) and gloo carries it."""
    from torch.distributed.device_mesh import init_device_mesh  # torch's own modules, loaded only under torchrun
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


@torch.no_grad()
def load_shards(model, path: Path, dtype=torch.float32) -> None:
    """Fill a sharded model (built on the meta device, fully_shard-ed, then `to_empty`) from a checkpoint:
    each rank reads only its own rows of each tensor (safetensors slices of the mmap'd files), so no rank
    ever holds the full weights. The RoPE buffer is recomputed."""
    with ExitStack() as stack:
        where = {}
        for f in safetensors_files(path):
            try:
                sf = stack.enter_context(safe_open(f, framework="pt", device="cpu"))
                where.update({k: (f, sf) for k in sf.keys()})
            except Exception as e:
                raise UpftError(f"{f}: cannot read safetensors file ({type(e).__name__}: {e})") from None
        check_tensors(path, model.config, {k: sf.get_slice(k).get_shape() for k, (_, sf) in where.items()})
        for name, p in model.named_parameters():  # a tied head appears once, as the embedding
            local = p.to_local()
            start, rows = shard_rows(p.shape[0], p.device_mesh.size(), p.device_mesh.get_local_rank())
            assert local.shape[0] == rows, (name, local.shape, rows)  # FSDP2 cuts as torch.chunk does
            f, sf = where[name]
            try:
                local.copy_(sf.get_slice(name)[start:start + rows].to(dtype))
            except Exception as e:
                raise UpftError(f"{f}: cannot read tensor {name} ({type(e).__name__}: {e})") from None
    model.inv_freq = rope_inv_freq(model.config).to(model.inv_freq.device)


@torch.no_grad()
def gather_full(model, dtype, device, keep=True):
    """The full weights of a sharded model as a plain Transformer of `dtype` on `device`. Every rank must
    call it (each tensor is all-gathered in turn, so the transient peak is one full fp32 tensor);
    a rank with keep=False takes part in the gathers and returns None."""
    state = {}
    for name, p in model.named_parameters():
        t = p.full_tensor()
        if keep:
            state[name] = t.to(device=device, dtype=dtype)
        del t
    if not keep:
        return None
    full = Transformer.from_state_dict(model.config, state, device)
    full.source_dir = model.source_dir
    return full


def save_gathered(model, dtype, path, rank):
    """The sharded model's full weights in HF layout at `path`: gathered tensor by tensor (gather_full;
    every rank calls), rank 0 keeps them on the CPU and writes."""
    full = gather_full(model, dtype, "cpu", keep=rank == 0)
    if rank == 0:
        full.save_pretrained(path)
    del full
    dist.barrier()


# ----------------------------------------------------------------------------- collectives

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


def gather_rollouts(rollouts, sampled, dropped):
    """Every rank's rollouts, in question order, and the sums of their sampled tokens and dropped questions."""
    parts = all_gather_json([rollouts, sampled, dropped])
    rollouts = sorted((r for part in parts for r in part[0]), key=lambda r: r["index"])
    return rollouts, sum(part[1] for part in parts), sum(part[2] for part in parts)


def record_state_bytes(path, model, opt, rank):
    """Write every rank's plan.state_bytes to `path` (rank 0 writes; all ranks must call when sharded)."""
    own = state_bytes(model, opt)
    ranks = all_gather_json(own) if is_sharded(model) else [own]
    if rank == 0:
        write_json(path, {"ranks": ranks})


def check_shared_folder(path, what=None, required=True):
    """torchrun, after rank 0 made the run folder `path` (every rank calls; a barrier in any case). Every
    rank must see it when it writes its checkpoint shards there (required: --save-every > 0) or reads what
    rank 0 put there (--resume, --base-from): on several machines, a filesystem they share. Rank 0 puts a
    file of a random name in it, every rank looks for that name in its own `path`, the file is removed. A
    rank that does not see it: every rank raises the same UpftError, naming those ranks and their hosts (so
    no rank is left waiting in a collective); `what` names the folder in it (default: the path)."""
    import socket
    import tempfile
    if not required:
        return dist.barrier()  # the folder exists; only rank 0 uses it
    rank = dist.get_rank()
    mark = None
    if rank == 0:
        fd, mark = tempfile.mkstemp(dir=path, prefix=".shared-check-")
        os.close(fd)
    name = os.path.basename(all_gather_json(mark)[0])
    seen = all_gather_json([os.path.exists(os.path.join(path, name)), socket.gethostname()])
    if rank == 0:
        os.unlink(mark)
    missing = [f"{r} ({host})" for r, (ok, host) in enumerate(seen) if not ok]
    if missing:
        raise UpftError(f"{what or path}: rank(s) {', '.join(missing)} do not see the run folder rank 0 "
                        f"({seen[0][1]}) made in {path}: on several machines it must be on a filesystem all of "
                        "them share, since every rank writes its checkpoint shards there and --resume and "
                        "--base-from read there (without those, --save-every 0 writes no checkpoint)")


# ----------------------------------------------------------------------------- sharded checkpoints

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
