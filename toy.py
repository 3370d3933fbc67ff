"""The embedded toy world: synthetic arithmetic word problems, a tokenizer and a tiny Llama config.

`python train.py` without `--model` needs something to fine-tune that can be built offline in a few
minutes on a CPU. This module provides the pieces of that "toy world":

* a generator of grade-school style word problems (3-5 operations on a running count, step-by-step
  solutions that end in ``\\boxed{N}``), deterministic from a seed, with disjoint train/test splits;
* a byte-level BPE tokenizer trained with the ``tokenizers`` library (digits split one per token,
  ChatML special tokens and chat template like Qwen), written as HF-style tokenizer files;
* the ``config.json`` dict of a small Llama-architecture model.

It is meant as a small analogue of the paper's preconditions (docs/method.md §1): samples of one question
share their opening (the solution first restates the problem), and mistakes tend to come late (carries
in the larger running totals of later steps). Nothing here is tuned to make UPFT win.

The built world (model + question files) ships in assets/toy; `load_world` reads it, and
`build_world` rebuilds it with the trainer passed in (scripts/build_toy.py passes train.fit).
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

from data import Tokenizer, UpftError, atomic_dir, read_jsonl, write_json, write_jsonl
from model import Config, Transformer
from upft import make_example

TOY_VERSION = "toy-v4"  # bump whenever the generator, tokenizer or model config changes (keys the cache)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2
VOCAB_SIZE = 640

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
    rng = random.Random(f"upft-toy/{TOY_VERSION}/{seed}/{split}")
    rows, seen = [], set()
    while len(rows) < n:
        p = make_problem(rng, **kw)
        if p["question"] in seen or question_split(p["question"]) != split:
            continue
        seen.add(p["question"])
        rows.append(p)
    return rows


# --------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------

# Qwen2's pre-tokenizer regex: digits one at a time (\p{N} without +), words with a leading space.
_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def train_tokenizer(texts, out_dir, vocab_size: int = VOCAB_SIZE) -> Path:
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


def tokenizer_corpus(rows) -> list[str]:
    """Texts to train the tokenizer on: questions, solutions and the chat scaffolding."""
    texts = []
    for r in rows:
        texts.append(r["question"])
        texts.append(r["solution"])
    texts.append("user\nassistant\nsystem\n")
    return texts


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------

def model_config(vocab_size: int = VOCAB_SIZE) -> dict:
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
        "vocab_size": vocab_size,
        "tie_word_embeddings": True,
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "bos_token_id": 0,  # <|endoftext|> (never prepended: the chat template has no BOS)
        "eos_token_id": 2,  # <|im_end|>
        "pad_token_id": 0,
        "torch_dtype": "float32",
    }


# The built world ships with the code (assets/toy: the model in HF layout, ~3.5 MB, and its question
# files), so the first `python train.py` needs no pretraining. scripts/build_toy.py rebuilds it with
# build_world below and checks the result against the shipped one.
WORLD_DIR = Path(__file__).resolve().parent / "assets" / "toy"

# Settings measured with a transformers LlamaForCausalLM stand-in (fp32, 2 CPU threads, uncontended):
# 1300 steps in ~258 s, final train loss ~0.08, greedy accuracy 49% on 300 held-out problems.
N_PRETRAIN = 32_000       # gold solutions the toy model is pretrained on (2000 steps of 16, one epoch)
# The questions UPFT trains on and the held-out test questions take 4-6 steps, one more than the model
# was pretrained on at the top end: harder than its training data, as MATH500/AIME are for the paper's
# models. In distribution (3-5 steps) the toy model is right ~84% of the time; on 4-6 steps ~55%, with
# the errors in the late steps. That leaves headroom without making the model worse on purpose.
HARDER = dict(min_ops=4, max_ops=6)
N_UPFT = 2_000            # fresh train-split questions for UPFT/SFT/RFT (never seen in pretraining)
N_TEST = 500              # held-out questions for base/tuned accuracy
# Pretraining settings found by experiment (2-core CPU, ~6 min): accuracy jumps once the model learns
# to copy names and numbers from the question (~900 steps), so fewer steps collapse it.
PRETRAIN = dict(lr=4e-3, epochs=1, batch_size=16, micro_batch_size=16, warmup_ratio=0.02,
                schedule="cosine", seed=0)


def load_world(path=WORLD_DIR) -> dict:
    """The shipped toy world: {"dir", "model_dir", "train", "test", "build"}."""
    path = Path(path)
    if not (path / "build.json").is_file():
        raise UpftError(f"{path}: no toy world here (rebuild it with: python scripts/build_toy.py)")
    return {"dir": path, "model_dir": path / "model", "train": read_jsonl(path / "train.jsonl"),
            "test": read_jsonl(path / "test.jsonl"), "build": json.loads((path / "build.json").read_text())}


def build_world(out_dir, fit, train_config, max_steps=None, log=print) -> dict:
    """Build the toy world into `out_dir` (atomically) and return its build record.

    `fit(model, examples, tc, pad_id=..., desc=..., log=...)` is the trainer (train.fit, passed in so that
    the toy world does not depend on the trainer): pretraining is the project's own masked cross-entropy
    loop run on gold solutions, chat prompt masked, the same code path UPFT trains with. `train_config`
    builds its config from PRETRAIN (train.TrainConfig). max_steps stops early (a partial rebuild for
    the tests; the schedule still spans all steps). The record holds every step's loss and the sha256
    of the weights, so a rebuild can be compared with the shipped world.
    """
    t0 = time.time()
    pre = make_split(N_PRETRAIN, seed=0, split="train")  # 3-5 steps: what the model learns from
    seen = {r["question"] for r in pre}
    upft_rows = [r for r in make_split(N_UPFT + 100, seed=1, split="train", **HARDER)
                 if r["question"] not in seen][:N_UPFT]
    test = make_split(N_TEST, seed=0, split="test", **HARDER)
    with atomic_dir(out_dir) as tmp:
        train_tokenizer(tokenizer_corpus(pre), tmp / "tokenizer")
        tok = Tokenizer.from_pretrained(tmp / "tokenizer")
        torch.manual_seed(PRETRAIN["seed"])
        model = Transformer(Config.from_dict(model_config(len(tok)))).init_weights(0.02)
        examples = [make_example(tok, r["question"], tok.encode(r["solution"]), "full", prefix_len=0)
                    for r in pre]
        tc = train_config(**PRETRAIN, max_steps=max_steps)
        hist = fit(model, examples, tc, pad_id=tok.pad_id, desc="pretrain toy", log=log)
        model.save_pretrained(tmp / "model", tokenizer_dir=tmp / "tokenizer")
        shutil.rmtree(tmp / "tokenizer")
        write_jsonl(tmp / "train.jsonl", upft_rows)
        write_jsonl(tmp / "test.jsonl", test)
        weights = hashlib.sha256((tmp / "model" / "model.safetensors").read_bytes()).hexdigest()
        record = {"version": TOY_VERSION, "pretrain": PRETRAIN, "pretrain_questions": N_PRETRAIN,
                  "steps": len(hist), "final_loss": hist[-1]["loss"], "model_sha256": weights,
                  "seconds": round(time.time() - t0, 1), "torch": torch.__version__,
                  "losses": [h["loss"] for h in hist]}
        write_json(tmp / "build.json", record)
    log(f"toy world built in {time.time() - t0:.0f}s -> {out_dir}")
    return record
