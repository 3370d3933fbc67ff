"""The embedded toy world: synthetic arithmetic word problems, a tokenizer and a tiny Llama config.

`python train.py` without `--model` needs something to fine-tune that can be built offline on a CPU.
This module provides the pieces of that "toy world":

* a generator of grade-school style word problems (3-5 operations on a running count, step-by-step
  solutions that end in ``\\boxed{N}``), deterministic from a seed, with disjoint train/test splits;
* the pretraining corpus made from those problems (the recipe of a world: `World`, `WORLDS`);
* a byte-level BPE tokenizer trained on that corpus with the ``tokenizers`` library (digits split one
  per token, ChatML special tokens and chat template like Qwen), written as HF-style tokenizer files;
* the ``config.json`` dict of a small Llama-architecture model.

It is meant as a small analogue of the paper's preconditions (docs/method.md §1): samples of one question
share their opening (the solution first restates the problem), and mistakes tend to come late (carries
in the larger running totals of later steps). Nothing here is tuned to make UPFT win.

Two worlds (`build_world(..., world=...)`, `python scripts/build_toy.py --world ...`):

* "instruct" (the default, toy-v5). The paper tunes INSTRUCT models, which read UPFT's prefix
  instruction (upft.PREFIX_INSTRUCTION, docs/method.md §3.4) as ordinary English. This world's corpus
  keeps the plain question -> full solution pairs and adds questions with an instruction in natural
  English, appended to the question or placed before it, in many wordings (`INSTRUCTIONS`): give only
  the first step (target: the solution's opening line and its first operation, then end of turn), only
  the first two steps, only the final answer, or the full solution. The tokenizer is trained on this
  corpus, so the words of such instructions are real tokens.
* "plain" (toy-v4, the world shipped before it): plain pairs only; its problems, splits and tokenizer
  are reproduced byte for byte. Its model cannot read the instruction (issue 15: 80 of the
  instruction's 91 tokens never occur in its corpus; greedy accuracy on 200 test questions falls from
  58% to 0.5% when the instruction is appended).

The vocabulary rule of the instruct corpus (checked by tests/test_toy.py and at every build): the
EXACT UPFT instruction never occurs in it, and neither does any run of 4 or more consecutive words of
the instruction (case-insensitive, punctuation ignored: `instruction_ngrams`), so what the model does
under it is generalisation from other sentences, as for the paper's models. Every single word of the
instruction may occur, in other sentences (the paper's models know English), and every one does, so
none of its tokens is unseen in pretraining.

A world is a `World` recipe (problem counts, the share of each kind of pretraining example, vocabulary
size, pretraining settings); another world is one more `WORLDS` entry.

* "decision" and "mirror" (toy-v5-decision, toy-v5-mirror): the positive control of docs/experiments.md
  §2, a world where the opening DOES decide. Every solution opens with a method marker on its own line:
  "Slowly:" (the careful form, one operation per line, as in toy-v5) or "Fast:" (the hasty form: the same
  sentences run together, three operations per line, which the model gets wrong more often). The marker is drawn
  independently of the problem, the careful one with probability `careful_share` (decision: the majority;
  mirror: the minority), so the base model's first token is the decision, made by chance. These worlds
  continue pretraining the shipped instruct world's model on that mix (same tokenizer, same instruct
  kinds), a few minutes instead of an hour.

The built world (model + question files) ships in assets/toy; `load_world` reads it, and
`build_world` rebuilds it with the trainer passed in (scripts/build_toy.py passes train.fit).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
import shutil
import time
from collections import Counter
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

from data import Tokenizer, UpftError, atomic_dir, chat_prompt, read_jsonl, write_json, write_jsonl
from grader import extract_answer, is_equiv
from model import Config, Transformer, generate
from upft import PREFIX_INSTRUCTION, make_example

# The problem generator's random streams are keyed by the version that introduced it; it has not changed
# since toy-v4, so every world draws the same problems (and the toy-v4 world is reproduced exactly).
PROBLEMS_KEY = "toy-v4"

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2

# ChatML, as in Qwen2.5 (without Qwen's default system prompt and tool handling).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)

# Default sampling settings shipped in generation_config.json (UPFT samples at 0.6, docs/method.md §3.2).
GEN_TEMPERATURE = 0.6
GEN_TOP_P = 0.95
GEN_TOP_K = 0

# --------------------------------------------------------------------------------------------------
# Problem generator
# --------------------------------------------------------------------------------------------------

NAMES = [
    ("Mia", "she", "her"), ("Liam", "he", "his"), ("Emma", "she", "her"), ("Noah", "he", "his"),
    ("Ava", "she", "her"), ("Lucas", "he", "his"), ("Zoe", "she", "her"), ("Omar", "he", "his"),
    ("Nina", "she", "her"), ("Leo", "he", "his"), ("Sara", "she", "her"), ("Ben", "he", "his"),
    ("Lily", "she", "her"), ("Jack", "he", "his"), ("Rosa", "she", "her"), ("Ivan", "he", "his"),
    ("Hana", "she", "her"), ("Tom", "he", "his"), ("Elsa", "she", "her"), ("Raj", "he", "his"),
]
OBJECTS = [
    "apples", "marbles", "stickers", "coins", "books", "cookies", "pencils", "cards", "shells",
    "stamps", "eggs", "beads", "candles", "buttons", "toys", "flowers", "cupcakes", "rocks",
]
CONTAINERS = ["bags", "boxes", "packs", "jars", "baskets", "crates"]
FRIENDS = ["friends", "cousins", "classmates", "neighbors", "teammates"]


def _op_pool(x: int, rng: random.Random) -> list[str]:
    """Operations that keep the running count a positive integer."""
    ops = ["add", "add", "buy"]
    if x < 50:
        ops += ["times"]
    if x >= 12:
        ops += ["sub", "sub"]
    if 20 <= x <= 100 and any(x % k == 0 for k in (2, 3, 4, 5)):
        ops += ["split"]
    return ops


def make_problem(rng: random.Random, min_ops: int = 3, max_ops: int = 5) -> dict:
    """One word problem: {"question", "solution", "answer"} (answer is the decimal string of the result).

    The question states a starting count and `min_ops..max_ops` changes to it; the solution restates the
    start, then does one line of arithmetic per change (running total), then `\\boxed{answer}`.
    """
    name, pron, poss = rng.choice(NAMES)
    other = rng.choice([n for n in NAMES if n[0] != name])[0]
    obj = rng.choice(OBJECTS)
    Pron = pron.capitalize()
    x = rng.randint(5, 40)
    q = [rng.choice([
        f"{name} has {x} {obj}.",
        f"{name} starts with {x} {obj}.",
        f"There are {x} {obj} in {name}'s room.",
    ])]
    # Solution opener: a restatement with a dominant form (prefix self-consistency), plus variants.
    s = [rng.choices([
        f"{name} starts with {x} {obj}.",
        f"At first, {name} has {x} {obj}.",
        f"Let's count {name}'s {obj}. {Pron} starts with {x}.",
    ], weights=[6, 3, 1])[0]]
    n_ops = rng.randint(min_ops, max_ops)
    for _ in range(n_ops):
        op = rng.choice(_op_pool(x, rng))
        if op == "add":
            b = rng.randint(2, 30)
            q.append(rng.choice([
                f"{Pron} finds {b} more {obj}.",
                f"{other} gives {name} {b} {obj}.",
                f"Then {pron} gets {b} more {obj}.",
            ]))
            y = x + b
            s.append(rng.choice([f"{Pron} gets {b} more, so {x} + {b} = {y}.",
                                 f"Adding {b} gives {x} + {b} = {y}."]))
        elif op == "sub":
            b = rng.randint(2, min(x - 2, 30))
            q.append(rng.choice([
                f"{Pron} gives {b} {obj} to {other}.",
                f"{Pron} loses {b} {obj}.",
                f"Then {pron} uses {b} of {poss} {obj}.",
            ]))
            y = x - b
            s.append(rng.choice([f"{Pron} has {b} fewer, so {x} - {b} = {y}.",
                                 f"Taking away {b} leaves {x} - {b} = {y}."]))
        elif op == "buy":
            k = rng.randint(2, 5)
            m = rng.randint(2, 9)
            c = rng.choice(CONTAINERS)
            q.append(rng.choice([
                f"{Pron} buys {k} {c} with {m} {obj} in each.",
                f"Then {pron} gets {k} {c} of {obj}, and each one holds {m}.",
            ]))
            y = x + k * m
            s.append(f"{k} {c} of {m} is {k} * {m} = {k * m}, so {x} + {k * m} = {y}.")
        elif op == "times":
            k = 2 if x >= 20 else rng.choice([2, 2, 3])
            word = {2: "doubles", 3: "triples"}[k]
            q.append(rng.choice([
                f"Then {pron} {word} the number of {obj} {pron} has.",
                f"{other} {word} {name}'s {obj}.",
            ]))
            y = x * k
            s.append(f"The count {word}, so {x} * {k} = {y}.")
        else:  # split
            k = rng.choice([d for d in (2, 3, 4, 5) if x % d == 0])
            f = rng.choice(FRIENDS)
            q.append(f"{Pron} shares the {obj} equally with {k - 1} {f} and keeps one share.")
            y = x // k
            s.append(f"{Pron} splits them into {k} shares, so {x} / {k} = {y}.")
        x = y
    q.append(rng.choice([
        f"How many {obj} does {name} have now?",
        f"How many {obj} does {name} have at the end?",
    ]))
    s.append(rng.choice([f"The answer is \\boxed{{{x}}}.",
                         f"So {name} has \\boxed{{{x}}} {obj} now."]))
    return {"question": " ".join(q), "solution": "\n".join(s), "answer": str(x)}


def question_split(question: str, test_fraction: float = 0.1) -> str:
    """'test' or 'train', fixed by a hash of the question text, so the splits never share a question."""
    h = int.from_bytes(hashlib.sha256(question.encode("utf-8")).digest()[:8], "big")
    return "test" if (h % 10_000) < test_fraction * 10_000 else "train"


def make_split(n: int, seed: int = 0, split: str = "train", **kw) -> list[dict]:
    """`n` distinct problems of one split (train/test membership by hashing the question text).

    Deterministic in (n, seed, split, kw); the first k rows of make_split(n) equal make_split(k).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    rng = random.Random(f"upft-toy/{PROBLEMS_KEY}/{seed}/{split}")
    rows, seen = [], set()
    while len(rows) < n:
        p = make_problem(rng, **kw)
        if p["question"] in seen or question_split(p["question"]) != split:
            continue
        seen.add(p["question"])
        rows.append(p)
    return rows


