"""Tests of the toy world's generator, tokenizer and config (fast, no model training)."""

import hashlib
import json
import random
import re

import pytest

import toy
from data import UpftError, cache_dir

EQ = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")


@pytest.fixture(scope="module")
def train_rows():
    return toy.make_split(400, seed=0, split="train")


@pytest.fixture(scope="module")
def test_rows():
    return toy.make_split(200, seed=0, split="test")


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory, train_rows):
    out = tmp_path_factory.mktemp("toytok")
    toy.train_tokenizer(toy.tokenizer_corpus(train_rows), out)
    return out


def test_deterministic_from_seed():
    a = toy.make_split(50, seed=3, split="train")
    b = toy.make_split(50, seed=3, split="train")
    c = toy.make_split(50, seed=4, split="train")
    assert a == b
    assert a != c
    assert toy.make_split(20, seed=3, split="train") == a[:20]
    r1, r2 = random.Random(7), random.Random(7)
    assert toy.make_problem(r1) == toy.make_problem(r2)


def test_train_test_disjoint(train_rows, test_rows):
    tr = {r["question"] for r in train_rows}
    te = {r["question"] for r in test_rows}
    assert len(tr) == len(train_rows) and len(te) == len(test_rows)  # no duplicates within a split
    assert not tr & te
    assert all(toy.question_split(q) == "test" for q in te)
    assert all(toy.question_split(q) == "train" for q in tr)
    # different seeds of the test split still never hit a train question
    assert not {r["question"] for r in toy.make_split(200, seed=9, split="test")} & tr


def test_bad_split_name():
    with pytest.raises(ValueError):
        toy.make_split(1, split="dev")


def test_solutions_are_correct(train_rows, test_rows):
    for r in train_rows + test_rows:
        sol = r["solution"]
        boxed = re.findall(r"\\boxed\{([^}]*)\}", sol)
        assert boxed == [r["answer"]]
        lines = sol.split("\n")
        assert 3 + 2 <= len(lines) <= 5 + 3  # opener, 3-5 operations, optional hard step, final line
        prev = None
        n_eq = 0
        for line in lines[1:-1]:
            eqs = EQ.findall(line)
            assert eqs, line
            for a, op, b, c in eqs:
                a, b, c = int(a), int(b), int(c)
                if op == "+":
                    assert a + b == c
                elif op == "-":
                    assert a - b == c and c > 0
                elif op == "*":
                    assert a * b == c
                else:
                    assert a % b == 0 and a // b == c
                n_eq += 1
            # the running total continues from the previous line
            last_a, _, _, last_c = eqs[-1]
            if prev is not None:
                assert int(last_a) == prev
            prev = int(last_c)
        assert n_eq >= 3
        assert str(prev) == r["answer"]
        # every number in the question is stated in the solution (opener restates the start)
        start = re.findall(r"\d+", r["question"])[0]
        assert start in lines[0]


def test_surface_variety(train_rows):
    openers = {r["solution"].split(" ")[0] for r in train_rows}
    assert len(openers) > 10
    assert len({r["question"].split(".")[0].split(" ")[-1] for r in train_rows}) > 5


