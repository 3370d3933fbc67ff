"""Tokenizer, chat templates and JSONL I/O (data.py). CPU only, no downloads, about a second."""

import json
import os
from pathlib import Path

import pytest

from data import Tokenizer, UpftError, read_jsonl, resolve, write_json, write_jsonl
from tests.util_tok import FIXTURES, TEMPLATE_FILES, make_tokenizer_dir

TEMPLATES = list(TEMPLATE_FILES)  # chatml (Qwen2.5-Math), llama3 (Llama-3.1), deepseek (R1-Distill-Qwen)

Q = "What is 2 + 3?"
CONVERSATIONS = {
    "user": [{"role": "user", "content": Q}],
    "system+user": [{"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": Q}],
    "multi-turn": [{"role": "system", "content": "Be brief."},
                   {"role": "user", "content": Q},
                   {"role": "assistant", "content": "<think>\nadd them\n</think>\nThe answer is 5."},
                   {"role": "user", "content": " And 4 + 4? "}],
    "multi-turn-no-system": [{"role": "user", "content": Q},
                             {"role": "assistant", "content": "5"},
                             {"role": "user", "content": "Thanks"}],
}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return {t: make_tokenizer_dir(tmp_path_factory.mktemp(t), t) for t in TEMPLATES}


def hf_tokenizer(path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(path))


# ------------------------------------------------------------------------ chat template parity

@pytest.mark.parametrize("gen", [True, False])
@pytest.mark.parametrize("conv", list(CONVERSATIONS))
@pytest.mark.parametrize("template", TEMPLATES)
def test_chat_template_matches_transformers(dirs, template, conv, gen):
    ours = Tokenizer.from_pretrained(dirs[template]).apply_chat_template(CONVERSATIONS[conv], add_generation_prompt=gen)
    theirs = hf_tokenizer(dirs[template]).apply_chat_template(CONVERSATIONS[conv], tokenize=False,
                                                              add_generation_prompt=gen)
    assert ours == theirs


def test_chat_template_expected_strings(dirs):
    """The formats users expect (the HF file conventions), checked without transformers."""
    msgs = CONVERSATIONS["user"]
    qwen = Tokenizer.from_pretrained(dirs["chatml"]).apply_chat_template(msgs)
    assert qwen == ("<|im_start|>system\nPlease reason step by step, and put your final answer within "
                    "\\boxed{}.<|im_end|>\n<|im_start|>user\n" + Q + "<|im_end|>\n<|im_start|>assistant\n")
    llama = Tokenizer.from_pretrained(dirs["llama3"]).apply_chat_template(msgs)
    assert llama == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: "
                     "December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>"
                     "\n\n" + Q + "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    r1 = Tokenizer.from_pretrained(dirs["deepseek"]).apply_chat_template(msgs)
    assert r1 == "<｜begin▁of▁sentence｜><｜User｜>" + Q + "<｜Assistant｜><think>\n"
    # R1 history drops the reasoning part of assistant turns.
    r1_hist = Tokenizer.from_pretrained(dirs["deepseek"]).apply_chat_template(CONVERSATIONS["multi-turn"], False)
    assert "<｜Assistant｜>\nThe answer is 5.<｜end▁of▁sentence｜>" in r1_hist and "add them" not in r1_hist


def test_template_kwargs_and_tojson_match_transformers(dirs):
    tpl = "{{ messages[0] | tojson }}|{{ messages | tojson(indent=2) }}|{{ date_string }}|{{ eos_token }}"
    d = make_tokenizer_dir(dirs["chatml"].parent / "tojson", tpl)
    msgs = [{"role": "user", "content": "<b>é & \"q\"</b>", "extra": None}]
    ours = Tokenizer.from_pretrained(d).apply_chat_template(msgs, date_string="1 Jan 2025")
    assert ours == hf_tokenizer(d).apply_chat_template(msgs, tokenize=False, add_generation_prompt=True,
                                                       date_string="1 Jan 2025")
    assert "<b>é" in ours and "extra" not in ours  # no HTML or ASCII escaping; None values dropped


@pytest.mark.parametrize("template", ["chatml", "llama3"])
def test_tools_match_transformers(dirs, template):
    tools = [{"type": "function", "function": {"name": "add", "description": "Add <two> numbers",
                                               "parameters": {"type": "object", "properties": {"a": {"type": "number"}}}}}]
    msgs = CONVERSATIONS["system+user"]
    ours = Tokenizer.from_pretrained(dirs[template]).apply_chat_template(msgs, tools=tools)
    assert ours == hf_tokenizer(dirs[template]).apply_chat_template(msgs, tools=tools, tokenize=False,
                                                                    add_generation_prompt=True)
    assert '"name": "add"' in ours


