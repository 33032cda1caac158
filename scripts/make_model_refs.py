#!/usr/bin/env python3
"""Make the model reference data the Rust model tests compare against.

For each real model and each prompt of PROMPTS, two references:

  * llama.cpp (llama-cpp-python==0.3.36, CPU): the prompt's token ids, then 48 greedy
    steps with the top-5 (id, logit) of every step. llama.cpp quantizes activations to
    8 bits on the CPU, so its logits differ from exact math by up to ~1.5 here.
  * exact math: a float64 numpy forward pass over the weights dequantized by the PyPI
    `gguf` package, on llama.cpp's prompt ids. For every prompt position: the top-20
    (id, logit) and the logits of 32 fixed random ids; for every layer and position, the
    RMS of the residual stream and its projections on 4 fixed random directions (so a
    test can name the first layer where it diverges).

Usage:  python3 scripts/make_model_refs.py [MODEL_DIR] [OUT_DIR]
        (defaults: $INGOT_MODELS or ~/.cache/ingot/models, crates/model/tests/data)
Writes OUT_DIR/refs_<model>.json. Needs numpy, gguf, llama-cpp-python==0.3.36.
"""
import json
import os
import sys
import time

import numpy as np
import gguf

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    "1234567 + 7654321 = ",
    "Die Straße in München ist schön, aber",
    "北京是中国的首都，",
    "東京は日本の首都で、",
    "Emoji test: 🦀🚀 👩‍💻 🇫🇷 means",
    "   leading spaces and\ttabs\n\nand blank lines",
    "Москва — столица России, а",
    'int main() {\r\n    printf("hello");\r\n',
    "Q: What is 17 * 23?\nA:",
]
MODELS = [
    "SmolLM2-135M-Instruct.Q4_1.gguf",
    "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    "gemma-3-270m-q4_k_m.gguf",
]
STEPS = 48
TOP = 20
N_SAMPLED = 32
N_DIRS = 4


class Weights:
    """Weights of a GGUF file dequantized to float64, by tensor name, row-major."""

    def __init__(self, path):
        self.reader = gguf.GGUFReader(path)
        self.tensors = {t.name: t for t in self.reader.tensors}
        self.cache = {}

    def field(self, key, default=None):
        f = self.reader.fields.get(key)
        if f is None:
            return default
        return f.contents()

    def has(self, name):
        return name in self.tensors

    def __getitem__(self, name):
        if name not in self.cache:
            t = self.tensors[name]
            shape = tuple(int(d) for d in reversed(t.shape))
            a = gguf.quants.dequantize(t.data, t.tensor_type)
            self.cache[name] = np.asarray(a, dtype=np.float64).reshape(shape)
        return self.cache[name]


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x, pos, inv_freq, neox):
    # x: [T, H, D]; rotate the first 2*len(inv_freq) dims
    r2 = len(inv_freq)
    ang = pos[:, None] * inv_freq[None, :]  # [T, r/2]
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    y = x.copy()
    if neox:
        a, b = x[..., :r2], x[..., r2 : 2 * r2]
        y[..., :r2] = a * c - b * s
        y[..., r2 : 2 * r2] = b * c + a * s
    else:
        a, b = x[..., 0 : 2 * r2 : 2], x[..., 1 : 2 * r2 : 2]
        y[..., 0 : 2 * r2 : 2] = a * c - b * s
        y[..., 1 : 2 * r2 : 2] = b * c + a * s
    return y


def gelu_tanh(x):
    c = np.sqrt(2.0 / np.pi)
    return 0.5 * x * (1.0 + np.tanh(c * (x + 0.044715 * x**3)))