# --------------------------------------------------------------------------------------------------
# The pretraining corpus: plain pairs and instructed questions
# --------------------------------------------------------------------------------------------------

# Natural-English instructions of each kind: a request, optionally followed by a remark. The instruct
# world's corpus draws one request and, half of the time, one remark per instructed example. The
# remarks about scope are shared by the two "partial" kinds, so only the request says how far to go.
# None of these may contain 4 consecutive words of upft.PREFIX_INSTRUCTION (module docstring).
_PARTIAL_REMARKS = [
    "It may not be the whole solution.",
    "You do not need to finish.",
    "The rest can come later.",
    "That step might serve only as a start.",
    "It is fine if it does not reach the answer.",
    "The remaining steps are not needed yet.",
    "It does not have to encompass everything.",
    "We are not after the entire solution here.",
    "Later steps can build on it.",
    "This is only a beginning, not the full answer.",
]
INSTRUCTIONS = {
    "first": ([  # only the first step: the opening line and the first operation (`target_of`)
        "Please give only the first step of the solution.",
        "Write just the initial step, nothing more.",
        "Provide the first step towards the answer and stop there.",
        "Only begin the solution: write its opening step.",
        "What is the initial step in solving this question? Write only that step.",
        "Begin resolving the problem, but write one step only.",
        "Please provide a single step, the first one.",
        "Show how you would start, with one step only.",
        "Give the first step of your working and then stop.",
        "Start on this question, and stop after the initial step.",
        "Lay the foundation: write the first step and nothing else.",
        "Provide only the opening step of your solution.",
    ], _PARTIAL_REMARKS),
    "two": ([  # the first two steps: the opening line and two operations
        "Please give only the first two steps of the solution.",
        "Write the first two steps and stop.",
        "Provide two steps towards the answer, no more.",
        "Begin the solution with its opening two steps only.",
        "Show just the first two steps of your working.",
        "Start resolving this question, but stop after two steps.",
    ], _PARTIAL_REMARKS),
    "answer": ([  # only the final answer, without working
        "Give only the final answer.",
        "Just tell me the answer, without the steps.",
        "Please reply with the final answer only.",
        "Skip the working and state the result.",
        "What is the answer? No explanation is needed.",
        "Provide the answer alone, not the solution.",
    ], [
        "Keep it short.",
        "One sentence is enough.",
        "There is no need to show the work.",
        "Do not write any steps.",
    ]),
    "full": ([  # the whole solution, as for the plain question
        "Please solve this step by step.",
        "Show all the steps of the solution.",
        "Give the complete solution, one step per line.",
        "Work through the entire problem and give the final answer.",
        "Solve the question fully, from the first step to the answer.",
        "Explain each step until you reach the answer.",
        "Provide the entire solution, step by step.",
        "Write out the whole solution.",
    ], [
        "Do not skip any step.",
        "Finish with the final answer.",
        "Make sure the solution is complete.",
        "Your answer should encompass every step.",
        "Each step may build on the one before.",
    ]),
}
P_REMARK = 0.5   # share of instructed examples whose request is followed by a remark
P_BEFORE = 0.35  # share placed before the question (the rest is appended, as UPFT's instruction is)