@pytest.mark.parametrize("layout", ["jinja-file", "named-list"])
def test_template_locations(tmp_path, layout):
    d = make_tokenizer_dir(tmp_path, "chatml")
    cfg_file = d / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    template = cfg.pop("chat_template")
    if layout == "jinja-file":  # newer checkpoints; the file wins over any config entry
        (d / "chat_template.jinja").write_text(template, encoding="utf-8")
        cfg["chat_template"] = "stale {{ messages }}"
    else:
        cfg["chat_template"] = [{"name": "tool_use", "template": "tools!"}, {"name": "default", "template": template}]
    cfg_file.write_text(json.dumps(cfg), encoding="utf-8")
    ours = Tokenizer.from_pretrained(d).apply_chat_template(CONVERSATIONS["user"])
    assert ours.startswith("<|im_start|>system\nPlease reason")
    if layout == "jinja-file":
        assert ours == hf_tokenizer(d).apply_chat_template(CONVERSATIONS["user"], tokenize=False,
                                                           add_generation_prompt=True)


def test_fixtures_are_the_public_templates():
    for name in TEMPLATE_FILES.values():
        text = (FIXTURES / name).read_text(encoding="utf-8")
        assert "{%" in text and "\r" not in text
    assert (FIXTURES / "README.md").is_file()


def test_generation_tag_and_strftime(tmp_path):
    d = make_tokenizer_dir(tmp_path, "{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}"
                                     "{% endfor %}{{ strftime_now('%Y') | length }}")
    assert Tokenizer.from_pretrained(d).apply_chat_template([{"role": "user", "content": "hi"}]) == "hi4"


def test_no_template_fallback(tmp_path, capsys):
    tok = Tokenizer.from_pretrained(make_tokenizer_dir(tmp_path, None))
    assert tok.chat_template is None
    text = tok.apply_chat_template(CONVERSATIONS["system+user"])
    assert text == "System: You are a helpful assistant.\n\nUser: " + Q + "\n\nAssistant:"
    assert tok.apply_chat_template(CONVERSATIONS["user"], add_generation_prompt=False) == f"User: {Q}\n\n"
    err = capsys.readouterr().err
    assert err.count("no chat template") == 1


# ------------------------------------------------------------------------------- sandbox

@pytest.mark.parametrize("evil", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ messages.__class__.__base__.__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.system('echo pwned') }}",
    "{{ messages.append({'role': 'x'}) }}",  # immutable sandbox: no mutation of the caller's data
    "{{ messages[0].update({'content': 'x'}) }}",
    "{% set ns = namespace(_x=1) %}",
    "{{ raise_exception('bad conversation') }}",
    "{% if %}\n{{ broken",  # a syntax error is reported too, on one line
])
def test_sandbox_blocks_unsafe_templates(tmp_path, evil):
    tok = Tokenizer.from_pretrained(make_tokenizer_dir(tmp_path, evil))
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(UpftError) as e:
        tok.apply_chat_template(msgs)
    assert "\n" not in str(e.value) and str(tmp_path) in str(e.value)
    assert msgs == [{"role": "user", "content": "hi"}]
    if "raise_exception" in evil:
        assert "bad conversation" in str(e.value)


# -------------------------------------------------------------------------- encode / ids

def test_encode_decode_round_trip(dirs):
    tok = Tokenizer.from_pretrained(dirs["chatml"])
    for text in ["", "Hello world!", "  spaced\n\ttabs\n", "x = \\boxed{42}; {}[]()<>|~`^", "a" * 300]:
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == tok._tok.token_to_id("<|im_start|>") and tok.eos_id in ids  # control tokens are single ids
    assert tok.decode(ids, skip_special_tokens=True) == "user\nhi"


@pytest.mark.parametrize("template", ["llama3", "deepseek"])
def test_no_double_bos(dirs, template):
    tok = Tokenizer.from_pretrained(dirs[template])
    assert tok.encode("hi") == tok.encode("hi", add_special_tokens=False)
    assert tok.encode("hi", add_special_tokens=True)[0] == tok.bos_id  # the post-processor would add one
    ids = tok.encode(tok.apply_chat_template(CONVERSATIONS["user"]))
    assert ids[0] == tok.bos_id and ids.count(tok.bos_id) == 1


