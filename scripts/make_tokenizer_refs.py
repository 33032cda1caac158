#!/usr/bin/env python3
"""Record llama.cpp's tokenizations and chat renderings as the reference of ingot's tokenizer.

For each test model and each prompt below, through llama-cpp-python (the llama.cpp it
vendors is the reference):
  - ids of `Llama(path, vocab_only=True).tokenize(text, add_bos=True, special=False)`
    and with `special=True` (llama_tokenize's add_special / parse_special),
  - `llama_detokenize` of both id lists (remove_special=False; unparse_special=False for
    the first, True for the second): the text ingot's `decode` must give back,
  - chat renderings through llama-cpp-python's Jinja2 formatter (the template from the
    file; for Gemma 3, whose file has none, ingot's built-in template, also compared with
    llama.cpp's own `gemma` template), and their ids (`special=True`, no BOS added),
  - the same prompts through the Qwen vocabulary under other pre-tokenizer names (a
    vocabulary-only copy of the file with `tokenizer.ggml.pre` replaced).

Writes crates/model/tests/data/tokenizer_refs.json; crates/model/tests/tokenizer_llamacpp.rs
checks ingot against it. Regenerate (needs the models, see scripts/fetch_models.sh, and
`pip install llama-cpp-python`):

    python3 scripts/make_tokenizer_refs.py

A larger differential run on random texts (not committed):

    python3 scripts/make_tokenizer_refs.py --fuzz 3000 --seed 7 --out /tmp/fuzz_refs.json
    INGOT_TOKENIZER_REFS=/tmp/fuzz_refs.json cargo test -p ingot-model --test tokenizer_llamacpp -- --nocapture
"""

import ctypes
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import llama_cpp
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "crates/model/tests/data/tokenizer_refs.json"
GEMMA_TEMPLATE = ROOT / "crates/model/src/templates/gemma.jinja"
MODELS_DIR = Path(os.environ.get("INGOT_MODELS", Path.home() / ".cache/ingot/models"))