def target_of(row: dict, kind: str) -> str:
    """What the answer to `row`'s question is under an instruction of `kind` (plain: no instruction).

    A step is one operation, one line of arithmetic; the opening line, which restates the starting
    count, belongs to the first step (alone it is not a step towards the answer, and at ~7 tokens it is
    shorter than UPFT's 8-token prefix: see the recipe log in WORLDS)."""
    lines = row["solution"].split("\n")
    marker = 1 if opener_of(row["solution"]) else 0  # a decision world's marker line opens the first step
    if kind in ("plain", "full"):
        return row["solution"]
    if kind == "first":
        return "\n".join(lines[:2 + marker])
    if kind == "two":
        return "\n".join(lines[:3 + marker])
    if kind == "answer":
        return f"The answer is \\boxed{{{row['answer']}}}."
    raise ValueError(f"unknown kind {kind!r}")


# The decision worlds' method markers (first line of a solution) and the hasty form's operations per line.
MARKERS = {"careful": "Slowly:", "hasty": "Fast:"}
HASTY_OPS_PER_LINE = 3
_EQUATION = re.compile(r"\d+ [-+*/] \d+ = \d+")


def decision_solution(row: dict, form: str) -> str:
    """`row`'s solution in the decision worlds' `form` ("careful" or "hasty"), behind its marker line.

    careful: the marker, then the toy-v5 solution as it is (the opening line, one operation per line, the
    answer line). hasty: the marker, the opening line, then the same sentences run together,
    HASTY_OPS_PER_LINE operations per line, then the answer line. The same words, numbers and answer; only
    the layout differs, and the model errs more often in the run-on form (the gap gate measures how much)."""
    lines = row["solution"].split("\n")
    if form == "careful":
        return "\n".join([MARKERS["careful"], *lines])
    if form != "hasty":
        raise ValueError(f"unknown form {form!r}")
    ops = lines[1:-1]
    work = [" ".join(ops[i:i + HASTY_OPS_PER_LINE]) for i in range(0, len(ops), HASTY_OPS_PER_LINE)]
    return "\n".join([MARKERS["hasty"], lines[0], *work, lines[-1]])