def test_tokenizer_files_and_roundtrip(tok_dir, train_rows):
    from tokenizers import Tokenizer

    tk = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    assert tk.get_vocab_size() <= toy.VOCAB_SIZE
    assert [tk.token_to_id(t) for t in toy.SPECIAL_TOKENS] == [0, 1, 2]
    for r in train_rows[:50]:
        for text in (r["question"], r["solution"]):
            ids = tk.encode(text, add_special_tokens=False).ids
            assert tk.decode(ids, skip_special_tokens=False) == text
    # digits are single tokens, and no token mixes a digit with anything else
    for tok, i in tk.get_vocab().items():
        if any(ch.isdigit() for ch in tok):
            assert len(tok) == 1, tok
    ids = tk.encode("1234567890", add_special_tokens=False).ids
    assert len(ids) == 10
    # unseen text still round-trips (byte-level)
    s = "Ünïcode ✓ and {braces} \\boxed{42}\n\n  tabs\t"
    assert tk.decode(tk.encode(s, add_special_tokens=False).ids) == s
    # special tokens are atomic
    assert tk.encode("<|im_start|>user\nhi<|im_end|>", add_special_tokens=False).ids[0] == 1

    cfg = json.loads((tok_dir / "tokenizer_config.json").read_text())
    assert cfg["eos_token"] == "<|im_end|>" and cfg["pad_token"] == "<|endoftext|>"
    assert cfg["chat_template"] == toy.CHAT_TEMPLATE
    gen = json.loads((tok_dir / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [2, 0]
    assert gen["do_sample"] is True and gen["temperature"] == toy.GEN_TEMPERATURE


def test_chat_template_renders():
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    t = env.from_string(toy.CHAT_TEMPLATE)
    msgs = [{"role": "user", "content": "What is 2 + 3?"}]
    assert t.render(messages=msgs, add_generation_prompt=True) == (
        "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n")
    assert t.render(messages=msgs, add_generation_prompt=False) == "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n"
    msgs2 = [{"role": "system", "content": "Be brief."}, *msgs, {"role": "assistant", "content": "5"}]
    assert t.render(messages=msgs2, add_generation_prompt=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n"
        "<|im_start|>assistant\n5<|im_end|>\n")


def test_model_config():
    cfg = toy.model_config(640)
    assert cfg["model_type"] == "llama" and cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["vocab_size"] == 640 and cfg["torch_dtype"] == "float32"
    assert cfg["hidden_size"] % cfg["num_attention_heads"] == 0
    assert cfg["num_attention_heads"] % cfg["num_key_value_heads"] == 0
    assert cfg["head_dim"] * cfg["num_attention_heads"] == cfg["hidden_size"]
    for k in ("intermediate_size", "num_hidden_layers", "rms_norm_eps", "rope_theta",
              "max_position_embeddings", "tie_word_embeddings", "bos_token_id", "eos_token_id"):
        assert k in cfg


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("UPFT_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("UPFT_CACHE")
    assert cache_dir().name == "upft"


def test_shipped_world_is_what_the_generator_makes():
    world = toy.load_world()
    b = world["build"]
    assert b["version"] == toy.TOY_VERSION and b["steps"] == toy.N_PRETRAIN // toy.PRETRAIN["batch_size"]
    assert len(world["train"]) == toy.N_UPFT and len(world["test"]) == toy.N_TEST
    assert world["test"] == toy.make_split(toy.N_TEST, seed=0, split="test", **toy.HARDER)
    weights = (world["model_dir"] / "model.safetensors").read_bytes()
    assert hashlib.sha256(weights).hexdigest() == b["model_sha256"]
    assert json.loads((world["model_dir"] / "config.json").read_text())["num_hidden_layers"] == 4


def test_missing_world_is_one_line_error(tmp_path):
    with pytest.raises(UpftError, match="no toy world"):
        toy.load_world(tmp_path)


@pytest.mark.slow
def test_partial_rebuild_reproduces_the_shipped_build(tmp_path):
    """Rebuild the world from scratch with train.fit, stopping after 30 pretraining steps: the problems,
    the tokenizer and the config are byte-identical to the shipped ones, and the first 30 losses match
    the shipped build's record (the full rebuild: python scripts/build_toy.py)."""
    from train import TrainConfig, fit
    record = toy.build_world(tmp_path / "w", fit, TrainConfig, max_steps=30, log=lambda *_: None)
    shipped = toy.load_world()["build"]
    for name in ("train.jsonl", "test.jsonl", "model/tokenizer.json", "model/tokenizer_config.json",
                 "model/config.json", "model/generation_config.json"):
        assert (tmp_path / "w" / name).read_bytes() == (toy.WORLD_DIR / name).read_bytes(), name
    assert record["steps"] == 30
    assert record["losses"] == pytest.approx(shipped["losses"][:30], rel=1e-5)
