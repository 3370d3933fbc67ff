"""Tests of the toy world's generator, corpus, tokenizer and config (fast, no model training but the
last test's), and of the gates' computation (scripts/gates.py) on a tiny random model."""

import dataclasses
import hashlib
import json
import random
import re
import sys
from collections import Counter

import pytest
import torch

import toy
from conftest import ROOT
from data import Tokenizer, UpftError, write_jsonl
from fetch_model import cache_dir
from model import Config, Transformer
from upft import PREFIX_INSTRUCTION

sys.path.insert(0, str(ROOT / "scripts"))
import build_toy  # noqa: E402
import gates  # noqa: E402

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
    plain = toy.pretraining_corpus(train_rows, {}, "test")
    toy.train_tokenizer(toy.tokenizer_corpus(plain), out, toy.WORLDS["plain"].vocab_size)
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
    assert tk.get_vocab_size() <= toy.WORLDS["plain"].vocab_size
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


# ----------------------------------------------------------------------------- the instruct world's corpus

INSTRUCT = toy.WORLDS["instruct"]
KINDS = ("first", "two", "answer", "full")


@pytest.fixture(scope="module")
def small_instruct():
    """The instruct recipe with fewer questions: (corpus, UPFT rows, test rows, pretraining rows)."""
    w = dataclasses.replace(INSTRUCT, n_pretrain=3000, n_upft=200, n_test=300)
    corpus, upft_rows, test = toy.world_data(w)
    return corpus, upft_rows, test, toy.make_split(w.n_pretrain, seed=0, split="train")


def instruction_of(e, question):
    """The instruction text of a corpus example and where it stands ("after" or "before" the question)."""
    p = e["prompt"]
    if p.startswith(question + " "):
        return p[len(question) + 1:], "after"
    assert p.endswith(question) and p[-len(question) - 1] in " \n", p
    return p[:-len(question) - 1], "before"


def test_instruct_corpus_is_deterministic_and_disjoint(small_instruct):
    corpus, upft_rows, test, pre = small_instruct
    w = dataclasses.replace(INSTRUCT, n_pretrain=3000, n_upft=200, n_test=300)
    assert toy.world_data(w) == (corpus, upft_rows, test)
    other = toy.pretraining_corpus(pre, INSTRUCT.tasks, "another-key")
    assert other != corpus and Counter(e["kind"] for e in other) == Counter(e["kind"] for e in corpus)
    sets = [{r["question"] for r in rows} for rows in (pre, upft_rows, test)]
    assert [len(s) for s in sets] == [3000, 200, 300]
    assert not sets[0] & sets[1] and not sets[0] & sets[2] and not sets[1] & sets[2]
    # the held-out questions are toy-v4's (same generator stream): its 500 are the first 500 of the 2,000
    assert toy.make_split(2000, seed=0, split="test", **toy.HARDER)[:300] == test


def test_mix_and_paraphrases(small_instruct):
    corpus, _, _, pre = small_instruct
    counts = Counter(e["kind"] for e in corpus)
    for kind, share in INSTRUCT.tasks.items():
        assert counts[kind] == round(share * len(corpus))
    assert counts["plain"] == len(corpus) - sum(counts[k] for k in KINDS) and counts["plain"] / len(corpus) >= 0.5
    for kind in KINDS:
        found = [instruction_of(e, r["question"]) for e, r in zip(corpus, pre) if e["kind"] == kind]
        texts = Counter(t for t, _ in found)
        requests = {next(q for q in toy.INSTRUCTIONS[kind][0] if t.startswith(q)) for t in texts}
        assert len(requests) >= 5, (kind, requests)            # several wordings of each kind ...
        assert len(texts) >= 10                                  # ... with and without remarks
        assert {where for _, where in found} == {"after", "before"}
        assert max(texts.values()) < 0.2 * len(found)           # no wording dominates