def opener_of(text: str) -> str | None:
    """"careful" / "hasty" when `text` (a response) opens with that marker, else None."""
    first = text.lstrip().split("\n", 1)[0].strip()
    return next((form for form, marker in MARKERS.items() if first == marker), None)


def decision_rows(rows: list[dict], careful_share: float, key: str) -> list[dict]:
    """`rows` with their solutions in a decision world's forms: careful with probability
    `careful_share`, independently of the problem (a seeded stream keyed by `key`)."""
    rng = random.Random(f"upft-toy/{key}/forms")
    return [{**r, "solution": decision_solution(r, "careful" if rng.random() < careful_share else "hasty")}
            for r in rows]


def instruct(row: dict, kind: str, rng: random.Random) -> dict:
    """One pretraining example {"kind", "prompt" (the user turn's text), "target"} for `row`: the plain
    question, or the question with an instruction of `kind` in one of its wordings, before or after it."""
    if kind == "plain":
        return {"kind": kind, "prompt": row["question"], "target": row["solution"]}
    requests, remarks = INSTRUCTIONS[kind]
    text = rng.choice(requests)
    if rng.random() < P_REMARK:
        text += " " + rng.choice(remarks)
    if rng.random() < P_BEFORE:
        prompt = text + rng.choice([" ", "\n"]) + row["question"]
    else:
        prompt = row["question"] + " " + text
    return {"kind": kind, "prompt": prompt, "target": target_of(row, kind)}


def pretraining_corpus(rows: list[dict], tasks: dict, key: str) -> list[dict]:
    """One pretraining example per row (`instruct`), with exactly round(share * len(rows)) of each kind
    of `tasks` ({kind: share}, plain first), the kinds shuffled over the rows by a seeded stream."""
    counts = {k: round(s * len(rows)) for k, s in tasks.items()}
    counts["plain"] = len(rows) - sum(c for k, c in counts.items() if k != "plain")
    kinds = [k for k, c in counts.items() for _ in range(c)]
    if len(kinds) == len(rows) and set(kinds) == {"plain"}:  # the plain world: no random draw at all
        return [instruct(r, "plain", None) for r in rows]
    rng = random.Random(f"upft-toy/{key}/corpus")
    rng.shuffle(kinds)
    return [instruct(r, k, rng) for r, k in zip(rows, kinds)]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())  # case-insensitive, punctuation ignored


