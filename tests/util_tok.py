"""Test helper: build a tiny, real tokenizer checkpoint directory in well under a second.

    from tests.util_tok import make_tokenizer_dir
    path = make_tokenizer_dir(tmp_path / "tok", template="chatml", vocab_size=256)

`make_tokenizer_dir` trains a byte-level BPE (the same kind Qwen2.5 and Llama-3 use) on a small
built-in corpus with the `tokenizers` library, adds the chat control tokens of ChatML (Qwen),
Llama-3 and DeepSeek-R1 as special tokens, and writes the files a Hugging Face checkpoint has:

    tokenizer.json          vocabulary, merges, added tokens, post-processor
    tokenizer_config.json   bos/eos/pad token names and the chat template
    generation_config.json  bos_token_id, eos_token_id (the stop ids)

`template` picks one of the real chat templates stored verbatim in tests/fixtures/ and sets the
special tokens that model family uses:

    "chatml"   Qwen2.5-Math-7B-Instruct   eos <|im_end|>, pad <|endoftext|>, no bos,
                                          generation eos [<|im_end|>, <|endoftext|>]
    "llama3"   Llama-3.1-8B-Instruct      bos <|begin_of_text|>, eos <|eot_id|>, no pad,
                                          generation eos [<|end_of_text|>, <|eom_id|>, <|eot_id|>],
                                          post-processor adds BOS (like the real tokenizer.json)
    "deepseek" DeepSeek-R1-Distill-Qwen-7B bos/eos as AddedToken dicts, pad = eos,
                                          post-processor adds BOS
    None       no chat template (exercises the plain fallback); tokens as "chatml"

Any other string containing "{{" or "{%" is used as the template itself (tokens as "chatml").
All ids are < len(tokenizer) <= vocab_size, so a tiny model with that vocab_size can embed them.
The alphabet is printable ASCII plus newline and tab: other characters cannot be encoded.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

FIXTURES = Path(__file__).parent / "fixtures"
TEMPLATE_FILES = {
    "chatml": "qwen2.5-math-7b-instruct.jinja",
    "llama3": "llama-3.1-8b-instruct.jinja",
    "deepseek": "deepseek-r1-distill-qwen-7b.jinja",
}
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",  # ChatML (Qwen)
    "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|eot_id|>", "<|eom_id|>",  # Llama-3
    "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>",  # DeepSeek
]
CORPUS = [
    string.printable,  # every ASCII character gets a base token, so ASCII text always round-trips
    "Please reason step by step, and put your final answer within \\boxed{}.",
    "What is 2 + 3? The answer is 5. Let me think about this problem carefully.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many in May.",
    "First, we compute the sum. Then we check the result. Therefore the final answer is \\boxed{72}.",
    "system\nuser\nassistant\nYou are a helpful assistant.\nCutting Knowledge Date: December 2023\n",
    "Today Date: 26 Jul 2024\n<think>\nOkay, so I need to find x.\n</think>\n",
    "hello world, the quick brown fox jumps over the lazy dog 0123456789",
]


def make_tokenizer_dir(path, template: str | None = "chatml", vocab_size: int = 256) -> Path:
    """Write tokenizer.json, tokenizer_config.json and generation_config.json into `path`.

    `vocab_size` bounds len(tokenizer) (base alphabet + merges + 13 special tokens); it must be
    at least 128. Returns `path` as a Path.
    """
    if vocab_size < 128:
        raise ValueError("vocab_size must be >= 128 (ASCII alphabet plus special tokens)")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # The trainer takes its alphabet from the corpus: the byte-level symbols of printable ASCII.
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(SPECIAL_TOKENS), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    # Special tokens come after the trained vocabulary, as in real checkpoints (ids >= base vocab).
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SPECIAL_TOKENS])
    assert tok.get_vocab_size(with_added_tokens=True) <= vocab_size
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}

    family = template if template in TEMPLATE_FILES else "chatml"
    if template in TEMPLATE_FILES:
        chat_template = (FIXTURES / TEMPLATE_FILES[template]).read_text(encoding="utf-8")
    else:
        chat_template = template  # None (no template) or a literal template string

    if family == "llama3":
        bos, eos, pad = "<|begin_of_text|>", "<|eot_id|>", None
        gen_eos = [ids["<|end_of_text|>"], ids["<|eom_id|>"], ids["<|eot_id|>"]]
    elif family == "deepseek":
        bos, eos = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
        pad, gen_eos = eos, ids[eos]
    else:
        bos, eos, pad = None, "<|im_end|>", "<|endoftext|>"
        gen_eos = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    if bos is not None:  # like Llama-3 / R1-distill: encode(..., add_special_tokens=True) prepends BOS
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, ids[bos])])
    tok.save(str(path / "tokenizer.json"))

    def token_entry(t):  # R1-distill writes AddedToken dicts; the others plain strings
        if t is None or family != "deepseek":
            return t
        return {"__type": "AddedToken", "content": t, "lstrip": False, "normalized": True, "rstrip": False,
                "single_word": False}

    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": token_entry(bos),
              "eos_token": token_entry(eos), "pad_token": token_entry(pad), "unk_token": None,
              "clean_up_tokenization_spaces": False, "model_max_length": 4096}
    if chat_template is not None:
        config["chat_template"] = chat_template
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    gen = {"bos_token_id": ids[bos] if bos else ids["<|endoftext|>"], "eos_token_id": gen_eos}
    (path / "generation_config.json").write_text(json.dumps(gen, indent=2), encoding="utf-8")
    return path