def test_targets_of_each_kind(small_instruct):
    corpus, _, _, pre = small_instruct
    for e, r in zip(corpus, pre):
        lines = r["solution"].split("\n")
        want = {"plain": r["solution"], "full": r["solution"], "first": "\n".join(lines[:2]), "two": "\n".join(lines[:3]),
                "answer": f"The answer is \\boxed{{{r['answer']}}}."}[e["kind"]]
        assert e["target"] == want
        if e["kind"] == "plain":
            assert e["prompt"] == r["question"]
        else:
            text, _ = instruction_of(e, r["question"])
            request = next(q for q in toy.INSTRUCTIONS[e["kind"]][0] if text.startswith(q))
            assert text == request or text[len(request) + 1:] in toy.INSTRUCTIONS[e["kind"]][1]


def test_no_four_words_of_the_upft_instruction_in_the_corpus(small_instruct):
    """The vocabulary rule (toy.py's docstring), on every wording the corpus can produce, in both
    placements, and on the corpus itself (the build checks its whole corpus too: toy.world_data)."""
    assert len(toy.instruction_ngrams(PREFIX_INSTRUCTION)) == 20  # 23 words: the check sees all 20 runs
    assert toy.instruction_ngrams("So it may SERVE as, a start.") == {"may serve as a"}
    assert PREFIX_INSTRUCTION.strip() not in "".join(e["prompt"] for e in small_instruct[0])
    q = "Mia has 3 apples. How many apples does Mia have now?"
    for requests, remarks in toy.INSTRUCTIONS.values():
        for r in requests:
            for text in [r] + [r + " " + m for m in remarks]:
                for prompt in (q + " " + text, text + " " + q, text + "\n" + q):
                    assert not toy.instruction_ngrams(prompt), prompt
    for e in small_instruct[0]:
        assert not toy.instruction_ngrams(e["prompt"] + "\n" + e["target"])


def test_instruction_words_and_tokens_are_in_the_corpus(small_instruct, tmp_path):
    """Every word of the UPFT instruction occurs in the corpus (in other sentences), and, with the
    tokenizer trained on it, every token of the instruction occurs in it; the instruction is no longer
    spelled in single letters. Prints the coverage (pytest -s)."""
    corpus = small_instruct[0]
    toy.train_tokenizer(toy.tokenizer_corpus(corpus), tmp_path, INSTRUCT.vocab_size)
    cov = toy.instruction_coverage(corpus, Tokenizer.from_pretrained(tmp_path))
    print(json.dumps(cov))
    assert cov["words_absent"] == [] and len(cov["words_in_corpus"]) == 20
    assert cov["unseen_tokens"] == [] and min(cov["token_counts"]) >= 10
    assert len(cov["tokens"]) <= 40  # toy-v4's tokenizer: 91 tokens, most of them single bytes