def instruction_ngrams(text: str, n: int = 4, instruction: str = PREFIX_INSTRUCTION) -> set[str]:
    """The runs of `n` consecutive words of `instruction` that occur in `text` (the vocabulary rule)."""
    inst = _words(instruction)
    grams = {" ".join(inst[i:i + n]) for i in range(len(inst) - n + 1)}
    words = _words(text)
    return {g for g in (" ".join(words[i:i + n]) for i in range(len(words) - n + 1)) if g in grams}


# --------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------

# Qwen2's pre-tokenizer regex: digits one at a time (\p{N} without +), words with a leading space.
_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def train_tokenizer(texts, out_dir, vocab_size: int) -> Path:
    """Train a byte-level BPE on `texts`; write tokenizer.json, tokenizer_config.json and
    generation_config.json to `out_dir`. Returns out_dir as a Path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    tok.save(str(out / "tokenizer.json"))
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "model_max_length": 512,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    gen = {
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
        "pad_token_id": ids["<|endoftext|>"],
        "do_sample": True,
        "temperature": GEN_TEMPERATURE,
        "top_p": GEN_TOP_P,
        "top_k": GEN_TOP_K,
    }
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    return out


def tokenizer_corpus(corpus) -> list[str]:
    """Texts to train the tokenizer on: every pretraining example's prompt (the question and any
    instruction) and target, and the chat scaffolding."""
    texts = []
    for e in corpus:
        texts.append(e["prompt"])
        texts.append(e["target"])
    texts.append("user\nassistant\nsystem\n")
    return texts


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------

def model_config(vocab_size: int | None = None) -> dict:
    """HF config.json of the toy model (Llama architecture, GQA, tied embeddings, fp32)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 128,
        "intermediate_size": 384,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 512,
        "vocab_size": vocab_size or WORLDS[DEFAULT_WORLD].vocab_size,
        "tie_word_embeddings": True,
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "bos_token_id": 0,  # <|endoftext|> (never prepended: the chat template has no BOS)
        "eos_token_id": 2,  # <|im_end|>
        "pad_token_id": 0,
        "torch_dtype": "float32",
    }


# --------------------------------------------------------------------------------------------------
# Worlds: what a world is built from, and the build
# --------------------------------------------------------------------------------------------------

# The built world ships with the code (assets/toy: the model in HF layout, ~3.5 MB, and its question
# files), so the first `python train.py` needs no pretraining. scripts/build_toy.py rebuilds it with
# build_world below and checks the result against the shipped one.
WORLD_DIR = Path(__file__).resolve().parents[1] / "assets" / "toy"

# The questions UPFT trains on and the held-out test questions take 4-6 steps, one more than the model
# was pretrained on at the top end: harder than its training data, as MATH500/AIME are for the paper's
# models. In distribution (3-5 steps) the toy-v4 model is right ~84% of the time; on 4-6 steps ~58%,
# with the errors in the late steps. That leaves headroom without making the model worse on purpose.
HARDER = dict(min_ops=4, max_ops=6)


@dataclasses.dataclass(frozen=True)
class World:
    """The recipe of a toy world (build.json records it)."""
    name: str
    version: str            # bump whenever the generator, corpus, tokenizer or model config changes
    n_pretrain: int         # pretraining examples, one per fresh 3-5-step train question (one epoch)
    tasks: dict             # share of each kind of pretraining example (`instruct`); the rest is plain
    n_upft: int             # fresh 4-6-step train questions for UPFT/SFT/RFT (never seen in pretraining)
    n_test: int             # held-out 4-6-step questions (base/tuned accuracy, the gates)
    vocab_size: int         # BPE vocabulary, special tokens included
    pretrain: dict          # train.TrainConfig of pretraining (train.fit, one epoch)
    careful_share: float | None = None  # decision worlds: P(careful marker) in every solution (decision_rows)
    continue_from: str | None = None    # continue pretraining this world's shipped build (its tokenizer too)


# Pretraining from scratch with the project's own loop. Accuracy jumps once the model learns to copy
# names and numbers from the question (~900 steps in toy-v4), then the arithmetic; toy-v4 with 1,300 or
# 1,700 steps instead of 2,000 stayed near 13% on 3-5-step problems, at 2,000 it reached ~84%.
PRETRAIN = dict(lr=4e-3, epochs=1, batch_size=16, micro_batch_size=16, warmup_ratio=0.02,
                schedule="cosine", seed=0)

