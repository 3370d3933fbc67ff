"""Print training examples with the tokens UPFT trains on marked (colour in a terminal, [brackets] otherwise).

    python scripts/show_example.py                          # toy world: sample one answer, show both examples
    python scripts/show_example.py --index 3 --prefix-len 4 # another toy question, a shorter prefix
    python scripts/show_example.py --model DIR --question "What is 2 + 3?" [--gold 5]
    python scripts/show_example.py --run runs/<run> --index 0   # an example a run really trained on

Without --run, ONE answer is sampled from the model for the plain question (temperature 0.6 and the
checkpoint's top-p, as train.py samples), and both examples UPFT can make from it are shown: the prefix
example (question + instruction, the first L tokens, EOS: docs/method.md §3.4) and the full example
(plain question, whole answer, EOS), then one line with the sample's final answer (grader.extract_answer)
and whether it is the gold one (grader.is_equiv): UPFT never looks, but you may. With --run, the
examples are read from its train_examples.jsonl: example --index, or the first prefix and the first
full example.
"""
import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts OpenMP: docs/performance.md, "A busy machine"

import torch  # noqa: E402

import toy  # noqa: E402
from data import (IGNORE, Tokenizer, UpftError, chat_prompt, load_rows, read_jsonl, sampling_filters,  # noqa: E402
                  supervised_count)
from grader import extract_answer, is_equiv  # noqa: E402
from model import Transformer, generate  # noqa: E402
from upft import make_example  # noqa: E402

_MARKS = ("\x1b[30;42m", "\x1b[30;46m")  # supervised tokens: black on green / on cyan, alternating
_DIM, _RESET = "\x1b[2m", "\x1b[0m"


def show_example(tok: Tokenizer, example: dict, color: bool | None = None) -> str:
    """One training example as text, with the tokens it is trained on marked: each supervised token in
    [brackets] (or, with color, on an alternating green/cyan background, the prompt dimmed), so token
    boundaries, the prefix length and the supervised EOS are visible. A newline inside a supervised
    token is shown as `\\n`, and the line breaks after the token's closing mark (`[.\\n]`, then the
    newline). color None: colour when stdout is a terminal and NO_COLOR is unset. The first line says
    how many tokens there are and how many are supervised.

    example: {"input_ids", "labels"} with labels aligned to input_ids (IGNORE = not trained), as
    upft.make_example returns it and train_examples.jsonl stores it; "kind" is shown when present.
    """
    if color is None:
        color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    ids, labels = example["input_ids"], example["labels"]
    n_sup = supervised_count(labels)  # what the loss trains
    how = "on a coloured background" if color else "each [in brackets]"
    out = [f"{example.get('kind', 'training')} example: {len(ids)} tokens, {n_sup} supervised, {how}\n"]
    plain, k = [], 0
    for t, (i, y) in enumerate(zip(ids, labels)):
        if y == IGNORE or t == 0:
            plain.append(i)
            continue
        if plain:
            text = tok.decode(plain)
            out.append(f"{_DIM}{text}{_RESET}" if color else text)
            plain = []
        text = tok.decode([i])
        piece = text.replace("\n", "\\n")
        out.append((f"{_MARKS[k % 2]}{piece}{_RESET}" if color else f"[{piece}]") + "\n" * text.count("\n"))
        k += 1
    if plain:
        text = tok.decode(plain)
        out.append(f"{_DIM}{text}{_RESET}" if color else text)
    return "".join(out)


def from_run(run: Path, index, color):
    examples = read_jsonl(run / "train_examples.jsonl")
    tok_dir = run / "model"
    if not (tok_dir / "tokenizer.json").is_file():
        tok_dir = Path(json.loads((run / "args.json").read_text())["model_dir"])
    tok = Tokenizer.from_pretrained(tok_dir)
    if index is not None:
        if not 0 <= index < len(examples):
            raise UpftError(f"--index {index}: {run / 'train_examples.jsonl'} has {len(examples)} examples")
        chosen = [examples[index]]
    else:
        first = [next((e for e in examples if e.get("kind") == kind), None) for kind in ("prefix", "full")]
        chosen = [e for e in first if e is not None] or examples[:1]
    return [show_example(tok, e, color) for e in chosen]


def verdict(tok, response, gold, dataset=None) -> str:
    """One line: the sampled answer, and whether it is the gold one (as eval.py grades it)."""
    answer = extract_answer(tok.decode(response, skip_special_tokens=True), dataset)
    shown = "none found" if answer is None else answer
    if gold is None:
        return f"the sampled answer: {shown} (no gold answer given)"
    return f"the sampled answer: {shown} (gold {gold}: {'right' if is_equiv(answer, gold) else 'wrong'})"


def sampled(model_dir, question, gold, dataset, prefix_len, seed, temperature, max_new_tokens, color):
    torch.manual_seed(seed)
    tok = Tokenizer.from_pretrained(model_dir)
    model = Transformer.from_pretrained(model_dir)
    top_p, top_k = sampling_filters(tok)  # the checkpoint's, as train.py samples without --top-p/--top-k
    (response,) = generate(model, [chat_prompt(tok, question)], max_new_tokens, temperature=temperature,
                           top_p=top_p, top_k=top_k, stop_ids=tok.eos_ids, seed=seed)
    finished = len(response) < max_new_tokens
    return [show_example(tok, make_example(tok, question, response, "prefix", prefix_len), color),
            show_example(tok, make_example(tok, question, response, "full", prefix_len, finished=finished), color),
            verdict(tok, response, gold, dataset)]


def main(argv=None):
    ap = argparse.ArgumentParser(description="Show training examples with the supervised tokens marked.")
    ap.add_argument("--run", help="a run folder: show examples from its train_examples.jsonl")
    ap.add_argument("--index", type=int, help="with --run: the example; else: the toy training question (default 0)")
    ap.add_argument("--model", help="checkpoint to sample from (default: the toy world in assets/toy)")
    ap.add_argument("--question", help="the question (default: toy training question --index)")
    ap.add_argument("--gold", help="with --question: its answer, to say whether the sample is right")
    ap.add_argument("--prefix-len", type=int, default=8, help="L (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
    ap.add_argument("--temperature", type=float, default=0.6, help="(default: %(default)s)")
    ap.add_argument("--max-new-tokens", type=int, default=256, help="(default: %(default)s)")
    ap.add_argument("--color", action=argparse.BooleanOptionalAction, default=None,
                    help="colour instead of brackets (default: when printing to a terminal)")
    args = ap.parse_args(argv)
    try:
        if args.run:
            shown = from_run(Path(args.run), args.index, args.color)
        else:
            if args.prefix_len < 1:
                raise UpftError(f"--prefix-len must be a positive number of tokens, got {args.prefix_len}")
            model_dir, question, gold, dataset = args.model, args.question, args.gold, None
            if model_dir is None or question is None:
                world = toy.load_world()
                model_dir = model_dir or world["model_dir"]
                if question is None:
                    if args.model:
                        raise UpftError("--question is required with --model")
                    rows = load_rows(world["dir"] / "train.jsonl")
                    i = args.index or 0
                    if not 0 <= i < len(rows):
                        raise UpftError(f"--index {i}: the toy world has {len(rows)} training questions")
                    question, gold, dataset = rows[i]["question"], rows[i]["gold"], rows[i]["dataset"]
            shown = sampled(model_dir, question, gold, dataset, args.prefix_len, args.seed, args.temperature,
                            args.max_new_tokens, args.color)
    except UpftError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print("\n\n".join(shown))


if __name__ == "__main__":
    main()