def test_plain_world_is_toy_v4_byte_for_byte(tmp_path):
    """world="plain" reproduces toy-v4's problems, splits and tokenizer (sha256 of the files toy-v4
    shipped; byte for byte against assets/toy while it is still toy-v4)."""
    w = toy.WORLDS["plain"]
    assert (w.version, w.n_pretrain, w.n_test, w.vocab_size) == ("toy-v4", 32_000, 500, 640)
    corpus, upft_rows, test = toy.world_data(w)
    assert {e["kind"] for e in corpus} == {"plain"}
    toy.train_tokenizer(toy.tokenizer_corpus(corpus), tmp_path / "model", w.vocab_size)
    write_jsonl(tmp_path / "train.jsonl", upft_rows)
    write_jsonl(tmp_path / "test.jsonl", test)
    toy_v4 = {"model/tokenizer.json": "3db97476d968cfe4c47345bf4e34df32ace4abf3865329441c5ef1fea0f0bd57",
              "model/tokenizer_config.json": "7ef27ca4acb8569ed5eb7e77d9e9e8ebdeb08a14008dfbf3fce048f09f35f35b",
              "model/generation_config.json": "be74fb015b989a6d218a7ed9637a9c3af76ea35aff042f291f93acd3555af3f4",
              "train.jsonl": "26f6ae96478f6fac048153c2dfdf3320cc8aeb29fbe2e778995cbc85d1c602a0",
              "test.jsonl": "79226a67dfa1025bacae03c7a42d8d9fe0eb5ec1fc0eb104431847de8c3306d6"}
    shipped_v4 = toy.load_world()["build"]["version"] == "toy-v4"
    for name, digest in toy_v4.items():
        data = (tmp_path / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest, name
        if shipped_v4:
            assert data == (toy.WORLD_DIR / name).read_bytes(), name


def test_world_of_build_records():
    assert toy.world_of({"version": "toy-v4"}).name == "plain"  # toy-v4's record names no world
    assert toy.world_of({"version": toy.TOY_VERSION, "world": toy.DEFAULT_WORLD}) == toy.WORLDS[toy.DEFAULT_WORLD]
    assert toy.DEFAULT_WORLD == "instruct" and toy.TOY_VERSION == "toy-v5"
    with pytest.raises(UpftError, match="toy-v0"):
        toy.world_of({"version": "toy-v0"})


def test_gate_figures_on_a_tiny_random_model(tok_dir, test_rows):
    """The gates' computation runs and returns every figure (no threshold: the model is random)."""
    tok = Tokenizer.from_pretrained(tok_dir)
    cfg = dict(toy.model_config(len(tok)), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
               num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    torch.manual_seed(0)
    model = Transformer(Config.from_dict(cfg)).init_weights(0.02).eval()
    f = gates.gate_figures(model, tok, test_rows[:6], max_new_tokens=12, batch_size=4)
    assert f["questions"] == 6 and f["opening"]["tokens"] == gates.OPENING_TOKENS
    assert f["opening"]["temperature"] == toy.GEN_TEMPERATURE and f["opening"]["top_p"] == toy.GEN_TOP_P
    assert f["opening"]["nll_plain"] > 0 and f["opening"]["nll_instructed"] > 0
    for k in ("accuracy", "mean_tokens", "stops_after_first_line", "stops_after_first_step", "first_line_as_plain", "no_answer"):
        assert 0 <= f["instructed"][k] <= (12 if k == "mean_tokens" else 1)
    assert set(f["gates"]) == {"opening", "accuracy"} and all(isinstance(g["ok"], bool) for g in f["gates"].values())
    assert "gate opening" in gates.report(f)
    # the same openings under the same prompt cost the same whatever the batch
    o = [[5, 6, 7], [8]]
    qs = [r["question"] for r in test_rows[:2]]
    one = [gates.opening_nll(model, tok, [q], [x], "", 1) for q, x in zip(qs, o)]
    assert gates.opening_nll(model, tok, qs, o, "", 2) == pytest.approx((3 * one[0] + one[1]) / 4, rel=1e-5)


def test_miniature_instruct_build_and_the_gates_command(tmp_path, capsys):
    """build_world end to end on a miniature instruct world (64 examples, 2 steps), then the gates'
    one command on it: it prints the gates, writes gates.json and exits 0 or 1."""
    from train import TrainConfig, fit
    rec = toy.build_world(tmp_path / "w", fit, TrainConfig, max_steps=2, log=lambda *_: None,
                          n_pretrain=64, n_upft=8, n_test=6)
    assert rec["world"] == "instruct" and rec["version"] == toy.TOY_VERSION and rec["steps"] == 2
    assert rec["tasks"] == INSTRUCT.tasks and rec["instruction_coverage"]["tokens"]
    world = toy.load_world(tmp_path / "w")
    assert len(world["train"]) == 8 and len(world["test"]) == 6 and toy.world_of(world["build"]) == INSTRUCT
    # accuracy during pretraining (--eval-every) changes nothing of the build
    again = toy.build_world(tmp_path / "e", fit, TrainConfig, max_steps=2, eval_every=1, log=lambda *_: None,
                            n_pretrain=64, n_upft=8, n_test=6)
    assert again["model_sha256"] == rec["model_sha256"] and again["losses"] == rec["losses"]
    assert len(again["accuracy_during_pretraining"]["accuracy"]) == 3  # before step 1, after steps 1 and 2
    assert gates.main(["--world", str(tmp_path / "w"), "--limit", "3", "--max-new-tokens", "16"]) in (0, 1)
    assert "gate opening" in capsys.readouterr().out
    figures = json.loads((tmp_path / "w" / "gates.json").read_text())
    assert figures["questions"] == 3 and figures["version"] == toy.TOY_VERSION


def test_shipped_world_is_what_the_generator_makes():
    world = toy.load_world()
    b = world["build"]
    w = toy.world_of(b)  # the plain toy-v4 world, or the instruct one, whichever ships
    assert b["version"] == w.version and b["steps"] == w.n_pretrain // w.pretrain["batch_size"]
    assert len(world["train"]) == w.n_upft and len(world["test"]) == w.n_test
    assert world["test"] == toy.make_split(w.n_test, seed=0, split="test", **toy.HARDER)
    weights = (world["model_dir"] / "model.safetensors").read_bytes()
    assert hashlib.sha256(weights).hexdigest() == b["model_sha256"]
    cfg = json.loads((world["model_dir"] / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 4 and cfg["hidden_size"] == 128 and cfg["vocab_size"] <= w.vocab_size


def test_missing_world_is_one_line_error(tmp_path):
    with pytest.raises(UpftError, match="no toy world"):
        toy.load_world(tmp_path)


def test_build_toy_bad_out_is_one_line_before_any_work(tmp_path, capsys):
    """An --out that cannot be made (under /proc, under a file) or must not be replaced (a folder that is
    not a toy world): one line, exit 2, before any world is generated, and nothing touched."""
    import subprocess
    import time
    t = time.time()  # the command as a user types it
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_toy.py"), "--out", "/proc/nope/toy"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr == "error: --out /proc/nope/toy: cannot write in /proc (No such file or " \
                                             "directory)\n", r.stderr
    assert time.time() - t < 60  # seconds of start-up, not the minutes of a build
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    for out, msg in ((tmp_path / "a_file" / "toy", "is not a folder"), (tmp_path / "mine", "is not a toy world")):
        assert build_toy.main(["--out", str(out), "--max-steps", "1"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --out {out}: ") and msg in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "mine"]
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_build_toy_full_disk_leaves_nothing(tmp_path, monkeypatch, capsys):
    """A write that fails inside the build (a full disk, after the first file): one line naming it,
    exit 1, and neither --out nor the folder it was built in is left."""
    real = toy.build_world
    monkeypatch.setattr(toy, "build_world", lambda *a, **kw: real(*a, **kw, n_pretrain=16, n_upft=4, n_test=4))

    def full_disk(corpus, out, vocab_size):
        out.mkdir(parents=True)
        (out / "tokenizer.json").write_text("{")
        raise OSError(28, "No space left on device", str(out / "tokenizer.json"))
    monkeypatch.setattr(toy, "train_tokenizer", full_disk)
    assert build_toy.main(["--out", str(tmp_path / "w"), "--max-steps", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "tokenizer.json: No space left on device; nothing was written" in err
    assert len(err.strip().splitlines()) == 1 and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_partial_rebuild_reproduces_the_shipped_build(tmp_path):
    """Rebuild the shipped world (whichever world it is) from scratch with train.fit, stopping after 30
    pretraining steps: the problems, the tokenizer and the config are byte-identical to the shipped ones,
    and the first 30 losses match the shipped build's record (the full rebuild: python scripts/build_toy.py)."""
    from train import TrainConfig, fit
    shipped = toy.load_world()["build"]
    world = toy.world_of(shipped).name
    record = toy.build_world(tmp_path / "w", fit, TrainConfig, world=world, max_steps=30, log=lambda *_: None)
    for name in ("train.jsonl", "test.jsonl", "model/tokenizer.json", "model/tokenizer_config.json",
                 "model/config.json", "model/generation_config.json"):
        assert (tmp_path / "w" / name).read_bytes() == (toy.WORLD_DIR / name).read_bytes(), name
    assert record["steps"] == 30 and record["version"] == shipped["version"]
    assert record["losses"] == pytest.approx(shipped["losses"][:30], rel=1e-5)


def test_the_shipped_world_passes_its_gates():
    """The gates (scripts/gates.py) hold on the shipped model, recomputed here on the first 200 held-out
    questions; the shipped record (gates.json, the first 500) says they held there too."""
    world = toy.load_world()
    tok, model = Tokenizer.from_pretrained(world["model_dir"]), Transformer.from_pretrained(world["model_dir"])
    f = gates.gate_figures(model, tok, world["test"][:200])
    assert f["gates"]["opening"]["ok"] and f["gates"]["accuracy"]["ok"], gates.report(f)
    assert f["opening"]["nll_instructed"] <= gates.MAX_OPENING_NLL
    shipped = json.loads((toy.WORLD_DIR / "gates.json").read_text())
    assert shipped["questions"] == 500 and all(g["ok"] for g in shipped["gates"].values())


@pytest.mark.parametrize("name", ["decision", "mirror"])
def test_the_decision_worlds_pass_their_gates(name):
    """The decision worlds (docs/experiments.md §2) as shipped: their own gates recomputed on the first 200
    held-out questions (forced-opener gap, the careful opener's share under both prompts; the instruct
    gates use the code test_the_shipped_world_passes_its_gates checks), and the shipped record (gates.json,
    the first 500) says every gate held there, the instruct gates included."""
    folder = toy.WORLD_DIRS[name]
    world = toy.load_world(folder)
    assert world["build"]["world"] == name and world["build"]["continue_from"] == toy.TOY_VERSION
    tok, model = Tokenizer.from_pretrained(world["model_dir"]), Transformer.from_pretrained(world["model_dir"])
    rows = world["test"][:200]
    d = gates.decision_figures(model, tok, rows, name)
    assert all(g["ok"] for g in d["gates"].values()), d["gates"]
    shipped = json.loads((folder / "gates.json").read_text())
    assert shipped["questions"] == 500 and shipped["version"] == world["build"]["version"]
    assert all(g["ok"] for g in [*shipped["gates"].values(), *shipped["decision"]["gates"].values()])


def test_decision_forms_say_the_same_problem():
    """Both forms of a solution hold the same equations in the same order and the same answer line; the
    marker is the first line and opener_of reads it back; the first step of each form (target_of) is the
    marker, the opening line and the first line of working."""
    for row in toy.make_split(50, seed=0, split="test", **toy.HARDER):
        careful, hasty = (toy.decision_solution(row, f) for f in ("careful", "hasty"))
        eq = lambda s: toy._EQUATION.findall(s)  # noqa: E731
        assert eq(careful) == eq(hasty) == eq(row["solution"]) and careful.split("\n")[-1] == hasty.split("\n")[-1]
        assert toy.opener_of(careful) == "careful" and toy.opener_of(hasty) == "hasty" and toy.opener_of(row["solution"]) is None
        for form, text in (("careful", careful), ("hasty", hasty)):
            lines = text.split("\n")
            assert toy.target_of({**row, "solution": text}, "first") == "\n".join(lines[:3])
    rows = toy.decision_rows(toy.make_split(400, seed=0, split="train"), 0.6, "k")
    share = sum(toy.opener_of(r["solution"]) == "careful" for r in rows) / len(rows)
    assert 0.55 < share < 0.65 and rows == toy.decision_rows(toy.make_split(400, seed=0, split="train"), 0.6, "k")