MODELS = [
    {"name": "smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"},
    {"name": "qwen2.5-coder", "file": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"},
    {"name": "gemma3", "file": "gemma-3-270m-q4_k_m.gguf", "builtin_template": "gemma"},
]

PROMPTS = [
    ("english", "The quick brown fox jumps over the lazy dog. It's sunny, isn't it? We'll see what they've done."),
    ("contractions_upper", "I'M SURE YOU'LL SEE THEY'VE GONE, DON'T WORRY. He'd've said 'yes'."),
    (
        "code_tabs",
        'def fib(n):\n\tif n < 2:\n\t\treturn n\n    return fib(n - 1) + fib(n - 2)\n\n'
        'for i in range(10):\n        print(f"{i}: {fib(i)}")  # done\n',
    ),
    ("numbers", "1234567 and 3.14159, 0.001, -42, 1e10, 2024-01-01, 100,000,000 and 99999999999999"),
    ("german", "Größere Äpfel schmecken süß – übermäßig viel Öl ist ungesund. Straße, Fußgänger, Ökonomie."),
    ("chinese", "我们今天去公园散步，天气非常好。机器学习是人工智能的一个分支。"),
    ("japanese", "日本語のテキストです。カタカナとひらがな、漢字が混ざっています。東京タワー！"),
    ("arabic", "مرحبا بالعالم! هذه جملة باللغة العربية مع التشكيل: كَتَبَ الوَلَدُ."),
    ("russian", "Привет, мир! Съешь же ещё этих мягких французских булок, да выпей чаю."),
    ("korean_hindi_thai", "안녕하세요 세계, नमस्ते दुनिया, สวัสดีชาวโลก"),
    ("emoji", "I ❤️ Rust 🦀! Family: 👨‍👩‍👧‍👦, flags: 🇩🇪🇯🇵🇺🇸, thumbs: 👍🏽, rainbow: 🏳️‍🌈 🤷‍♀️"),
    (
        "whitespace",
        "   leading spaces, trailing spaces   \n\n\nmultiple   spaces\ttab\t\there\r\nwindows line\r\n  \n end  ",
    ),
    ("only_spaces", "     "),
    ("newlines", "\n\n\n\n\n"),
    ("single_space", " "),
    ("empty", ""),
    (
        "special_text",
        "<|im_start|>user\nHello<|im_end|>\n<start_of_turn>model\nHi<end_of_turn>\n<bos>x<|endoftext|> <eos>",
    ),
    (
        "punctuation",
        "Email: test@example.com, URL: https://example.org/a_b?q=1&r=2#frag — “quotes” ‘single’ «guillemets» … ©®™ ½ ²³ $100 + 5% <=> ^~|",
    ),
    ("repeats", "aaaaaaaaaaaaaaaaaaaaaaaa!!!!!!!!!!!?????? ================ ---------- ........"),
    ("spaced_punctuation", "Hello , world ! It ' s fine . I 've done it , they 're sure ; 'tis 1 000 000 ?"),
]

# Pre-tokenizers checked beyond the models' own: the Qwen vocabulary with `tokenizer.ggml.pre`
# set to one name of each family llama.cpp knows (and names whose flags differ).
PRE_VARIANTS_BASE = "qwen2.5-coder"
PRE_VARIANTS = [
    "default", "llama-bpe", "dbrx", "megrez", "qwen35", "starcoder", "command-r", "gpt-2", "trillion",
    "falcon", "gpt-4o", "tekken", "seed-coder", "poro-chat", "bloom", "viking",
]

CONVERSATION = [
    {"role": "system", "content": "You are a terse assistant. Answer in one sentence."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
    {"role": "user", "content": "And of Germany? Explain briefly."},
]


def vocab_only_copy(src, dst):
    """Writes `dst`: the metadata of `src` (no tensors), `tokenizer.ggml.pre` last; returns
    the offset of that last key, so that variants can replace it (see `with_pre`)."""
    import gguf

    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(dst, r.fields["general.architecture"].contents())
    for k, f in r.fields.items():
        if k.startswith("GGUF.") or k in ("general.architecture", "tokenizer.ggml.pre", "tokenizer.chat_template"):
            continue
        sub = f.types[1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(k, f.contents(), f.types[0], sub_type=sub)
    w.add_string("tokenizer.ggml.pre", "PRE")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    data = Path(dst).read_bytes()
    key = b"tokenizer.ggml.pre"
    last = len(key).to_bytes(8, "little") + key + (8).to_bytes(4, "little") + (3).to_bytes(8, "little") + b"PRE"
    at = data.rindex(last)
    return data[:at]


def with_pre(prefix, pre, dst):
    key, val = b"tokenizer.ggml.pre", pre.encode()
    kv = len(key).to_bytes(8, "little") + key + (8).to_bytes(4, "little") + len(val).to_bytes(8, "little") + val
    data = prefix + kv
    data += bytes(-len(data) % 32)
    Path(dst).write_bytes(data)


def tokenize_all(llm, vocab, prompts):
    recs = []
    for name, text in prompts:
        rec = {"name": name, "text": text}
        for special in (False, True):
            ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=special)
            key = "special" if special else "plain"
            rec[f"ids_{key}"] = ids
            rec[f"detok_{key}"] = text_field(detokenize(vocab, ids, special))
        recs.append(rec)
    return recs


def detokenize(vocab, ids, unparse_special):
    arr = (llama_cpp.llama_token * max(len(ids), 1))(*ids)
    cap = 64 + 64 * len(ids)
    buf = ctypes.create_string_buffer(cap)
    n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, cap, False, unparse_special)
    if n < 0:
        raise RuntimeError(f"detokenize needs {-n} bytes")
    return buf.raw[:n]


def text_field(b):
    """A str when the bytes are UTF-8, else their hex (never expected for whole prompts)."""
    try:
        return {"text": b.decode("utf-8")}
    except UnicodeDecodeError:
        return {"hex": b.hex()}


def builtin_template(name, messages, add_ass):
    chat = (llama_cpp.llama_chat_message * len(messages))()
    keep = []
    for i, m in enumerate(messages):
        role, content = m["role"].encode(), m["content"].encode()
        keep += [role, content]
        chat[i].role, chat[i].content = role, content
    cap = 8192
    buf = ctypes.create_string_buffer(cap)
    n = llama_cpp.llama_chat_apply_template(name.encode(), chat, len(messages), add_ass, buf, cap)
    if n < 0 or n > cap:
        raise RuntimeError(f"llama_chat_apply_template({name}) returned {n}")
    return buf.raw[:n].decode("utf-8")


def render(template, bos, eos, messages, add_generation_prompt):
    fmt = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos, add_generation_prompt=add_generation_prompt)
    return fmt(messages=messages).prompt


