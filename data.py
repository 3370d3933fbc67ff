"""What the model sees and what files hold. Files: read_jsonl, write_jsonl / write_json and atomic_dir (atomic:
a crash never leaves half a file or folder), load_rows (question/answer JSONL, one place for field names and their
errors). Prompts: Tokenizer (the checkpoint's tokenizer.json through the Rust `tokenizers` library, and its own chat
template rendered in jinja2's sandbox exactly as transformers does), chat_prompt, sampling_filters, IGNORE.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from contextlib import contextmanager
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import jinja2
import jinja2.ext
import jinja2.nodes
import tokenizers
from jinja2.sandbox import ImmutableSandboxedEnvironment

IGNORE = -100  # label of a position that is not trained (the torch / Hugging Face convention)
TOY_WORLD = Path(__file__).resolve().parent / "assets" / "toy"  # the toy world: model/, train.jsonl, test.jsonl
HUB_PATTERNS = ["*.json", "*.jinja", "*.safetensors"]  # what resolve downloads: configs, tokenizer, weights (+ index)
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json")  # copied along when a model or tokenizer is saved


def supervised_count(labels) -> int:
    """The tokens an example trains: labels after the first (position t predicts labels[t + 1], so
    labels[0] is never a target) that are not IGNORE. The one count of supervised tokens in upft."""
    return sum(1 for t in labels[1:] if t != IGNORE)


class UpftError(Exception):
    """A user-facing error: one line naming the file and the problem (CLIs print `error: msg`, exit 2)."""
    exit_code = 2


def require(ok, message):
    """A failed check of the input: UpftError(message), one line (`error: message`, exit 2)."""
    if not ok:
        raise UpftError(message)


class UpftFault(UpftError):
    """The machine, not the input (a full disk, a permission): one line naming the file and what was kept; exit 1."""
    exit_code = 1


# ----------------------------------------------------------------------------------------- files
def read_jsonl(path) -> list[dict]:
    """Read a JSONL file into a list of dicts. Blank lines are skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UpftError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UpftError(f"{path}: cannot read ({e})") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UpftError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        require(isinstance(row, dict), f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    require(rows, f"{path}: file is empty")
    return rows


def umask() -> int:
    """The process's umask now (Linux: /proc/self/status; elsewhere set and put back at once)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, ValueError, IndexError, StopIteration):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def _atomic_write(path, text: str) -> None:
    # Write next to the target and rename, so a crash never leaves a half-written file behind.
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes it private; the result should look like any new file
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path, rows) -> None:
    _atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def write_json(path, obj) -> None:
    _atomic_write(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


@contextmanager
def atomic_dir(path):
    """Build a folder atomically: yields an empty temporary sibling of `path`, which replaces `path` when the block
    ends (a reader sees the old folder or the new one, never half of one) and is deleted on an exception."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes it private; the result should look like any new folder
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_rows(path, limit=None, require_answer=True) -> list[dict]:
    """Question/answer JSONL -> [{"question", "gold", "dataset"}], for training and evaluation alike. question:
    `question` or `problem`; gold: `answer` (GSM8K's `#### n` -> n, else the value as a string) or `expected_answer`
    (MATH500); dataset "gsm8k" for `####` answers. A row without a question, or without an answer when
    require_answer (else gold None), raises UpftError naming the file and line."""
    require(limit is None or limit >= 1, f"limit must be a positive number of rows, got {limit}")
    out = []
    for i, row in enumerate(read_jsonl(path)[:limit]):
        question = next((row[k] for k in ("question", "problem") if row.get(k) is not None), None)
        answer = next((row[k] for k in ("answer", "expected_answer") if row.get(k) is not None), None)
        gsm8k = isinstance(answer, str) and "####" in answer
        gold = str(answer).rsplit("####", 1)[-1].strip().replace(",", "") if gsm8k else str(answer).strip()
        if answer is None and not require_answer:
            gold = None
        missing = ("'question' (or 'problem')" if not isinstance(question, str) or not question.strip()
                   else "'answer' (or 'expected_answer')" if gold == "" or (answer is None and require_answer)
                   else None)
        if missing:   # read_jsonl skips blank lines, so count them again to name the real line
            with open(path, encoding="utf-8") as f:
                line = [n for n, text in enumerate(f, 1) if text.strip()][i]
            raise UpftError(f"{path}:{line}: row has no {missing} (keys: {', '.join(row) or 'none'})")
        out.append({"question": question, "gold": gold, "dataset": "gsm8k" if gsm8k else None})
    return out


def _read_json(path: Path) -> dict:
    """Read an optional JSON config file: {} if absent, UpftError if present but broken."""
    if not path.is_file():
        return {}
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UpftError(f"{path}: not valid JSON ({e})") from None
    require(isinstance(obj, dict), f"{path}: expected a JSON object")
    return obj


def resolve(path_or_id) -> Path:
    """A local checkpoint directory, or a Hugging Face Hub id downloaded (or found in the cache)."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    require(not path.exists() and not str(path_or_id).startswith(("/", ".", "~")),
            f"{path_or_id}: not a checkpoint directory")
    try:  # optional, and only for hub ids: a local folder never touches the network code
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(str(path_or_id), allow_patterns=HUB_PATTERNS))
    except Exception as e:  # offline, unknown repo, gated, bad id: all end the same way for a user
        raise UpftError(f"{path_or_id}: not found locally and could not be downloaded from the "
                        f"Hugging Face Hub ({type(e).__name__})") from None


# ----------------------------------------------------------------------------------- chat template
class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (training templates mark assistant text with it): no-op."""
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


class _Namespace(jinja2.utils.Namespace):
    # As transformers: no underscore attributes on namespace() objects (a sandbox-escape hardening).
    def __init__(*args, **kwargs):
        self, attrs = args[0], dict(*args[1:], **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} is not allowed")


class _Dict:
    # As transformers: `dict(...)` and `dict.fromkeys(...)` without exposing the dict type itself.
    __call__ = staticmethod(dict)
    fromkeys = staticmethod(dict.fromkeys)


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


@lru_cache
def _compile_template(source: str) -> jinja2.Template:
    # The environment of transformers' chat_template_utils: templates from downloaded checkpoints are
    # untrusted code, hence the immutable sandbox; tojson does not HTML-escape (Jinja's own does).
    if tuple(int(x) for x in re.findall(r"\d+", jinja2.__version__)[:3]) < (3, 1, 6):
        raise UpftError(f"jinja2 {jinja2.__version__} has known sandbox escapes; install jinja2>=3.1.6")
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, sort_keys=False: \
        json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    env.globals.update(raise_exception=_raise_exception, namespace=_Namespace,
                       strftime_now=lambda fmt: datetime.now().strftime(fmt), dict=_Dict())
    return env.from_string(source)


# --------------------------------------------------------------------------------------- tokenizer
def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]  # UpftError messages are one line