def forward(w, ids, dirs):
    """Exact float64 forward pass; returns logits [T, V] and the layer trace."""
    arch = w.field("general.architecture")
    k = lambda s, d=None: w.field(f"{arch}.{s}", d)
    n_embd = int(k("embedding_length"))
    n_head = int(k("attention.head_count"))
    n_kv = int(k("attention.head_count_kv", n_head))
    hd = int(k("attention.key_length", n_embd // n_head))
    eps = float(k("attention.layer_norm_rms_epsilon"))
    base = float(k("rope.freq_base", 10000.0))
    rdim = int(k("rope.dimension_count", hd))
    n_layer = int(k("block_count"))
    gemma = arch == "gemma3"
    neox = arch != "llama"
    window = int(k("attention.sliding_window", 0)) if gemma else 0

    def inv_freq(b):
        f = b ** (-np.arange(0, rdim, 2, dtype=np.float64) / rdim)
        if w.has("rope_freqs.weight"):
            f = f / w["rope_freqs.weight"]
        return f

    T = len(ids)
    pos = np.arange(T, dtype=np.float64)
    x = w["token_embd.weight"][ids]
    if gemma:
        x = x * np.sqrt(n_embd)
    trace = []
    mask = np.tril(np.ones((T, T), dtype=bool))
    for il in range(n_layer):
        p = lambda s: w[f"blk.{il}.{s}"]
        swa = gemma and window > 0 and (il + 1) % 6 != 0
        h = rms_norm(x, p("attn_norm.weight"), eps)
        q = h @ p("attn_q.weight").T
        kk = h @ p("attn_k.weight").T
        v = h @ p("attn_v.weight").T
        if w.has(f"blk.{il}.attn_q.bias"):
            q, kk, v = q + p("attn_q.bias"), kk + p("attn_k.bias"), v + p("attn_v.bias")
        q = q.reshape(T, n_head, hd)
        kk = kk.reshape(T, n_kv, hd)
        v = v.reshape(T, n_kv, hd)
        if gemma:
            q = rms_norm(q, p("attn_q_norm.weight"), eps)
            kk = rms_norm(kk, p("attn_k_norm.weight"), eps)
        f = inv_freq(10000.0 if swa else base)
        q, kk = rope(q, pos, f, neox), rope(kk, pos, f, neox)
        g = n_head // n_kv
        att = np.zeros((T, n_head, hd))
        m = mask.copy()
        if swa:
            m &= (pos[:, None] - pos[None, :]) < window
        for hh in range(n_head):
            s = (q[:, hh, :] @ kk[:, hh // g, :].T) / np.sqrt(hd)
            s = np.where(m, s, -np.inf)
            s = s - s.max(axis=1, keepdims=True)
            e = np.exp(s)
            att[:, hh, :] = (e / e.sum(axis=1, keepdims=True)) @ v[:, hh // g, :]
        o = att.reshape(T, n_head * hd) @ p("attn_output.weight").T
        if gemma:
            o = rms_norm(o, p("post_attention_norm.weight"), eps)
        x = x + o
        h = rms_norm(x, p("ffn_norm.weight"), eps)
        gate, up = h @ p("ffn_gate.weight").T, h @ p("ffn_up.weight").T
        act = gelu_tanh(gate) if gemma else gate / (1.0 + np.exp(-gate))
        d = (act * up) @ p("ffn_down.weight").T
        if gemma:
            d = rms_norm(d, p("post_ffw_norm.weight"), eps)
        x = x + d
        trace.append(
            {
                "rms": np.sqrt(np.mean(x * x, axis=1)).round(6).tolist(),
                "proj": (x @ dirs.T).round(5).tolist(),  # [T, N_DIRS]
            }
        )
    x = rms_norm(x, w["output_norm.weight"], eps)
    out = w["output.weight"] if w.has("output.weight") else w["token_embd.weight"]
    return x @ out.T, trace


def llama_cpp_greedy(path, ids):
    from llama_cpp import Llama

    llm = Llama(model_path=path, n_ctx=512, n_threads=2, logits_all=True, verbose=False, seed=0)
    llm.reset()
    llm.eval(ids)
    steps = []
    for _ in range(STEPS):
        logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
        top = np.argsort(-logits, kind="stable")[:5]
        nxt = int(top[0])
        steps.append({"top5": [[int(i), round(float(logits[i]), 4)] for i in top]})
        if llm.token_eos() == nxt or nxt in eog_ids(llm):
            break
        llm.eval([nxt])
    return steps


def eog_ids(llm):
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    n = llama_cpp.llama_vocab_n_tokens(vocab)
    if not hasattr(eog_ids, "cache"):
        eog_ids.cache = {}
    key = id(llm)
    if key not in eog_ids.cache:
        eog_ids.cache[key] = {i for i in range(n) if llama_cpp.llama_vocab_is_eog(vocab, i)}
    return eog_ids.cache[key]


def main():
    model_dir = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("INGOT_MODELS", os.path.expanduser("~/.cache/ingot/models"))
    out_dir = sys.argv[2] if len(sys.argv) > 2 else "crates/model/tests/data"
    from llama_cpp import Llama

    for name in MODELS:
        path = os.path.join(model_dir, name)
        t0 = time.time()
        tok = Llama(model_path=path, vocab_only=True, verbose=False)
        w = Weights(path)
        vocab = w["token_embd.weight"].shape[0]
        n_embd = w["token_embd.weight"].shape[1]
        rng = np.random.default_rng(1234)
        sampled = sorted(int(i) for i in rng.choice(vocab, size=N_SAMPLED, replace=False))
        dirs = rng.standard_normal((N_DIRS, n_embd))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        prompts = []
        for text in PROMPTS:
            ids = tok.tokenize(text.encode(), add_bos=True, special=False)
            logits, trace = forward(w, ids, dirs)
            positions = []
            for t in range(len(ids)):
                row = logits[t]
                top = np.argsort(-row, kind="stable")[:TOP]
                positions.append(
                    {
                        "top": [[int(i), round(float(row[i]), 5)] for i in top],
                        "sampled": [round(float(row[i]), 5) for i in sampled],
                    }
                )
            greedy = llama_cpp_greedy(path, ids)
            prompts.append({"text": text, "ids": ids, "exact": positions, "trace": trace, "llama_cpp": greedy})
            print(f"{name}: {len(ids)} prompt tokens, {len(greedy)} llama.cpp steps", file=sys.stderr)
        doc = {
            "model": name,
            "command": "python3 scripts/make_model_refs.py",
            "llama_cpp_python": "0.3.36",
            "gguf_py": gguf.__version__ if hasattr(gguf, "__version__") else "0.19.0",
            "sampled_ids": sampled,
            "directions": dirs.round(8).tolist(),
            "prompts": prompts,
        }
        stem = name.rsplit(".gguf", 1)[0]
        with open(os.path.join(out_dir, f"refs_{stem}.json"), "w") as f:
            json.dump(doc, f, ensure_ascii=False, separators=(",", ":"))
        print(f"{name}: done in {time.time() - t0:.0f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
