"""Rebuild the embedded toy world from scratch and compare it with the one shipped in assets/toy.

    python scripts/build_toy.py                       # rebuild into runs/toy-rebuild, compare (~6-7 min)
    python scripts/build_toy.py --max-steps 40        # a partial rebuild: compare the first 40 losses
    python scripts/build_toy.py --out assets/toy      # replace the shipped world (after changing toy.py)

The build is deterministic for a given machine and torch build (same problems, same tokenizer, same
seeded initialisation and data order); the comparison prints which parts are byte-identical and, for
the weights, the largest difference. Exit 0 when everything that was rebuilt matches, 1 otherwise.
"""
import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts OpenMP: README, "A busy machine"

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import toy  # noqa: E402
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "runs" / "toy-rebuild"))
    ap.add_argument("--max-steps", type=int, help="stop pretraining early (compares the losses so far)")
    ap.add_argument("--ref", default=str(toy.WORLD_DIR), help="the world to compare with")
    args = ap.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))  # the shipped world was built with 2 threads
    out = Path(args.out)
    record = toy.build_world(out, fit, TrainConfig, max_steps=args.max_steps)
    if out.resolve() == Path(args.ref).resolve() or not (Path(args.ref) / "build.json").is_file():
        return 0
    return 0 if compare(out, Path(args.ref), record) else 1


if __name__ == "__main__":
    sys.exit(main())
