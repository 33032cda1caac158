#!/usr/bin/env python3
"""Tiny random-weight GGUF models of architectures no small real model exists for here,
and the references the Rust tests compare against (crates/model/tests/tiny_models.rs).

For each architecture in ARCHS:
  * OUT/tiny-<arch>.gguf: F32 weights from a fixed seed (values in ranges that keep the
    activations well scaled), a byte-level BPE tokenizer (the 256 GPT-2 byte tokens, a
    few merges, an end-of-text token), hyper-parameters and tensor names exactly as
    llama.cpp reads them.
  * OUT/tiny-<arch>.json: for each of PROMPTS, the token ids llama.cpp gives it, the
    logits llama.cpp (llama-cpp-python==0.3.36, CPU, F32 weights and KV) computes at every
    prompt position, the logits of STEPS greedy steps after it, and the logits of an
    independent float64 numpy forward pass at every position of prompt + greedy tokens.

Usage: python3 scripts/make_tiny_models.py [OUT]   (default crates/model/tests/data/tiny)
Needs numpy, gguf and (for the llama.cpp references) llama-cpp-python==0.3.36.
"""
import json
import math
import os
import sys

import numpy as np
import gguf

PROMPTS = [
    "the cat sat on the mat",
    "Hello, world! 123",
    "a\nb  c\td",
]
STEPS = 8