def _token_str(value):
    return value.get("content") if isinstance(value, dict) else value  # AddedToken dicts hold "content"


class Tokenizer:
    """tokenizer.json + tokenizer_config.json + generation_config.json of a checkpoint directory."""

    @classmethod
    def from_pretrained(cls, path_or_id) -> "Tokenizer":
        source = resolve(path_or_id)
        file = source / "tokenizer.json"
        require(file.is_file(), f"{file}: not found (upft needs a fast-tokenizer tokenizer.json)")
        try:
            tok = tokenizers.Tokenizer.from_file(str(file))
        except Exception as e:
            raise UpftError(f"{file}: cannot be loaded ({_first_line(e)})") from None
        return cls(tok, source)

    def __init__(self, tok, source: Path):
        self._tok, self.source_dir = tok, Path(source)
        config_file = self.source_dir / "tokenizer_config.json"
        config = {**_read_json(self.source_dir / "special_tokens_map.json"), **_read_json(config_file)}
        gen = self.generation_config = _read_json(self.source_dir / "generation_config.json")
        # Same sources and priority as transformers: chat_template.jinja beats the config entry, and a
        # list of named templates means "default".
        template = config.get("chat_template")
        if isinstance(template, list):
            template = {t.get("name"): t.get("template") for t in template}.get("default")
        if (self.source_dir / "chat_template.jinja").is_file():
            template = (self.source_dir / "chat_template.jinja").read_text(encoding="utf-8")
        self.chat_template: str | None = template
        self.special_tokens = {k: _token_str(config[k]) for k in SPECIAL_TOKENS if _token_str(config.get(k))}

        def token_id(name):
            text = self.special_tokens.get(name)
            if text is None:
                return None
            if (i := tok.token_to_id(text)) is None:
                raise UpftError(f"{config_file}: {name} {text!r} is not in tokenizer.json")
            return i

        gen_eos = gen.get("eos_token_id")
        gen_eos = [gen_eos] if isinstance(gen_eos, int) else list(gen_eos or [])
        self.bos_id: int | None = token_id("bos_token")
        # eos_token is the end-of-turn token (Llama-3.1: <|eot_id|>, not <|end_of_text|>).
        self.eos_id: int = token_id("eos_token") if "eos_token" in self.special_tokens else (gen_eos or [None])[0]
        require(self.eos_id is not None, f"{config_file}: no eos_token (and no eos_token_id in generation_config.json)")
        self.special_tokens.setdefault("eos_token", tok.id_to_token(self.eos_id))
        # Stop ids: everything generation_config lists, plus eos (vLLM does the same merge).
        self.eos_ids: list[int] = list(dict.fromkeys(gen_eos + [self.eos_id]))
        self.pad_id: int = token_id("pad_token") if "pad_token" in self.special_tokens else self.eos_id
        self.vocab_size: int = tok.get_vocab_size(with_added_tokens=True)
        self._warned = False

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        # Off by default: rendered chat templates already start with BOS, and the Llama-3 / R1 post-
        # processors would add a second one (a classic silent bug).
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> str:
        """Render `messages` ([{"role", "content"}, ...]) with the checkpoint's chat template: the string of
        transformers' `apply_chat_template(..., tokenize=False)`; extra keyword arguments become template
        variables (e.g. `date_string`, `enable_thinking`). Without a chat template (base checkpoints such as
        Llama-3.1-8B), a plain format and a warning printed once: bos_token + "System: ...\\n\\n" +
        "User: ...\\n\\n" + "Assistant: ...\\n\\n" (a block per message) + "Assistant:" if add_generation_prompt."""
        messages = [{k: v for k, v in m.items() if v is not None} for m in messages]  # as transformers
        if self.chat_template is None:
            if not self._warned:
                print(f"warning: {self.source_dir} has no chat template; using plain 'User:/Assistant:' "
                      f"prompts", file=sys.stderr)
                self._warned = True
            turns = "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in messages)
            return self.special_tokens.get("bos_token", "") + turns + ("Assistant:" if add_generation_prompt else "")
        where = f"{self.source_dir}: chat template"
        try:
            template = _compile_template(self.chat_template)
            variables = {"tools": None, "documents": None, **self.special_tokens, **kwargs}
            return template.render(messages=messages, add_generation_prompt=add_generation_prompt, **variables)
        except jinja2.exceptions.SecurityError as e:
            raise UpftError(f"{where} tried an unsafe operation and was stopped ({_first_line(e)})") from None
        except jinja2.TemplateError as e:
            line = f" (line {e.lineno})" if getattr(e, "lineno", None) else ""
            raise UpftError(f"{where}{line}: {type(e).__name__}: {_first_line(e)}") from None


def chat_prompt(tok: Tokenizer, question: str, instruction: str = "") -> list[int]:
    """Token ids of the chat prompt for one user turn (question + instruction), ending with the
    assistant header. UPFT's prefix examples pass the prefix instruction; everything else passes none."""
    return tok.encode(tok.apply_chat_template([{"role": "user", "content": question + instruction}],
                                              add_generation_prompt=True))


def sampling_filters(tok: Tokenizer, top_p=None, top_k=None) -> tuple:
    """(top_p, top_k) to sample with: the ones given, else the checkpoint's generation_config.json's, else none
    (top-p 1.0, top-k 0 = off)."""
    gen = tok.generation_config
    return (top_p if top_p is not None else gen.get("top_p", 1.0),
            top_k if top_k is not None else gen.get("top_k", 0) or 0)
