"""train.py's run under launch/: the same eight steps (train.upft_steps), with what real runs add.

    torchrun --nproc-per-node 8 train.py --model ... --device cuda     # several GPUs, FSDP2 (fsdp.py)
    python train.py --model ... --data ... --save-every 50 [--resume]  # resumable (runfolder.py)
    python train.py --model ... --plan 8                               # the memory plan (plan.py)

train.launcher takes this way when a run asks for any of it (torchrun's environment, a flag of cli.py,
a real checkpoint's memory plan, a GPU). Before anything loads: every flag checked (cli.parse_args), the
inputs read (train.load_inputs), --resume checked against the interrupted run, the memory plan made and
a plan that cannot fit refused. Then the run lives in <out>.partial (runfolder.run_folder) and
`LaunchedRun` does each step across the processes: each samples and evaluates its share of the
questions, all gather the results; the model is sharded with FSDP2 and gathered to decode and to save.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

import train
from data import UpftError, sampling_filters
from eval import summarize
from launch.cli import parse_args, plan_for, print_plan
from launch.fsdp import Launch, all_gather_json, gather_full, gather_rollouts, load_sharded_model, save_gathered
from launch.plan import format_plan, plan_line, plan_record
from launch.runfolder import FitExtras, check_resume, copy_base_eval, read_examples, run_folder
from model import Config, Transformer


class LaunchedRun(train.Run):
    """train.Run on one of torchrun's processes (or plain python with launch/'s flags): process `launch.rank`
    of `launch.world` decodes questions rank, rank + world, ... and every process gets every result; only
    rank 0 writes and logs. --resume and --base-from: what the run folder already holds is read back."""

    def __init__(self, args, tok, folder, log, launch: Launch):
        super().__init__(args, tok, folder, log)
        self.launch, self.verbose, self.resumed = launch, launch.writes, bool(args.resume)
        copy_base_eval(args, self.folder, launch)  # --base-from: the earlier run's base evaluation

    def load_model(self, model_dir):  # under torchrun each process holds its shards only
        if self.launch.sharded:
            return load_sharded_model(model_dir, self.launch.device, self.dtype)
        return super().load_model(model_dir)

    def for_decoding(self, model):
        """Sharded: a full copy (bf16 on CUDA; the plan counts it), as decoding through the shards would gather
        every layer at every token."""
        if not self.launch.sharded:  # itself, or a bf16 copy (--decode-bf16)
            return dtype_copy(model, torch.bfloat16) if self.args.decode_bf16 else model
        bf16 = "cuda" in self.args.device or self.args.decode_bf16
        return gather_full(model, torch.bfloat16 if bf16 else self.dtype, self.launch.device)

    def these(self, n):
        """The indices of the n questions this process decodes."""
        return list(range(self.launch.rank, n, self.launch.world))

    def rollouts(self, model, questions, golds, full, **common):
        if not self.launch.sharded:
            return super().rollouts(model, questions, golds, full, **common)
        these = self.these(len(questions))
        rollouts, sampled, dropped = super().rollouts(model, [questions[i] for i in these], [golds[i] for i in these],
                                                      [full[i] for i in these], **common)
        for r in rollouts:
            r["index"] = these[r["index"]]
        return gather_rollouts(rollouts, sampled, dropped)  # every process gets every rollout, in question order

    def evaluate(self, model, rows, max_new_tokens, **options):
        if not self.launch.sharded:
            return super().evaluate(model, rows, max_new_tokens, **options)
        these = self.these(len(rows))
        records, _ = super().evaluate(model, [rows[i] for i in these], max_new_tokens, **options)
        for r in records:
            r["index"] = these[r["index"]]
        records = sorted((r for part in all_gather_json(records) for r in part), key=lambda r: r["index"])
        return records, summarize(records, options.get("n", 1), max_new_tokens, options.get("sampled"))

    def saved(self, name):
        """--resume: the interrupted run's examples and evaluations; --base-from: the base evaluation."""
        path, args = self.folder / name, self.args
        if name == "train_examples.jsonl":
            return read_examples(self.folder, self.log) if args.resume and path.exists() else None
        reuse = args.resume or (bool(args.base_from) and name.startswith("eval_base"))
        return json.loads(path.read_text()) if reuse and path.exists() else None

    def hooks(self, eval_rows):
        subset = eval_rows[:self.args.eval_subset]  # held-out questions evaluated during training (--eval-every)
        return FitExtras(self.folder, self.args.resume, self.args.save_every,
                         (lambda model: self.subset_accuracy(subset, model)) if subset else None,
                         self.args.eval_every, self.log, self.args.autocast_bf16)

    def subset_accuracy(self, subset, model):
        """Greedy accuracy on a fixed held-out subset during training (greedy draws no random number)."""
        _, summary = train.evaluate_model(self, self.for_decoding(model), subset)
        return {"eval_accuracy": summary["accuracy"], "eval_questions": summary["questions"]}

    def save_model(self, model, path):  # sharded: the full weights gathered, written by one process
        if self.launch.sharded:
            return save_gathered(model, self.dtype, path, self.launch.rank)
        return super().save_model(model, path)

    def write(self, name, content):
        if self.launch.writes:
            super().write(name, content)

    def write_metrics(self, history):  # FitExtras has written metrics.jsonl step by step, evaluations too
        pass


def dtype_copy(model, dtype):
    """A copy of the model's weights in `dtype` (--decode-bf16: a bf16 copy to decode with), on its device."""
    state = {k: v.detach().to(dtype) for k, v in model.state_dict().items()}
    copy = Transformer.from_state_dict(model.config, state, model.device)
    copy.source_dir = model.source_dir
    return copy


def run(args, log=print):
    """One run: every input checked and the memory plan made before anything is written; then
    train.upft_steps in the run folder (runfolder.run_folder). Returns results.json."""
    t0 = time.time()
    launch = Launch.start(args.device)
    log = log if launch.writes else (lambda *_: None)
    model_dir, tok, rows, eval_rows = train.load_inputs(args)  # bad input fails here: nothing written yet
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
    records = {"memory_plan.json": plan_record(cfg, plan), "args.json": train.run_record(args, model_dir, top_p, top_k)}
    with run_folder(args, launch, records, log) as out:
        results = train.upft_steps(LaunchedRun(args, tok, out, log, launch), model_dir, rows, eval_rows, t0)
    log(train.report(results, args.out) + ("" if args.model else "\n" + train.TOY_NOTE))
    return results


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