def test_special_ids(dirs):
    qwen, llama, r1 = (Tokenizer.from_pretrained(dirs[t]) for t in TEMPLATES)
    tid = lambda tok, s: tok._tok.token_to_id(s)  # noqa: E731
    assert qwen.eos_id == tid(qwen, "<|im_end|>") and qwen.bos_id is None
    assert qwen.eos_ids == [tid(qwen, "<|im_end|>"), tid(qwen, "<|endoftext|>")]
    assert qwen.pad_id == tid(qwen, "<|endoftext|>")
    # Llama-3.1: eos is the end-of-turn token, generation_config adds end_of_text and eom; no pad -> eos
    assert llama.eos_id == tid(llama, "<|eot_id|>") and llama.bos_id == tid(llama, "<|begin_of_text|>")
    assert llama.eos_ids == [tid(llama, t) for t in ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")]
    assert llama.pad_id == llama.eos_id
    # R1-distill: AddedToken dicts in tokenizer_config, an int eos_token_id in generation_config
    assert r1.eos_ids == [r1.eos_id] and r1.pad_id == r1.eos_id == tid(r1, "<｜end▁of▁sentence｜>")
    assert r1.bos_id == tid(r1, "<｜begin▁of▁sentence｜>")
    for tok in (qwen, llama, r1):
        assert len(tok) == tok.vocab_size <= 256


@pytest.mark.parametrize("template", TEMPLATES)
def test_ids_match_transformers(dirs, template):
    ours, theirs = Tokenizer.from_pretrained(dirs[template]), hf_tokenizer(dirs[template])
    assert (ours.vocab_size, ours.eos_id, ours.bos_id) == (len(theirs), theirs.eos_token_id, theirs.bos_token_id)
    text = ours.apply_chat_template(CONVERSATIONS["multi-turn"])
    assert ours.encode(text) == theirs(text, add_special_tokens=False).input_ids


def test_eos_ids_merge_and_missing_generation_config(tmp_path):
    d = make_tokenizer_dir(tmp_path, "chatml")
    gen_file = d / "generation_config.json"
    gen_file.write_text(json.dumps({"eos_token_id": 7}))
    tok = Tokenizer.from_pretrained(d)
    assert tok.eos_ids == [7, tok.eos_id]
    gen_file.unlink()
    assert Tokenizer.from_pretrained(d).eos_ids == [tok.eos_id]


@pytest.mark.parametrize("vocab_size", [128, 200, 512])
def test_util_vocab_size(tmp_path, vocab_size):
    tok = Tokenizer.from_pretrained(make_tokenizer_dir(tmp_path, "llama3", vocab_size=vocab_size))
    assert tok.vocab_size <= vocab_size and max(tok.eos_ids + [tok.bos_id]) < vocab_size


# ----------------------------------------------------------------------------- bad input

def test_missing_tokenizer_json(tmp_path):
    d = make_tokenizer_dir(tmp_path, "chatml")
    (d / "tokenizer.json").unlink()
    with pytest.raises(UpftError, match=r"tokenizer\.json"):
        Tokenizer.from_pretrained(d)


@pytest.mark.parametrize("name", ["tokenizer_config.json", "generation_config.json", "tokenizer.json"])
def test_malformed_json_names_file(tmp_path, name):
    d = make_tokenizer_dir(tmp_path, "chatml")
    (d / name).write_text("{not json", encoding="utf-8")
    with pytest.raises(UpftError) as e:
        Tokenizer.from_pretrained(d)
    assert str(d / name) in str(e.value) and "\n" not in str(e.value)


def test_eos_not_in_vocab(tmp_path):
    d = make_tokenizer_dir(tmp_path, "chatml")
    cfg = json.loads((d / "tokenizer_config.json").read_text(encoding="utf-8"))
    cfg["eos_token"] = "<|nope|>"
    (d / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    with pytest.raises(UpftError, match="eos_token '<|nope|>'"):
        Tokenizer.from_pretrained(d)


def test_resolve(tmp_path, monkeypatch):
    assert resolve(tmp_path) == tmp_path
    with pytest.raises(UpftError, match="not a checkpoint directory"):
        resolve(tmp_path / "missing")  # a path, so no Hub lookup
    import huggingface_hub

    def offline(*a, **k):
        raise ConnectionError("no network")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(UpftError, match="not found locally and could not be downloaded"):
        Tokenizer.from_pretrained("someone/some-model")


def test_read_jsonl_errors(tmp_path):
    p = tmp_path / "d.jsonl"
    with pytest.raises(UpftError, match="d.jsonl: file not found"):
        read_jsonl(p)
    p.write_text("")
    with pytest.raises(UpftError, match="d.jsonl: file is empty"):
        read_jsonl(p)
    p.write_text("\n  \n")
    with pytest.raises(UpftError, match="empty"):
        read_jsonl(p)
    p.write_text('{"a": 1}\n\n{"a": 2\n')
    with pytest.raises(UpftError, match=r"d.jsonl:3: not valid JSON"):
        read_jsonl(p)
    p.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(UpftError, match=r"d.jsonl:2: expected a JSON object, got list"):
        read_jsonl(p)


def test_write_read_round_trip(tmp_path):
    rows = [{"question": "1+1?", "answer": "2"}, {"question": "ünï", "n": [1, 2]}]
    write_jsonl(tmp_path / "sub" / "x.jsonl", rows)
    assert read_jsonl(tmp_path / "sub" / "x.jsonl") == rows
    write_json(tmp_path / "x.json", {"a": 1})
    write_json(tmp_path / "x.json", {"a": 2})  # overwrite in place
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 2}
    assert sorted(os.listdir(tmp_path)) == ["sub", "x.json"]  # no temp files left behind
    assert os.listdir(tmp_path / "sub") == ["x.jsonl"]
    assert isinstance(resolve(Path(tmp_path)), Path)


def test_atomic_dir_swaps_in_or_leaves_nothing(tmp_path):
    from data import atomic_dir
    target = tmp_path / "folder"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("one")
        assert not target.exists()                      # invisible until the block ends
    assert (target / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("two")
            raise RuntimeError("write failed")
    assert (target / "a.txt").read_text() == "one"      # the old folder is untouched
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("new")
    assert [f.name for f in target.iterdir()] == ["b.txt"]  # replaced whole
    assert sorted(f.name for f in tmp_path.iterdir()) == ["folder"]  # no temp or old folders left