WORLDS = {
    # toy-v4: 32,000 plain pairs, 2,000 steps of 16 (1,173 s here, 2 CPU threads).
    "plain": World("plain", "toy-v4", n_pretrain=32_000, tasks={}, n_upft=2_000, n_test=500,
                   vocab_size=640, pretrain=PRETRAIN),
    # toy-v5: the instruct mix. Plain pairs stay the majority and, with the instructed full solutions,
    # 72% of the examples carry a whole solution (the arithmetic is learned from those); the first-step
    # kind, the one UPFT's instruction asks for, gets the largest instructed share; the other kinds
    # are there so that the wording, not the mere presence of an instruction, decides where to stop.
    # 57,600 examples = 3,600 steps of 16 (3,385 s here; ~41,500 whole solutions; the recipe log below).
    # The vocabulary cap 896 is above what BPE finds in this corpus (857 tokens with min_frequency 2), so
    # every word of the instructions is one token; the model is toy-v4's but for those embedding rows
    # (0.90M parameters instead of 0.86M).
    "instruct": World("instruct", "toy-v5", n_pretrain=57_600,
                      tasks={"first": 0.16, "two": 0.06, "answer": 0.06, "full": 0.12},
                      n_upft=2_000, n_test=2_000, vocab_size=896, pretrain=PRETRAIN),
}
# The decision worlds (docs/experiments.md §2): the instruct world's model, pretrained further on 16,000
# fresh 3-5-step questions (1,000 steps of 16) of the instruct mix, every solution in a decision form.
# The careful share of the corpus is set so that sampling at T = 0.6 / top-p 0.95 (which sharpens a
# 60:40 choice to about 67:33) lands in the gate's 60-75% (decision) and 25-40% (mirror).
CONTINUE = dict(lr=3e-4, epochs=1, batch_size=16, micro_batch_size=16, warmup_ratio=0.02, schedule="cosine", seed=0)
_DECISION = dict(n_pretrain=16_000, tasks={"first": 0.16, "two": 0.06, "answer": 0.06, "full": 0.12},
                 n_upft=2_000, n_test=2_000, vocab_size=896, pretrain=CONTINUE, continue_from="instruct")
WORLDS["decision"] = World("decision", "toy-v5-decision", careful_share=0.6, **_DECISION)
WORLDS["mirror"] = World("mirror", "toy-v5-mirror", careful_share=0.4, **_DECISION)
DEFAULT_WORLD = "instruct"
WORLD_DIRS = {"instruct": Path(__file__).resolve().parents[1] / "assets" / "toy",
              "decision": Path(__file__).resolve().parents[1] / "assets" / "toy-decision",
              "mirror": Path(__file__).resolve().parents[1] / "assets" / "toy-mirror"}

# Recipe log of the instruct world: pilot builds on 2 shared CPU cores, gates of scripts/gates.py on the
# first 500 held-out questions (toy-v4 on its first 200: opening 2.71 nats/token under the instruction,
# 0.10 under the plain prompt; accuracy 58.0% plain, 0.5% with the instruction appended).
# - pilot 1 (2,800 steps; first step = the opening line alone): accuracy 68.0%, but the opening cost
#   1.61 nats/token (plain prompt 0.09). The model read the instruction as "first step" (99.6% of its
#   greedy answers stopped after one line), so it ended its turn where the 8-token opening runs on past
#   the ~7-token opening line (that line break: ~10 nats). Changed: a step is one operation, and the
#   first step is the opening line + the first operation (~25 tokens: an 8-token prefix is a part of
#   it, as in the paper).
# - pilot 2 (that change alone): accuracy 4.8%. The model had not learned to copy each operation's
#   number from the question (3-5-step accuracy 9.5%, final loss 0.121 against pilot 1's 0.059), although
#   its data differed from pilot 1's only in those targets: 2,800 steps sat on the edge of the transition
#   noted at PRETRAIN. Changed: 3,600 steps, and build_world(eval_every=) to see the transition.
# - pilot 3 (3,600 steps, seed 0, 2,471 s with the accuracy checks): accuracy on 100 questions rose
#   gradually, 14% at step 1,200, 31% at 1,600, 49% at 2,800, 61% at 3,600. Gates hold: opening 0.131
#   nats/token (plain 0.091), accuracy 62.4%; under the instruction every greedy answer stops after the
#   first step (27.8 tokens), 63% open with the plain answer's first line (the instruction shifts the
#   choice of opening form: the first token costs 0.91 nats instead of 0.62).
# - pilot 3 with pretraining seed 1 (another initialisation and data order; 3,691 s on a busier
#   machine): the same gradual rise (16% at 1,600, 55% at 2,800, 64% at 3,600); gates hold: opening
#   0.138 nats/token (plain 0.088), accuracy 69.6%; 99.4% of the instructed answers stop after the first
#   step. So the recipe does not hinge on one seed's luck, as 2,800 steps did.
# Recipe log of the decision worlds (gates of scripts/gates.py on the first 200 held-out questions; toy-v5
# itself: plain greedy 68.5% there). Builds continue from the shipped toy-v5 model, 2 CPU threads, the
# machine shared with other jobs:
# - pilot 1 (decision, 400 steps at LR 1e-3; hasty = the bare equations, three operations per line): the
#   share gates held (careful 72.5% plain, 71.5% instructed), the gap too (careful 38.5%, hasty 14.0%),
#   but plain greedy accuracy fell to 38.5%: the continued pretraining cost the careful form itself ~30
#   points. Changed: LR 3e-4, 1,000 steps.
# - pilot 2 (decision and mirror, that change alone): shares held (decision 71.0/69.5%, mirror 29.5/27.5%),
#   gaps held (31.5 and 26.5 points), accuracy failed in both: careful 40.5% / 32.0%, hasty 9.0% / 5.5%,
#   so the mirror, whose greedy answer takes the hasty form, could never reach 45%. The bare equations
#   drop the words that tie each line to its sentence of the question, and the model lost track.
# - pilot 3 (decision, two hasty forms side by side, 979-1,063 s each): (v2) the bare equations, one
#   operation per line: careful 41.5%, hasty 5.0%, accuracy gate fails; (v1) the careful sentences run
#   together, three operations per line: careful 73.0%, hasty 45.5% (gap 27.5), shares 70.0% / 68.0%,
#   opening 0.268 nats/token, accuracy 73.0%: every gate holds. v1 is the recipe; the decision world
#   shipped is that build (a rebuild from this file reproduces its files and first 30 losses exactly).
TOY_VERSION = WORLDS[DEFAULT_WORLD].version  # the version a fresh build of the default world gets


