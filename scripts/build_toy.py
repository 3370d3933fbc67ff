"""Rebuild a toy world from scratch and compare it with the one shipped in assets/toy.

    python scripts/build_toy.py                        # the default world into runs/toy-rebuild, compare
    python scripts/build_toy.py --world plain          # the toy-v4 world (plain pairs only)
    python scripts/build_toy.py --max-steps 40         # a partial rebuild: compare the first 40 losses
    python scripts/build_toy.py --out assets/toy       # replace the shipped world (after changing toy.py)
    python scripts/build_toy.py --eval-every 200       # also greedy accuracy on 100 test questions during it
    python scripts/gates.py --world runs/toy-rebuild   # then: does its model read UPFT's instruction?

Measured here (2 CPU threads, torch 2.13, cores shared with other work): the plain world (toy-v4, 2,000
steps) took 1,173 s; the instruct world (toy-v5, 3,600 steps) 3,385 s for the shipped build (pilot 3,
the same recipe with `--eval-every 200`, 2,471 s on a quieter machine). The build is deterministic for
a given machine and torch build (same problems, corpus and tokenizer, same seeded initialisation and
data order). When
the shipped world is the same world and version, the comparison prints which parts are byte-identical
and, for the weights, the largest difference; exit 0 when everything that was rebuilt matches, 1
otherwise. A build of another world than the shipped one is not compared (exit 0).

--out is checked before the build (as train.py's: a folder can be made there; an existing one is replaced
only if it is empty or a toy world); the world is built aside and moved into place only when complete, so
a failed build (a bad --out: one line, exit 2; a full disk: one line, exit 1) leaves nothing behind.
"""
import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts OpenMP: docs/performance.md, "A busy machine"

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import toy  # noqa: E402
from train import check_writable, require  # noqa: E402
from data import UpftError  # noqa: E402
from train import TrainConfig, fit  # noqa: E402


def compare(new: Path, ref: Path, record: dict) -> bool:
    shipped = toy.load_world(ref)["build"]
    ok = True
    for name in ("model/tokenizer.json", "model/tokenizer_config.json", "model/generation_config.json",
                 "model/config.json", "train.jsonl", "test.jsonl"):
        same = (new / name).read_bytes() == (ref / name).read_bytes()
        ok &= same
        print(f"{name:32s} {'identical' if same else 'DIFFERS'}")
    losses, ref_losses = record["losses"], shipped["losses"][:len(record["losses"])]
    worst = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(losses, ref_losses))
    ok &= worst <= 1e-5
    print(f"{'losses of ' + str(len(losses)) + ' steps':32s} largest relative difference {worst:.2e}")
    if record["steps"] == shipped["steps"]:
        a, b = load_file(new / "model" / "model.safetensors"), load_file(ref / "model" / "model.safetensors")
        diff = max(float((a[k] - b[k]).abs().max()) for k in b)
        same = record["model_sha256"] == shipped["model_sha256"]
        ok &= same
        print(f"{'model/model.safetensors':32s} {'identical' if same else 'DIFFERS'} (max |diff| {diff:.2e})")
    return ok


def check_args(args):
    """The flags, and a place to build in: refused in one line (UpftError) before any work."""
    require(args.max_steps is None or args.max_steps >= 1, f"--max-steps must be >= 1, got {args.max_steps}")
    require(args.eval_every >= 0, f"--eval-every must be >= 0 (0 = never), got {args.eval_every}")
    out = Path(args.out)
    if out.exists():  # replaced by the new build: only a toy world (or nothing) is ever replaced
        require(out.is_dir() and ((out / "build.json").is_file() or not any(out.iterdir())),
                f"--out {out}: exists and is not a toy world (no build.json); choose another --out")
    check_writable(out, "--out")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", default=toy.DEFAULT_WORLD, choices=sorted(toy.WORLDS),
                    help=f"which world's recipe (default: {toy.DEFAULT_WORLD})")
    ap.add_argument("--out", default=str(ROOT / "runs" / "toy-rebuild"))
    ap.add_argument("--max-steps", type=int, help="stop pretraining early (compares the losses so far)")
    ap.add_argument("--ref", default=str(toy.WORLD_DIR), help="the world to compare with")
    ap.add_argument("--eval-every", type=int, default=0,
                    help="greedy accuracy on 100 held-out questions every K pretraining steps (same weights)")
    args = ap.parse_args(argv)
    out, ref = Path(args.out), Path(args.ref)
    try:
        check_args(args)
        torch.set_num_threads(min(2, torch.get_num_threads()))  # the shipped world was built with 2 threads
        record = toy.build_world(out, fit, TrainConfig, world=args.world, max_steps=args.max_steps,
                                 eval_every=args.eval_every)
    except UpftError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # the machine (a full disk, a permission): the build aside was removed
        what = f"{e.filename}: {e.strerror}" if e.filename else str(e)
        print(f"error: {what}; nothing was written to {out}", file=sys.stderr)
        return 1
    if out.resolve() == ref.resolve() or not (ref / "build.json").is_file():
        return 0
    shipped = toy.load_world(ref)["build"]
    if toy.world_of(shipped).name != args.world:
        print(f"not compared: {ref} holds the {shipped['version']} world, this build is {record['version']}")
        return 0
    return 0 if compare(out, ref, record) else 1


if __name__ == "__main__":
    sys.exit(main())