# Pieces of random texts for --fuzz: scripts, whitespace, contractions, emoji sequences,
# combining marks, special-token texts, unassigned and private-use code points.
FUZZ_POOLS = [
    list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"),
    list("0123456789"),
    list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"),
    [" ", " ", " ", "  ", "\t", "\n", "\r\n", "\r", "\u00a0", "\u3000", "\u2009", "\u200b", "\x0b", "\x0c", "\x85", "\u2028"],
    ["'s", "'T", "'ll", "'RE", "'ve", "'M", "'d", "'x"],
    list("我们今天去公园散步天气非常好机器学习"),
    list("ひらがなカタカナ漢字ー"),
    list("ПриветмирЁё"),
    list("مرحبابالعالمَُِّ"),
    list("नमस्तेदुनिया"),
    list("สวัสดีชาวโลก"),
    ["❤️", "🦀", "👨‍👩‍👧‍👦", "🇩🇪", "👍🏽", "🏳️‍🌈", "🤷‍♀️", "🫨", "🫩", "\u2764"],
    ["e\u0301", "a\u0308", "\u0300", "\ufe0f", "\u200d"],
    ["<|im_start|>", "<|im_end|>", "<end_of_turn>", "<start_of_turn>", "<bos>", "<eos>", "<|endoftext|>", "</s>",
     "<unused3>", "<tool_call>", "[multimodal]", "<|fim_pad|>", "<reponame>"],
    ["∑", "√", "≤", "€", "£", "©", "®", "™", "½", "²", "Ⅻ", "①", "٣", "߀", "𝟘"],
    ["\u0378", "\ue000", "\uffff", "\U000E0001", "\U0010FFFD", "\u0000", "\x01", "\x7f"],
    ["hello", " world", "The", " the", "function", "    ", "        return", "\n\n", "\t\t", "1234567", "3.14159", "====", "----"],
]


def fuzz_prompts(n, seed):
    import random

    rng = random.Random(seed)
    prompts = []
    for i in range(n):
        parts = []
        for _ in range(rng.randint(1, 12)):
            pool = rng.choice(FUZZ_POOLS)
            parts.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 4))))
        prompts.append((f"fuzz{i}", "".join(parts)))
    return prompts


def main():
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fuzz", type=int, metavar="N", help="N random prompts instead of the fixed ones (no chat renderings)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    prompts = fuzz_prompts(args.fuzz, args.seed) if args.fuzz else PROMPTS
    command = "python3 scripts/make_tokenizer_refs.py" + (f" --fuzz {args.fuzz} --seed {args.seed}" if args.fuzz else "")
    out = {
        "generator": command,
        "llama_cpp_python": llama_cpp.__version__,
        "note": "ids: llama_tokenize(text, add_special=True, parse_special=special); "
        "detok: llama_detokenize(ids, remove_special=False, unparse_special=special)",
        "conversation": CONVERSATION,
        "models": [],
    }
    for m in MODELS:
        path = MODELS_DIR / m["file"]
        if not path.is_file():
            sys.exit(f"missing model {path} (run scripts/fetch_models.sh)")
        llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        entry = {"name": m["name"], "file": m["file"], "prompts": tokenize_all(llm, vocab, prompts)}
        if args.fuzz:
            out["models"].append(entry)
            del llm
            continue

        bos_id, eos_id = llm.token_bos(), llm.token_eos()
        bos = llm._model.token_get_text(bos_id) if bos_id != -1 else ""
        eos = llm._model.token_get_text(eos_id) if eos_id != -1 else ""
        template = llm.metadata.get("tokenizer.chat_template")
        chat = {"bos_token": bos, "eos_token": eos, "renders": []}
        if template is None:
            template = GEMMA_TEMPLATE.read_text()
            chat["template"] = "builtin"
        else:
            chat["template"] = "file"
        for add_gen in (True, False):
            for n in (len(CONVERSATION), 2):
                msgs = CONVERSATION[:n]
                r = {"messages": n, "add_generation_prompt": add_gen, "jinja2": render(template, bos, eos, msgs, add_gen)}
                if "builtin_template" in m:
                    r["llama_cpp_builtin"] = builtin_template(m["builtin_template"], msgs, add_gen)
                # the prompt as it is fed to the model: special tokens parsed, no BOS added
                # (Gemma's template writes it)
                r["ids"] = llm.tokenize(r["jinja2"].encode("utf-8"), add_bos=False, special=True)
                chat["renders"].append(r)
        entry["chat"] = chat
        out["models"].append(entry)
        del llm

    base = next(m for m in MODELS if m["name"] == PRE_VARIANTS_BASE)
    out["pre_variants"] = {"base": PRE_VARIANTS_BASE, "variants": []}
    with tempfile.TemporaryDirectory() as tmp:
        prefix = vocab_only_copy(str(MODELS_DIR / base["file"]), f"{tmp}/base.gguf")
        for pre in PRE_VARIANTS:
            path = f"{tmp}/{pre}.gguf"
            with_pre(prefix, pre, path)
            llm = Llama(model_path=path, vocab_only=True, verbose=False)
            vocab = llama_cpp.llama_model_get_vocab(llm.model)
            out["pre_variants"]["variants"].append({"pre": pre, "prompts": tokenize_all(llm, vocab, prompts)})
            del llm

    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(out, ensure_ascii=False, indent=1)
    # one line per id list
    text = re.sub(r"\[\s*(-?\d+(?:,\s*-?\d+)*)\s*\]", lambda mt: "[" + re.sub(r"\s+", "", mt.group(1)) + "]", text)
    args.out.write_text(text + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