def bytes_to_unicode():
    """GPT-2's byte → printable character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def tokenizer(w: gguf.GGUFWriter):
    """Byte tokens, a few merges, <|endoftext|> last (BOS and EOS)."""
    b2u = bytes_to_unicode()
    tokens = [b2u[b] for b in range(256)]
    sp = b2u[ord(" ")]
    merges = [("h", "e"), ("t", "he"), (sp, "t"), (sp + "t", "he"), ("a", "t"), (sp, "c"), (sp + "c", "at"),
              (sp, "s"), (sp + "s", "at"), ("o", "n"), (sp, "on"), (sp, "m"), (sp + "m", "at"), ("l", "l"), ("e", "ll")]
    for a, b in merges:
        tokens.append(a + b)
    tokens.append("<|endoftext|>")
    types = [1] * (len(tokens) - 1) + [3]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([f"{a} {b}" for a, b in merges])
    eot = len(tokens) - 1
    w.add_bos_token_id(eot)
    w.add_eos_token_id(eot)
    w.add_add_bos_token(False)
    return len(tokens)


def rng_for(arch):
    """A fixed generator per architecture (numpy's PCG64; numpy is pinned in requirements.txt)."""
    return np.random.default_rng(sum(map(ord, arch)) * 7919)


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def layer_norm(x, g, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def softmax(x):
    m = x.max(-1, keepdims=True)
    e = np.exp(x - m)
    return e / e.sum(-1, keepdims=True)


# ---------------------------------------------------------------- gpt2

GPT2 = dict(n_embd=64, n_head=4, n_layer=2, n_ff=256, n_ctx=128, eps=1e-5)


def make_gpt2(path):
    c = GPT2
    r = rng_for("gpt2")
    w = gguf.GGUFWriter(path, "gpt2")
    vocab = tokenizer(w)
    E, F = c["n_embd"], c["n_ff"]
    w.add_context_length(c["n_ctx"])
    w.add_embedding_length(E)
    w.add_feed_forward_length(F)
    w.add_block_count(c["n_layer"])
    w.add_head_count(c["n_head"])
    w.add_layer_norm_eps(c["eps"])
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    t = {}
    f32 = lambda a: np.asarray(a, dtype=np.float32)
    t["token_embd.weight"] = f32(r.normal(0, 0.5, (vocab, E)))
    t["position_embd.weight"] = f32(r.normal(0, 0.2, (c["n_ctx"], E)))
    for il in range(c["n_layer"]):
        p = f"blk.{il}."
        t[p + "attn_norm.weight"] = f32(1 + r.normal(0, 0.1, E))
        t[p + "attn_norm.bias"] = f32(r.normal(0, 0.05, E))
        t[p + "attn_qkv.weight"] = f32(r.normal(0, 1 / math.sqrt(E), (3 * E, E)))
        t[p + "attn_qkv.bias"] = f32(r.normal(0, 0.05, 3 * E))
        t[p + "attn_output.weight"] = f32(r.normal(0, 1 / math.sqrt(E), (E, E)))
        t[p + "attn_output.bias"] = f32(r.normal(0, 0.05, E))
        t[p + "ffn_norm.weight"] = f32(1 + r.normal(0, 0.1, E))
        t[p + "ffn_norm.bias"] = f32(r.normal(0, 0.05, E))
        t[p + "ffn_up.weight"] = f32(r.normal(0, 1 / math.sqrt(E), (F, E)))
        t[p + "ffn_up.bias"] = f32(r.normal(0, 0.05, F))
        t[p + "ffn_down.weight"] = f32(r.normal(0, 1 / math.sqrt(F), (E, F)))
        t[p + "ffn_down.bias"] = f32(r.normal(0, 0.05, E))
    t["output_norm.weight"] = f32(1 + r.normal(0, 0.1, E))
    t["output_norm.bias"] = f32(r.normal(0, 0.05, E))
    t["output.weight"] = f32(r.normal(0, 1 / math.sqrt(E), (vocab, E)))
    for k, v in t.items():
        w.add_tensor(k, v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {k: v.astype(np.float64) for k, v in t.items()}


def forward_gpt2(t, ids):
    """Exact float64 forward: logits [len(ids), vocab]."""
    c = GPT2
    E, H = c["n_embd"], c["n_head"]
    hd = E // H
    n = len(ids)
    x = t["token_embd.weight"][ids] + t["position_embd.weight"][:n]
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for il in range(c["n_layer"]):
        p = f"blk.{il}."
        h = layer_norm(x, t[p + "attn_norm.weight"], t[p + "attn_norm.bias"], c["eps"])
        qkv = h @ t[p + "attn_qkv.weight"].T + t[p + "attn_qkv.bias"]
        q, k, v = qkv[:, :E], qkv[:, E:2 * E], qkv[:, 2 * E:]
        o = np.zeros((n, E))
        for hh in range(H):
            s = slice(hh * hd, (hh + 1) * hd)
            a = softmax(q[:, s] @ k[:, s].T / math.sqrt(hd) + mask)
            o[:, s] = a @ v[:, s]
        x = x + o @ t[p + "attn_output.weight"].T + t[p + "attn_output.bias"]
        h = layer_norm(x, t[p + "ffn_norm.weight"], t[p + "ffn_norm.bias"], c["eps"])
        u = gelu_tanh(h @ t[p + "ffn_up.weight"].T + t[p + "ffn_up.bias"])
        x = x + u @ t[p + "ffn_down.weight"].T + t[p + "ffn_down.bias"]
    h = layer_norm(x, t["output_norm.weight"], t["output_norm.bias"], c["eps"])
    return h @ t["output.weight"].T


ARCHS = {"gpt2": (make_gpt2, forward_gpt2)}


def llama_cpp_refs(path, prompt):
    import llama_cpp
    llm = llama_cpp.Llama(model_path=path, n_ctx=64, n_batch=64, logits_all=True, verbose=False,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32, n_threads=1)
    ids = llm.tokenize(prompt.encode(), add_bos=True, special=False)
    llm.reset()
    llm.eval(ids)
    prompt_logits = np.array(llm.scores[:len(ids)], dtype=np.float64)
    gen, steps = [], []
    last = prompt_logits[-1]
    for _ in range(STEPS):
        nxt = int(np.argmax(last))
        gen.append(nxt)
        llm.eval([nxt])
        last = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
        steps.append(last)
    return ids, prompt_logits, gen, np.array(steps)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "crates/model/tests/data/tiny"
    os.makedirs(out, exist_ok=True)
    for arch, (make, fwd) in ARCHS.items():
        path = os.path.join(out, f"tiny-{arch}.gguf")
        t = make(path)
        cases = []
        for prompt in PROMPTS:
            ids, pl, gen, steps = llama_cpp_refs(path, prompt)
            exact = fwd(t, ids + gen)
            cases.append({
                "prompt": prompt,
                "ids": ids,
                "greedy": gen,
                "llama_cpp_prompt_logits": np.round(pl, 6).tolist(),
                "llama_cpp_step_logits": np.round(steps, 6).tolist(),
                "exact_logits": np.round(exact, 7).tolist(),
            })
            d = np.abs(pl - exact[:len(ids)]).max()
            print(f"{arch} {prompt!r}: {len(ids)} ids, greedy {gen}, max |llama.cpp - exact| over the prompt {d:.2e}")
        with open(os.path.join(out, f"tiny-{arch}.json"), "w") as f:
            json.dump({"arch": arch, "file": f"tiny-{arch}.gguf", "cases": cases}, f)
        print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