def world_of(build: dict) -> World:
    """The recipe a build record was made from (records before toy-v5 name only their version)."""
    for w in WORLDS.values():
        if build.get("world", w.name) == w.name and build["version"] == w.version:
            return w
    raise UpftError(f"toy world version {build['version']!r} is not one this code can build")


def load_world(path=WORLD_DIR) -> dict:
    """The shipped toy world: {"dir", "model_dir", "train", "test", "build"}."""
    path = Path(path)
    if not (path / "build.json").is_file():
        raise UpftError(f"{path}: no toy world here (rebuild it with: python scripts/build_toy.py)")
    return {"dir": path, "model_dir": path / "model", "train": read_jsonl(path / "train.jsonl"),
            "test": read_jsonl(path / "test.jsonl"), "build": json.loads((path / "build.json").read_text())}


def world_data(w: World) -> tuple[list[dict], list[dict], list[dict]]:
    """(pretraining corpus, UPFT questions, test questions) of recipe `w`, all deterministic. A decision
    world's continued pretraining draws fresh questions (seed 2), none of them a UPFT question, and its
    solutions (the UPFT and test rows' too) are in the world's decision forms."""
    pre = make_split(w.n_pretrain, seed=2 if w.continue_from else 0, split="train")  # 3-5 steps
    seen = {r["question"] for r in pre}
    upft_rows = [r for r in make_split(w.n_upft + 100, seed=1, split="train", **HARDER)
                 if r["question"] not in seen][:w.n_upft]
    test = make_split(w.n_test, seed=0, split="test", **HARDER)
    if w.careful_share is not None:
        pre, upft_rows, test = (decision_rows(rows, w.careful_share, f"{w.version}/{part}")
                                for rows, part in ((pre, "pretrain"), (upft_rows, "upft"), (test, "test")))
    corpus = pretraining_corpus(pre, w.tasks, w.version)
    bad = [e["prompt"] for e in corpus if instruction_ngrams(e["prompt"] + "\n" + e["target"])]
    if bad:  # the vocabulary rule (module docstring): never build a world that breaks it
        raise UpftError(f"{len(bad)} pretraining prompts contain words of the UPFT instruction, e.g. {bad[0]!r}")
    return corpus, upft_rows, test


def instruction_coverage(corpus, tok) -> dict:
    """How much of the UPFT instruction's vocabulary the corpus holds (the vocabulary rule allows every
    word, never 4 in a row): its words that occur / do not occur in the corpus, and how often each of its
    tokens under `tok` (data.Tokenizer) occurs in the corpus's text."""
    text = "\n".join(e["prompt"] + "\n" + e["target"] for e in corpus)
    present = set(_words(text))
    words = list(dict.fromkeys(_words(PREFIX_INSTRUCTION)))
    counts = Counter(tok.encode(text))
    ids = tok.encode(PREFIX_INSTRUCTION)
    return {"words_in_corpus": [w for w in words if w in present],
            "words_absent": [w for w in words if w not in present],
            "tokens": [tok.decode([i]) for i in ids], "token_counts": [counts[i] for i in ids],
            "unseen_tokens": [tok.decode([i]) for i in ids if counts[i] == 0]}


def build_world(out_dir, fit, train_config, world=DEFAULT_WORLD, max_steps=None, eval_every=0, log=print,
                **sizes) -> dict:
    """Build the toy world `world` (a WORLDS name) into `out_dir` (atomically) and return its build record.

    `fit(model, examples, tc, pad_id=..., desc=..., hooks=...)` is the trainer (train.fit, passed in so that
    the toy world does not depend on the trainer): pretraining is the project's own masked cross-entropy
    loop run on the corpus's targets, chat prompt masked, the same code path UPFT trains with.
    `train_config` builds its config from the recipe's pretrain settings (train.TrainConfig). max_steps
    stops early (a partial rebuild for the tests; the schedule still spans all steps). eval_every = K
    measures plain greedy accuracy on the first 100 held-out questions every K steps (logged and kept in
    the record as "accuracy_during_pretraining"; greedy decoding draws nothing, so the weights are the
    same with or without it). `sizes` overrides
    the recipe's n_pretrain / n_upft / n_test (a miniature world for tests). The record holds the recipe,
    every step's loss and the sha256 of the weights, so a rebuild can be compared with the shipped world.
    """
    t0 = time.time()
    w = dataclasses.replace(WORLDS[world], **sizes)
    corpus, upft_rows, test = world_data(w)
    with atomic_dir(out_dir) as tmp:
        if w.continue_from:  # the source world's model and tokenizer, pretrained further
            source = load_world(WORLD_DIRS[w.continue_from])
            (tmp / "tokenizer").mkdir()
            for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
                shutil.copy(source["model_dir"] / name, tmp / "tokenizer" / name)
            tok = Tokenizer.from_pretrained(tmp / "tokenizer")
            model = Transformer.from_pretrained(source["model_dir"])
        else:
            train_tokenizer(tokenizer_corpus(corpus), tmp / "tokenizer", w.vocab_size)
            tok = Tokenizer.from_pretrained(tmp / "tokenizer")
            torch.manual_seed(w.pretrain["seed"])
            model = Transformer(Config.from_dict(model_config(len(tok)))).init_weights(0.02)
        # every example is the chat prompt over its user turn + the whole target + end of turn
        examples = [make_example(tok, e["prompt"], tok.encode(e["target"]), "full", prefix_len=0) for e in corpus]
        tc = train_config(**w.pretrain, max_steps=max_steps)
        curve = []

        def accuracy(m):  # shows where the model learns to copy and to add (the transition noted at PRETRAIN)
            rows = test[:100]
            outs = generate(m, [chat_prompt(tok, r["question"]) for r in rows], 256, stop_ids=tok.eos_ids)
            curve.append(sum(is_equiv(extract_answer(tok.decode(o)), r["answer"]) for o, r in zip(outs, rows)) / len(rows))
            return {"accuracy": curve[-1]}
        from launch.runfolder import FitExtras  # (here: reading a built world imports no trainer)
        hooks = FitExtras(evaluate=accuracy if eval_every else None, eval_every=eval_every, log=log)
        hist = fit(model, examples, tc, pad_id=tok.pad_id, desc=f"pretrain toy ({w.name})", hooks=hooks)
        model.save_pretrained(tmp / "model", tokenizer_dir=tmp / "tokenizer")
        shutil.rmtree(tmp / "tokenizer")
        write_jsonl(tmp / "train.jsonl", upft_rows)
        write_jsonl(tmp / "test.jsonl", test)
        weights = hashlib.sha256((tmp / "model" / "model.safetensors").read_bytes()).hexdigest()
        record = {"version": w.version, "world": w.name, "pretrain": w.pretrain, "pretrain_questions": w.n_pretrain,
                  "tasks": w.tasks, "upft_questions": w.n_upft, "test_questions": w.n_test,
                  "vocab_size": w.vocab_size, "instruction_coverage": instruction_coverage(corpus, tok),
                  "steps": len(hist), "final_loss": hist[-1]["loss"],
                  "model_sha256": weights, "seconds": round(time.time() - t0, 1), "torch": torch.__version__,
                  "losses": [h["loss"] for h in hist]}
        if w.continue_from:
            record.update(continue_from=source["build"]["version"], source_sha256=source["build"]["model_sha256"],
                          careful_share=w.careful_share, markers=MARKERS, hasty_ops_per_line=HASTY_OPS_PER_LINE)
        if curve:
            record["accuracy_during_pretraining"] = {"every": eval_every, "questions": 100, "accuracy": curve}
        write_json(tmp / "build.json", record)
    log(f"toy world {w.name!r} ({w.version}) built in {time.time() - t0:.0f}s -> {out_dir}")
    return record
