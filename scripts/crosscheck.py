#!/usr/bin/env python3
"""Independent float64 cross-check of Ingot golden artifacts.

Usage:  python3 scripts/crosscheck.py DIR [--verbose]

Walks DIR for `meta.json` files (one per golden case, laid out as DIR/CASE/OP/), and for
every case:

  1. checks the artifact against docs/protocol.md: `format` "ingot-golden", `version` 1 or 2,
     `case`/`op` agreeing with the directory names, the op known, `params` holding exactly
     the keys docs/ops.md lists for the op, the input and output tensors being exactly the
     ones the op documents (name, dtype, shape derived from the params), each tensor's
     `bytes` equal to its file size and to the size implied by dtype and shape, and every
     output carrying a known `tolerance`;
  2. loads the tensors (f32, f16, bf16 = upper half of an f32, i32, u32, GGUF blocks as
     raw bytes) and recomputes every output from the stored inputs with numpy, following
     docs/ops.md alone: exact float64 arithmetic, then ONE rounding of each output to its
     dtype, f64 -> f32 -> f16/bf16, round to nearest even (the ops whose spec says
     otherwise -- GGUF dequantization in f32 via the `gguf` package, quantize_kv in f32
     arithmetic, bit-for-bit copies of masked/kept logits and embedding rows -- do what
     the spec says);
  3. compares the stored outputs with the recomputation with the case's own tolerance
     entries, as docs/protocol.md "Comparison" describes (the NaN/+-Inf/finite rule first,
     then exact, all_close, nmse or codes). The recomputation plays the role of `want`
     (the reference) and the stored artifact the role of `got`.

A case whose call is invalid by ops.md (an id, page id or position out of range, bad
indptr, ...) is reported as an error. One line is printed per case that does not pass
(every case with --verbose), then a summary line. The exit status is 1 when any case
failed or errored (mismatch, unknown op, unreadable or malformed artifact), else 0.

Readings of the spec where it leaves room (each is the literal text's most direct sense):
  - gelu / gelu_tanh are evaluated as 0.5·x·erfc(−x/√2) and x·σ(2u), the same functions
    as ops.md's formulas without the cancellation of 1 + erf / 1 + tanh for negative x;
  - outputs are matched to ops.md by name, not by position (fused_add_rms_norm's prose
    names residual_out first; the artifacts list output first);
  - nmse with Σ want² = 0 passes only when got equals want there;
  - codes: max_frac is a fraction of all codes of the tensor (the whole cache);
  - top_p_mask with top_p = 1 keeps every token (stated), otherwise the kept mass is
    summed in float64 in rank order;
  - sample_from_probs sums in float64, in index order; S is the last prefix sum.

Dependencies: Python 3.11, numpy, gguf (scripts/requirements.txt).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import gguf

np.seterr(all="ignore")  # inf/nan arithmetic is intended; results are checked explicitly

# --------------------------------------------------------------------------- dtypes

FLOAT_DTYPES = ("f32", "f16", "bf16")
INT_DTYPES = ("i32", "u32")
# GGUF block formats from ops.md#dequantize: (elements per block, bytes per block)
BLOCK_FORMATS = {
    "q4_0": (32, 18), "q4_1": (32, 20), "q5_0": (32, 22), "q5_1": (32, 24), "q8_0": (32, 34),
    "q2_k": (256, 84), "q3_k": (256, 110), "q4_k": (256, 144), "q5_k": (256, 176),
    "q6_k": (256, 210),
}
WEIGHT_DTYPES = FLOAT_DTYPES + tuple(BLOCK_FORMATS)
ELEM_BYTES = {"f32": 4, "f16": 2, "bf16": 2, "i32": 4, "u32": 4}


class ArtifactError(Exception):
    """The artifact is unreadable, malformed, or encodes a call that ops.md rejects."""


def nbytes_of(dtype: str, shape: list[int]) -> int:
    numel = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if dtype in ELEM_BYTES:
        return numel * ELEM_BYTES[dtype]
    if dtype in BLOCK_FORMATS:
        be, bb = BLOCK_FORMATS[dtype]
        if not shape or shape[-1] % be:
            raise ArtifactError(f"{dtype} shape {shape}: last dimension not a multiple of {be}")
        return numel // be * bb
    raise ArtifactError(f"unknown dtype {dtype!r}")


def load_tensor(path: str, dtype: str, shape: list[int]) -> np.ndarray:
    """Raw little-endian file -> numpy. bf16 comes back as float32 holding the exact value;
    block formats as uint8 of shape [..rows.., bytes per row]."""
    raw = np.fromfile(path, dtype=np.uint8)
    if dtype == "f32":
        return raw.view("<f4").astype(np.float32).reshape(shape)
    if dtype == "f16":
        return raw.view("<f2").astype(np.float16).reshape(shape)
    if dtype == "bf16":
        u = raw.view("<u2").astype(np.uint32) << np.uint32(16)
        return u.view(np.float32).reshape(shape)
    if dtype == "i32":
        return raw.view("<i4").astype(np.int32).reshape(shape)
    if dtype == "u32":
        return raw.view("<u4").astype(np.uint32).reshape(shape)
    if dtype in BLOCK_FORMATS:
        be, bb = BLOCK_FORMATS[dtype]
        return raw.reshape(tuple(shape[:-1]) + (shape[-1] // be * bb,))
    raise ArtifactError(f"unknown dtype {dtype!r}")


def f64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a).astype(np.float64)


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """Round float32 values to bfloat16, nearest-even; returns float32 holding bf16 values.
    Overflow goes to +-Inf, NaN stays a (quiet) NaN."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    u = x.view(np.uint32).astype(np.uint64)
    lsb = (u >> np.uint64(16)) & np.uint64(1)
    r = ((u + np.uint64(0x7FFF) + lsb) >> np.uint64(16)) & np.uint64(0xFFFF)
    nan = np.isnan(x)
    r = np.where(nan, ((u >> np.uint64(16)) | np.uint64(0x0040)) & np.uint64(0xFFFF), r)
    return (r.astype(np.uint32) << np.uint32(16)).view(np.float32)


def round_to(x, dtype: str) -> np.ndarray:
    """The one rounding of ops.md: f64 -> f32 -> f16/bf16, each round to nearest even."""
    y = np.asarray(x, dtype=np.float64).astype(np.float32)
    if dtype == "f32":
        return y
    if dtype == "f16":
        return y.astype(np.float16)
    if dtype == "bf16":
        return f32_to_bf16(y)
    raise ArtifactError(f"cannot round to {dtype!r}")


def gguf_dequant(raw: np.ndarray, fmt: str) -> np.ndarray:
    """GGUF blocks (uint8 [rows, bytes per row]) -> float32 [rows, cols] (ggml's f32 math)."""
    qtype = getattr(gguf.GGMLQuantizationType, fmt.upper())
    out = gguf.quants.dequantize(np.ascontiguousarray(raw, dtype=np.uint8), qtype)
    return np.asarray(out, dtype=np.float32)


def weight_values(raw: np.ndarray, fmt: str) -> np.ndarray:
    """`dequant` of ops.md: a weight in any weight format as float32 values."""
    if fmt in FLOAT_DTYPES:
        return np.asarray(raw, dtype=np.float32)  # exact for f16/bf16
    return gguf_dequant(raw, fmt)


# --------------------------------------------------------------------------- signatures
# For every op: the params keys ops.md lists, and the tensors (name, dtype, shape) it
# documents, in ops.md's order, derived from the params.

def _pos(p, *keys):
    for k in keys:
        v = p[k]
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ArtifactError(f"param {k}={v!r} must be a positive integer")


def _dt(p, key, allowed):
    if p[key] not in allowed:
        raise ArtifactError(f"param {key}={p[key]!r} not one of {list(allowed)}")
    return p[key]


def sig_gemm(p):
    _pos(p, "m", "n", "k")
    d = _dt(p, "dtype", FLOAT_DTYPES)
    m, n, k = p["m"], p["n"], p["k"]
    ins = [("a", d, [k, m] if p["transa"] else [m, k]),
           ("b", d, [n, k] if p["transb"] else [k, n])]
    if p["use_bias"]:
        ins.append(("bias", d, [n]))
    return ins, [("c", d, [m, n])]


def sig_quantized_matmul(p):
    _pos(p, "m", "n", "k")
    d = _dt(p, "dtype", FLOAT_DTYPES)
    w = _dt(p, "weight_dtype", WEIGHT_DTYPES)
    return [("x", d, [p["m"], p["k"]]), ("w", w, [p["n"], p["k"]])], [("y", "f32", [p["m"], p["n"]])]


def sig_dequantize(p):
    _pos(p, "rows", "cols")
    d = _dt(p, "dtype", WEIGHT_DTYPES)
    s = [p["rows"], p["cols"]]
    return [("input", d, s)], [("output", "f32", s)]


def sig_embedding_lookup(p):
    _pos(p, "num_tokens", "hidden_size", "vocab_size")
    d = _dt(p, "dtype", WEIGHT_DTYPES)
    out = d if d in FLOAT_DTYPES else "f32"
    return ([("table", d, [p["vocab_size"], p["hidden_size"]]), ("ids", "i32", [p["num_tokens"]])],
            [("output", out, [p["num_tokens"], p["hidden_size"]])])


def _th(p):
    _pos(p, "num_tokens", "hidden_size")
    return _dt(p, "dtype", FLOAT_DTYPES), [p["num_tokens"], p["hidden_size"]], [p["hidden_size"]]


def sig_rms_norm(p):
    d, th, h = _th(p)
    return [("input", d, th), ("weight", d, h)], [("output", d, th)]


def sig_fused_add_rms_norm(p):
    d, th, h = _th(p)
    # ops.md names residual_out first in its prose; outputs are matched by name.
    return ([("input", d, th), ("residual", d, th), ("weight", d, h)],
            [("residual_out", d, th), ("output", d, th)])


def sig_layer_norm(p):
    d, th, h = _th(p)
    return [("input", d, th), ("gamma", d, h), ("beta", d, h)], [("output", d, th)]


def sig_add_residual(p):
    d, th, _ = _th(p)
    return [("input", d, th), ("residual", d, th)], [("output", d, th)]


def sig_add_bias(p):
    d, th, h = _th(p)
    return [("input", d, th), ("bias", d, h)], [("output", d, th)]


def sig_scale(p):
    _pos(p, "num_elements")
    d = _dt(p, "dtype", FLOAT_DTYPES)
    s = p["scale"]
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) \
            or not math.isfinite(float(np.float32(s))):
        raise ArtifactError(f"param scale={s!r} must be finite as an f32")
    return [("input", d, [p["num_elements"]])], [("output", d, [p["num_elements"]])]


def sig_unary(p):
    _pos(p, "num_elements")
    d = _dt(p, "dtype", FLOAT_DTYPES)
    return [("input", d, [p["num_elements"]])], [("output", d, [p["num_elements"]])]


def sig_gated(p):
    _pos(p, "num_tokens", "intermediate_size")
    d = _dt(p, "dtype", FLOAT_DTYPES)
    t, i = p["num_tokens"], p["intermediate_size"]
    if p.get("packed", False):
        return [("input", d, [t, 2 * i])], [("output", d, [t, i])]
    return [("gate", d, [t, i]), ("up", d, [t, i])], [("output", d, [t, i])]


def _logits(p):
    _pos(p, "num_tokens", "vocab_size")
    d = _dt(p, "dtype", FLOAT_DTYPES)
    return d, [p["num_tokens"], p["vocab_size"]]


def sig_softmax(p):
    d, s = _logits(p)
    return [("logits", d, s)], [("probs", "f32", s)]


def sig_topk_mask_logits(p):
    d, s = _logits(p)
    if not 1 <= p["k"] <= p["vocab_size"]:
        raise ArtifactError(f"k={p['k']} outside 1..vocab_size={p['vocab_size']}")
    return [("logits", d, s)], [("masked", d, s)]


def sig_extract_k_values(p):
    _pos(p, "m", "n", "k")
    d = _dt(p, "dtype", FLOAT_DTYPES)
    if p["k"] > p["n"]:
        raise ArtifactError(f"k={p['k']} > n={p['n']}")
    return ([("input", d, [p["m"], p["n"]])],
            [("values", d, [p["m"], p["k"]]), ("indices", "i32", [p["m"], p["k"]])])


def sig_argmax(p):
    d, s = _logits(p)
    return [("logits", d, s)], [("indices", "i32", [p["num_tokens"]])]


def sig_logits_to_output(p):
    d, s = _logits(p)
    return [("logits", d, s)], [("output", d, s)]


def sig_logits_to_masked(p):
    d, s = _logits(p)
    return [("logits", d, s)], [("masked", d, s)]


def sig_sample_from_probs(p):
    _pos(p, "num_tokens", "vocab_size")
    t, v = p["num_tokens"], p["vocab_size"]
    return [("probs", "f32", [t, v]), ("uniform", "f32", [t])], [("samples", "i32", [t])]


def sig_rope(p):
    _pos(p, "num_tokens", "num_heads", "num_kv_heads", "head_size", "rotary_dim")
    d = _dt(p, "dtype", FLOAT_DTYPES)
    r = p["rotary_dim"]
    if r % 2 or r > p["head_size"]:
        raise ArtifactError(f"rotary_dim={r} must be even and <= head_size={p['head_size']}")
    t, hd = p["num_tokens"], p["head_size"]
    q, k = [t, p["num_heads"], hd], [t, p["num_kv_heads"], hd]
    return ([("q", d, q), ("k", d, k), ("pos_ids", "i32", [t])],
            [("q_out", d, q), ("k_out", d, k)])


def sig_rope_qkv(p):
    _pos(p, "num_tokens", "num_heads", "num_kv_heads", "head_size", "rotary_dim")
    d = _dt(p, "dtype", FLOAT_DTYPES)
    r, hd = p["rotary_dim"], p["head_size"]
    if r % 2 or r > hd:
        raise ArtifactError(f"rotary_dim={r} must be even and <= head_size={hd}")
    t, hq, hk = p["num_tokens"], p["num_heads"], p["num_kv_heads"]
    width = (hq + hk * (2 if p["with_v"] else 1)) * hd
    ins = [("qkv", d, [t, width]), ("pos_ids", "i32", [t]), ("inv_freq", "f32", [r // 2])]
    if p["qk_norm"]:
        ins += [("q_norm", "f32", [hd]), ("k_norm", "f32", [hd])]
    outs = [("q", d, [t, hq, hd]), ("k", d, [t, hk, hd])]
    if p["with_v"]:
        outs.append(("v", d, [t, hk, hd]))
    return ins, outs


def sig_rope_freqs(p):
    _pos(p, "num_tokens", "num_heads", "head_size", "rotary_dim")
    d = _dt(p, "dtype", FLOAT_DTYPES)
    r = p["rotary_dim"]
    if r % 2 or r > p["head_size"]:
        raise ArtifactError(f"rotary_dim={r} must be even and <= head_size={p['head_size']}")
    x = [p["num_tokens"], p["num_heads"], p["head_size"]]
    return ([("input", d, x), ("pos_ids", "i32", [p["num_tokens"]]), ("inv_freq", "f32", [r // 2])],
            [("output", d, x)])


COPY_DTYPES = FLOAT_DTYPES + INT_DTYPES


def sig_copy_pages(p):
    _pos(p, "num_pages", "page_size", "num_kv_heads", "head_size", "num_copies")
    d = _dt(p, "dtype", COPY_DTYPES)
    if p["num_copies"] >= p["num_pages"]:
        raise ArtifactError(f"num_copies={p['num_copies']} must be below num_pages={p['num_pages']}")
    c = [p["num_pages"], p["page_size"], p["num_kv_heads"], p["head_size"]]
    n = [p["num_copies"]]
    return [("cache", d, c), ("src_pages", "i32", n), ("dst_pages", "i32", n)], [("cache_out", d, c)]


def sig_write_columns(p):
    _pos(p, "num_rows", "src_width", "dst_width")
    d = _dt(p, "dtype", COPY_DTYPES)
    o = p["offset"]
    if not isinstance(o, int) or isinstance(o, bool) or o < 0 or o + p["src_width"] > p["dst_width"]:
        raise ArtifactError(f"offset={o!r} + src_width={p['src_width']} outside dst_width={p['dst_width']}")
    r = p["num_rows"]
    return ([("src", d, [r, p["src_width"]]), ("dst", d, [r, p["dst_width"]])],
            [("output", d, [r, p["dst_width"]])])


def _cache(p):
    _pos(p, "batch_size", "num_kv_heads", "head_size", "page_size", "num_pages", "num_page_ids")
    d = _dt(p, "dtype", FLOAT_DTYPES)
    c = [p["num_pages"], p["page_size"], p["num_kv_heads"], p["head_size"]]
    b = p["batch_size"]
    return d, c, [("k_cache", d, c), ("v_cache", d, c), ("kv_indices", "i32", [p["num_page_ids"]]),
                  ("kv_indptr", "i32", [b + 1]), ("kv_last_page_len", "i32", [b])]


def sig_append_paged_kv_cache(p):
    d, c, cache = _cache(p)
    _pos(p, "num_tokens")
    n = p["num_tokens"]
    a = [n, p["num_kv_heads"], p["head_size"]]
    return ([("append_k", d, a), ("append_v", d, a), ("batch_indices", "i32", [n]),
             ("positions", "i32", [n])] + cache,
            [("k_cache_out", d, c), ("v_cache_out", d, c)])


def _heads(p):
    _pos(p, "num_qo_heads")
    if p["num_qo_heads"] % p["num_kv_heads"]:
        raise ArtifactError(f"num_qo_heads={p['num_qo_heads']} not a multiple of "
                            f"num_kv_heads={p['num_kv_heads']}")


def sig_batch_prefill_with_paged_kv_cache(p):
    d, _, cache = _cache(p)
    _pos(p, "num_tokens")
    _heads(p)
    t, hq = p["num_tokens"], p["num_qo_heads"]
    q = [t, hq, p["head_size"]]
    return ([("q", d, q), ("qo_indptr", "i32", [p["batch_size"] + 1])] + cache,
            [("output", d, q), ("lse", "f32", [t, hq])])


def sig_batch_decode_with_paged_kv_cache(p):
    d, _, cache = _cache(p)
    _heads(p)
    b, hq = p["batch_size"], p["num_qo_heads"]
    q = [b, hq, p["head_size"]]
    return [("q", d, q)] + cache, [("output", d, q), ("lse", "f32", [b, hq])]


def sig_cast(p):
    _pos(p, "num_elements")
    i = _dt(p, "input_dtype", FLOAT_DTYPES)
    o = _dt(p, "output_dtype", FLOAT_DTYPES)
    return [("input", i, [p["num_elements"]])], [("output", o, [p["num_elements"]])]


def _kv(p):
    _pos(p, "n_kv_heads", "head_dim", "max_seq", "group_size")
    d = _dt(p, "dtype", FLOAT_DTYPES)
    bits, hd, g = p["bits"], p["head_dim"], p["group_size"]
    if bits not in (4, 8):
        raise ArtifactError(f"bits={bits} must be 4 or 8")
    if hd % g or (hd * bits) % 32:
        raise ArtifactError(f"head_dim={hd} incompatible with group_size={g}, bits={bits}")
    h, s = p["n_kv_heads"], p["max_seq"]
    return d, [("cache_w", "u32", [h, s, hd * bits // 32]), ("cache_s", d, [h, s, hd // g]),
               ("cache_b", d, [h, s, hd // g])]


def sig_quantize_kv(p):
    d, cache = _kv(p)
    if not 0 <= p["position"] < p["max_seq"]:
        raise ArtifactError(f"position={p['position']} outside 0..max_seq={p['max_seq']}")
    return ([("src", d, [p["n_kv_heads"], p["head_dim"]])] + cache,
            [(n + "_out", dt, s) for n, dt, s in cache])


def sig_dequantize_kv(p):
    d, cache = _kv(p)
    _pos(p, "n_positions")
    if p["start"] < 0 or p["start"] + p["n_positions"] > p["max_seq"]:
        raise ArtifactError(f"start={p['start']} + n_positions={p['n_positions']} > max_seq")
    return cache, [("output", d, [p["n_kv_heads"], p["n_positions"], p["head_dim"]])]


# --------------------------------------------------------------------------- helpers

def rank_order(x: np.ndarray) -> np.ndarray:
    """Per row, the column indices in ops.md's rank order: NaN first, then larger values,
    equal values by lower index (lexsort is stable)."""
    v = f64(x)
    nan = np.isnan(v)
    neg = np.where(nan, 0.0, -v)
    return np.lexsort((neg, ~nan), axis=-1)


def softmax64(z: np.ndarray) -> np.ndarray:
    """Row softmax in float64; -Inf -> 0, a row of only -Inf -> NaN (as PyTorch)."""
    m = np.max(z, axis=-1, keepdims=True)
    e = np.exp(z - m)
    return e / np.sum(e, axis=-1, keepdims=True)


def sigmoid64(x):
    return 1.0 / (1.0 + np.exp(-x))


_ERFC = np.vectorize(math.erfc, otypes=[np.float64])


def silu64(x):
    return np.where(np.isneginf(x), 0.0, x * sigmoid64(x))


def gelu64(x):
    # 0.5·x·(1 + erf(x/√2)) written as 0.5·x·erfc(−x/√2): the same value without the
    # cancellation of 1 + erf for negative x.
    return np.where(np.isneginf(x), 0.0, 0.5 * x * _ERFC(-x / math.sqrt(2.0)))


def gelu_tanh64(x):
    # 0.5·x·(1 + tanh(u)) = x·σ(2u), again without cancellation for negative x.
    u = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)
    return np.where(np.isneginf(x), 0.0, x * sigmoid64(2.0 * u))


def relu64(x):
    return np.maximum(x, 0.0)  # propagates NaN


# --------------------------------------------------------------------------- ops
# Each takes (params, inputs by name) and returns the expected outputs by name, already
# rounded to their dtypes.

def op_gemm(p, t):
    a, b = f64(t["a"]), f64(t["b"])
    A = a.T if p["transa"] else a
    B = b.T if p["transb"] else b
    c = A @ B
    if p["use_bias"]:
        c = c + f64(t["bias"])[None, :]
    return {"c": round_to(c, p["dtype"])}


def op_quantized_matmul(p, t):
    w = f64(weight_values(t["w"], p["weight_dtype"]))
    return {"y": round_to(f64(t["x"]) @ w.T, "f32")}


def op_dequantize(p, t):
    return {"output": weight_values(t["input"], p["dtype"])}


def op_embedding_lookup(p, t):
    ids = t["ids"].astype(np.int64)
    bad = (ids < 0) | (ids >= p["vocab_size"])
    if bad.any():
        raise ArtifactError(f"embedding_lookup: id {ids[bad][0]} outside 0..{p['vocab_size']}")
    rows = t["table"][ids]
    if p["dtype"] in FLOAT_DTYPES:
        return {"output": rows}  # a bit-for-bit copy
    return {"output": gguf_dequant(rows, p["dtype"])}


def _rms_norm64(x, w, eps, gemma):
    wp = 1.0 + w if gemma else w
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * wp


def op_rms_norm(p, t):
    y = _rms_norm64(f64(t["input"]), f64(t["weight"]), p["eps"], p["gemma"])
    return {"output": round_to(y, p["dtype"])}


def op_fused_add_rms_norm(p, t):
    r = round_to(f64(t["input"]) + f64(t["residual"]), p["dtype"])
    y = _rms_norm64(f64(r), f64(t["weight"]), p["eps"], p["gemma"])
    return {"residual_out": r, "output": round_to(y, p["dtype"])}


def op_layer_norm(p, t):
    x = f64(t["input"])
    mu = np.mean(x, axis=-1, keepdims=True)
    var = np.mean((x - mu) ** 2, axis=-1, keepdims=True)
    y = (x - mu) / np.sqrt(var + p["eps"]) * f64(t["gamma"]) + f64(t["beta"])
    return {"output": round_to(y, p["dtype"])}


def op_add_residual(p, t):
    return {"output": round_to(f64(t["input"]) + f64(t["residual"]), p["dtype"])}


UNARY = {"silu": silu64, "gelu": gelu64, "gelu_tanh": gelu_tanh64, "relu": relu64,
         "sigmoid": sigmoid64}
GATED = {"silu_and_mul": silu64, "gelu_and_mul": gelu_tanh64}


def make_unary(fn):
    def op(p, t):
        return {"output": round_to(fn(f64(t["input"])), p["dtype"])}
    return op


def make_gated(fn):
    def op(p, t):
        if p.get("packed", False):
            # ops.md: each input row is gate then up, intermediate_size each.
            x, i = f64(t["input"]), p["intermediate_size"]
            gate, up = x[:, :i], x[:, i:]
        else:
            gate, up = f64(t["gate"]), f64(t["up"])
        return {"output": round_to(fn(gate) * up, p["dtype"])}
    return op


def op_softmax(p, t):
    return {"probs": round_to(softmax64(f64(t["logits"]) / p["temperature"]), "f32")}


def _mask_keep(x, keep):
    """Kept logits copied bit for bit, the rest -Inf, in the logits' own dtype."""
    return np.where(keep, x, np.array(-np.inf, dtype=x.dtype))


def op_topk_mask_logits(p, t):
    x = t["logits"]
    keep = np.zeros(x.shape, dtype=bool)
    np.put_along_axis(keep, rank_order(x)[:, : p["k"]], True, axis=-1)
    return {"masked": _mask_keep(x, keep)}


def op_extract_k_values(p, t):
    x = t["input"]
    idx = rank_order(x)[:, : p["k"]]
    return {"values": np.take_along_axis(x, idx, axis=-1), "indices": idx.astype(np.int32)}


def op_argmax(p, t):
    return {"indices": rank_order(t["logits"])[:, 0].astype(np.int32)}


def op_softcap(p, t):
    c = p["cap"]
    if not c > 0:
        raise ArtifactError(f"softcap: cap={c} must be > 0")
    return {"output": round_to(c * np.tanh(f64(t["logits"]) / c), p["dtype"])}


def op_temperature_scale(p, t):
    if not p["temperature"] > 0:
        raise ArtifactError(f"temperature_scale: temperature={p['temperature']} must be > 0")
    return {"output": round_to(f64(t["logits"]) / p["temperature"], p["dtype"])}


def op_top_p_mask(p, t):
    x, top_p = t["logits"], p["top_p"]
    if not 0 < top_p <= 1:
        raise ArtifactError(f"top_p_mask: top_p={top_p} outside (0, 1]")
    if top_p >= 1:
        return {"masked": x.copy()}  # "top_p = 1 keeps every token"
    prob = softmax64(f64(x))
    order = rank_order(x)
    ps = np.take_along_axis(prob, order, axis=-1)
    # mass already kept before each token, summed in rank order
    before = np.concatenate([np.zeros_like(ps[:, :1]), np.cumsum(ps, axis=-1)[:, :-1]], axis=-1)
    keep = np.zeros(x.shape, dtype=bool)
    np.put_along_axis(keep, order, before < top_p, axis=-1)
    return {"masked": _mask_keep(x, keep)}


def op_min_p_mask(p, t):
    x, min_p = t["logits"], p["min_p"]
    if not 0 < min_p <= 1:
        raise ArtifactError(f"min_p_mask: min_p={min_p} outside (0, 1]")
    z = f64(x)
    keep = np.exp(z - np.max(z, axis=-1, keepdims=True)) >= min_p
    return {"masked": _mask_keep(x, keep)}


def op_sample_from_probs(p, t):
    pr, u = f64(t["probs"]), f64(t["uniform"])
    if not np.isfinite(pr).all() or (pr < 0).any():
        raise ArtifactError("sample_from_probs: a negative or non-finite weight")
    if not ((u >= 0) & (u < 1)).all():
        raise ArtifactError("sample_from_probs: uniform outside [0, 1)")
    c = np.cumsum(pr, axis=-1)
    s = c[:, -1]
    if (s <= 0).any():
        raise ArtifactError("sample_from_probs: a row with zero total weight")
    return {"samples": np.argmax(c > (u * s)[:, None], axis=-1).astype(np.int32)}


def rope_inv_freq(p):
    r = p["rotary_dim"]
    i = np.arange(r // 2, dtype=np.float64)
    inv = float(p["rope_theta"]) ** (-2.0 * i / r)
    if p["rope_factor"] > 1:
        f, L = float(p["rope_factor"]), float(p["original_max_position"])
        lo, hi = float(p["low_freq_factor"]), float(p["high_freq_factor"])
        wl = 2.0 * math.pi / inv
        low_wl, high_wl = L / lo, L / hi
        s = (L / wl - lo) / (hi - lo)
        mid = (1.0 - s) * inv / f + s * inv
        inv = np.where(wl < high_wl, inv, np.where(wl > low_wl, inv / f, mid))
    return inv


def _rotate(x, pos, inv_freq, p):
    """ops.md rope: x [T, H, D] rotated by pos[t]·inv_freq[i] (float64), rounded once."""
    if (pos < 0).any():
        raise ArtifactError(f"rope: negative position {pos[pos < 0][0]}")
    r, half = p["rotary_dim"], p["rotary_dim"] // 2
    ang = pos.astype(np.float64)[:, None] * inv_freq[None, :]  # [T, r/2]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    x = f64(x)
    y = x.copy()
    ia = np.arange(0, r, 2) if p["interleave"] else np.arange(half)
    ib = ia + 1 if p["interleave"] else ia + half
    a, b = x[..., ia], x[..., ib]
    y[..., ia] = a * cos - b * sin
    y[..., ib] = b * cos + a * sin
    return round_to(y, p["dtype"])


def op_rope(p, t):
    pos = t["pos_ids"].astype(np.int64)
    inv = rope_inv_freq(p)
    return {"q_out": _rotate(t["q"], pos, inv, p), "k_out": _rotate(t["k"], pos, inv, p)}


def op_rope_freqs(p, t):
    inv = f64(t["inv_freq"])
    if not np.isfinite(inv).all():
        raise ArtifactError("rope_freqs: non-finite inv_freq")
    return {"output": _rotate(t["input"], t["pos_ids"].astype(np.int64), inv, p)}


def op_rope_qkv(p, t):
    """ops.md rope_qkv: split the packed rows, RMS-normalise Q/K heads (qk_norm), rotate."""
    inv = f64(t["inv_freq"])
    if not np.isfinite(inv).all():
        raise ArtifactError("rope_qkv: non-finite inv_freq")
    T, hq, hk, hd = p["num_tokens"], p["num_heads"], p["num_kv_heads"], p["head_size"]
    heads = hq + hk * (2 if p["with_v"] else 1)
    x = f64(t["qkv"]).reshape(T, heads, hd)
    q, k = x[:, :hq, :], x[:, hq:hq + hk, :]
    if p["qk_norm"]:
        def norm(h, w):
            return h / np.sqrt(np.mean(h * h, axis=-1, keepdims=True) + p["eps"]) * f64(w)
        q, k = norm(q, t["q_norm"]), norm(k, t["k_norm"])
    pos = t["pos_ids"].astype(np.int64)
    out = {"q": _rotate(q, pos, inv, p), "k": _rotate(k, pos, inv, p)}
    if p["with_v"]:
        out["v"] = round_to(x[:, hq + hk:, :], p["dtype"])
    return out


def op_add_bias(p, t):
    return {"output": round_to(f64(t["input"]) + f64(t["bias"])[None, :], p["dtype"])}


def op_scale(p, t):
    # ops.md: the scale rounded to f32 first; the f64 product is exact, rounded once.
    return {"output": round_to(f64(t["input"]) * float(np.float32(p["scale"])), p["dtype"])}


def _bits(a: np.ndarray) -> np.ndarray:
    """The same bytes as unsigned words, so copies compare bit for bit (NaN payloads, -0)."""
    a = np.ascontiguousarray(a)
    if a.dtype == np.float16:
        return a.view(np.uint16)
    if a.dtype.itemsize == 4:
        return a.view(np.uint32)
    raise ArtifactError(f"cannot view {a.dtype} as bits")


def _from_bits(bits: np.ndarray, like: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(bits).view(like.dtype)


def op_copy_pages(p, t):
    src = t["src_pages"].astype(np.int64)
    dst = t["dst_pages"].astype(np.int64)
    n = p["num_pages"]
    for name, ids in (("src_pages", src), ("dst_pages", dst)):
        bad = (ids < 0) | (ids >= n)
        if bad.any():
            raise ArtifactError(f"copy_pages: {name} id {ids[bad][0]} outside 0..{n}")
    if len(set(dst.tolist())) != len(dst):
        raise ArtifactError("copy_pages: a page is written twice")
    if set(src.tolist()) & set(dst.tolist()):
        raise ArtifactError("copy_pages: a page is both a source and a target")
    cache = t["cache"]
    bits = _bits(cache).copy()
    bits[dst] = _bits(cache)[src]
    return {"cache_out": _from_bits(bits, cache)}


def op_write_columns(p, t):
    o, w = p["offset"], p["src_width"]
    bits = _bits(t["dst"]).copy()
    bits[:, o:o + w] = _bits(t["src"])
    return {"output": _from_bits(bits, t["dst"])}


def paged_sequences(p, t):
    """Validate the paged layout; per sequence (page ids, kv_len)."""
    B, ps = p["batch_size"], p["page_size"]
    indptr = t["kv_indptr"].astype(np.int64)
    indices = t["kv_indices"].astype(np.int64)
    last = t["kv_last_page_len"].astype(np.int64)
    if indptr[0] != 0 or (np.diff(indptr) < 0).any() or indptr[B] > p["num_page_ids"]:
        raise ArtifactError(f"bad kv_indptr {indptr.tolist()} (num_page_ids {p['num_page_ids']})")
    seqs = []
    for b in range(B):
        pages = indices[indptr[b]:indptr[b + 1]]
        if len(pages) < 1:
            raise ArtifactError(f"sequence {b} owns no page")
        if not 1 <= last[b] <= ps:
            raise ArtifactError(f"kv_last_page_len[{b}]={last[b]} outside 1..{ps}")
        if ((pages < 0) | (pages >= p["num_pages"])).any():
            raise ArtifactError(f"sequence {b}: page id outside 0..{p['num_pages']}")
        seqs.append((pages, (len(pages) - 1) * ps + int(last[b])))
    return seqs


def gather_kv(cache, pages, kv_len):
    """[kv_len, num_kv_heads, head_size] of one sequence, in position order."""
    return cache[pages].reshape((-1,) + cache.shape[2:])[:kv_len]


def op_append_paged_kv_cache(p, t):
    seqs = paged_sequences(p, t)
    ps = p["page_size"]
    kc, vc = t["k_cache"].copy(), t["v_cache"].copy()
    seen = set()
    for i, (b, pos) in enumerate(zip(t["batch_indices"].tolist(), t["positions"].tolist())):
        if not 0 <= b < p["batch_size"]:
            raise ArtifactError(f"append: row {i}: batch index {b} out of range")
        pages, kv_len = seqs[b]
        if not 0 <= pos < kv_len:
            raise ArtifactError(f"append: row {i}: position {pos} outside 0..{kv_len}")
        slot = (int(pages[pos // ps]), pos % ps)
        if slot in seen:
            raise ArtifactError(f"append: row {i}: page slot {slot} written twice")
        seen.add(slot)
        kc[slot] = t["append_k"][i]
        vc[slot] = t["append_v"][i]
    return {"k_cache_out": kc, "v_cache_out": vc}


def attend(q, K, V, qpos, causal, p):
    """q [Nq, Hq, D], K/V [L, Hk, D] (float64), qpos [Nq] -> (out [Nq,Hq,D], lse [Nq,Hq])."""
    group = p["num_qo_heads"] // p["num_kv_heads"]
    Kh = np.repeat(K, group, axis=1).transpose(1, 2, 0)  # [Hq, D, L]
    Vh = np.repeat(V, group, axis=1).transpose(1, 0, 2)  # [Hq, L, D]
    s = p["sm_scale"] * np.matmul(q.transpose(1, 0, 2), Kh)  # [Hq, Nq, L]
    cap = p["logits_soft_cap"]
    if cap > 0:
        s = cap * np.tanh(s / cap)
    j = np.arange(K.shape[0])[None, :]
    qp = np.asarray(qpos)[:, None]
    vis = np.ones((len(qpos), K.shape[0]), dtype=bool)
    if causal:
        vis &= j <= qp
    if p["window_left"] != -1:
        vis &= j >= qp - p["window_left"]
    s = np.where(vis[None], s, -np.inf)
    m = np.max(s, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(s - m)
    z = np.sum(e, axis=-1, keepdims=True)
    w = np.where(z > 0, e / np.where(z > 0, z, 1.0), 0.0)
    out = np.matmul(w, Vh).transpose(1, 0, 2)  # [Nq, Hq, D]
    lse = np.where(z[..., 0] > 0, np.log(z[..., 0]) + m[..., 0], -np.inf).T  # [Nq, Hq]
    return out, lse


def op_batch_prefill_with_paged_kv_cache(p, t):
    seqs = paged_sequences(p, t)
    qo = t["qo_indptr"].astype(np.int64)
    if qo[0] != 0 or (np.diff(qo) < 0).any() or qo[-1] != p["num_tokens"]:
        raise ArtifactError(f"bad qo_indptr {qo.tolist()}")
    q = f64(t["q"])
    kc, vc = f64(t["k_cache"]), f64(t["v_cache"])
    out = np.zeros(q.shape)
    lse = np.full(q.shape[:2], -np.inf)
    for b, (pages, kv_len) in enumerate(seqs):
        q0, q1 = int(qo[b]), int(qo[b + 1])
        n = q1 - q0
        if n == 0:
            continue
        if p["causal"] and n > kv_len:
            raise ArtifactError(f"prefill: sequence {b}: qo_len {n} > kv_len {kv_len}")
        qpos = kv_len - n + np.arange(n)
        out[q0:q1], lse[q0:q1] = attend(q[q0:q1], gather_kv(kc, pages, kv_len),
                                        gather_kv(vc, pages, kv_len), qpos, p["causal"], p)
    return {"output": round_to(out, p["dtype"]), "lse": round_to(lse, "f32")}


def op_batch_decode_with_paged_kv_cache(p, t):
    seqs = paged_sequences(p, t)
    q = f64(t["q"])
    kc, vc = f64(t["k_cache"]), f64(t["v_cache"])
    out = np.zeros(q.shape)
    lse = np.full(q.shape[:2], -np.inf)
    for b, (pages, kv_len) in enumerate(seqs):
        o, l = attend(q[b:b + 1], gather_kv(kc, pages, kv_len), gather_kv(vc, pages, kv_len),
                      np.array([kv_len - 1]), True, p)
        out[b], lse[b] = o[0], l[0]
    return {"output": round_to(out, p["dtype"]), "lse": round_to(lse, "f32")}


def op_cast(p, t):
    return {"output": round_to(f64(t["input"]), p["output_dtype"])}


def _round_f32_to(x32, dtype):
    return round_to(f64(x32), dtype).astype(np.float32)  # f32 -> f32 steps are exact


def op_quantize_kv(p, t):
    bits, g, pos = p["bits"], p["group_size"], p["position"]
    H, D = p["n_kv_heads"], p["head_dim"]
    src = np.asarray(t["src"], dtype=np.float32)
    if not np.isfinite(src).all():
        raise ArtifactError("quantize_kv: non-finite src value")
    x = src.reshape(H, D // g, g)
    qmax = np.float32(2 ** bits - 1)
    lo, hi = x.min(axis=-1), x.max(axis=-1)  # all in f32 arithmetic
    scale = (hi - lo) / qmax
    s_t = _round_f32_to(scale, p["dtype"])
    b_t = _round_f32_to(lo, p["dtype"])
    q = np.rint((x - b_t[..., None]) / s_t[..., None])  # rint: half to even
    q = np.where(s_t[..., None] == 0, np.float32(0), np.clip(q, 0, qmax))
    q = q.reshape(H, D // (32 // bits), 32 // bits).astype(np.uint32)
    shifts = (np.arange(32 // bits, dtype=np.uint32) * np.uint32(bits))
    words = np.bitwise_or.reduce(q << shifts, axis=-1)
    w_out, s_out, b_out = t["cache_w"].copy(), t["cache_s"].copy(), t["cache_b"].copy()
    w_out[:, pos, :] = words
    s_out[:, pos, :] = s_t.astype(s_out.dtype)
    b_out[:, pos, :] = b_t.astype(b_out.dtype)
    return {"cache_w_out": w_out, "cache_s_out": s_out, "cache_b_out": b_out}


def unpack_codes(words: np.ndarray, bits: int) -> np.ndarray:
    """u32 words [..., W] -> codes [..., W*32/bits]; code d is at bit (d mod (32/bits))·bits
    of word d / (32/bits)."""
    shifts = np.arange(32 // bits, dtype=np.uint32) * np.uint32(bits)
    c = (words[..., None] >> shifts) & np.uint32((1 << bits) - 1)
    return c.reshape(words.shape[:-1] + (-1,))


def op_dequantize_kv(p, t):
    a, n, g = p["start"], p["n_positions"], p["group_size"]
    q = f64(unpack_codes(t["cache_w"][:, a:a + n, :], p["bits"]))
    s = np.repeat(f64(t["cache_s"][:, a:a + n, :]), g, axis=-1)
    b = np.repeat(f64(t["cache_b"][:, a:a + n, :]), g, axis=-1)
    return {"output": round_to(q * s + b, p["dtype"])}


# Params an artifact may leave out (serialized only when set): op -> names.
OPTIONAL_PARAMS = {"silu_and_mul": {"packed"}, "gelu_and_mul": {"packed"}}

# op -> (params keys of ops.md, signature, compute)
_LOGIT = ("num_tokens", "vocab_size")
_NORM = ("num_tokens", "hidden_size", "eps", "gemma", "dtype")
_PAGED = ("num_kv_heads", "head_size", "page_size", "num_pages", "num_page_ids")
_ATTN = ("sm_scale", "window_left", "logits_soft_cap", "dtype")
_KV = ("n_kv_heads", "head_dim", "max_seq", "group_size", "bits")
OPS = {
    "gemm": (("m", "n", "k", "transa", "transb", "use_bias", "dtype"), sig_gemm, op_gemm),
    "quantized_matmul": (("m", "n", "k", "weight_dtype", "dtype"), sig_quantized_matmul,
                         op_quantized_matmul),
    "dequantize": (("rows", "cols", "dtype"), sig_dequantize, op_dequantize),
    "embedding_lookup": (("num_tokens", "hidden_size", "vocab_size", "dtype"),
                         sig_embedding_lookup, op_embedding_lookup),
    "rms_norm": (_NORM, sig_rms_norm, op_rms_norm),
    "fused_add_rms_norm": (_NORM, sig_fused_add_rms_norm, op_fused_add_rms_norm),
    "layer_norm": (("num_tokens", "hidden_size", "eps", "dtype"), sig_layer_norm, op_layer_norm),
    "add_residual": (("num_tokens", "hidden_size", "dtype"), sig_add_residual, op_add_residual),
    "add_bias": (("num_tokens", "hidden_size", "dtype"), sig_add_bias, op_add_bias),
    "scale": (("num_elements", "scale", "dtype"), sig_scale, op_scale),
    **{name: (("num_elements", "dtype"), sig_unary, make_unary(fn)) for name, fn in UNARY.items()},
    **{name: (("num_tokens", "intermediate_size", "dtype"), sig_gated, make_gated(fn))
       for name, fn in GATED.items()},
    "softmax": (_LOGIT + ("temperature", "dtype"), sig_softmax, op_softmax),
    "topk_mask_logits": (_LOGIT + ("k", "dtype"), sig_topk_mask_logits, op_topk_mask_logits),
    "extract_k_values": (("m", "n", "k", "dtype"), sig_extract_k_values, op_extract_k_values),
    "argmax": (_LOGIT + ("dtype",), sig_argmax, op_argmax),
    "softcap": (_LOGIT + ("cap", "dtype"), sig_logits_to_output, op_softcap),
    "temperature_scale": (_LOGIT + ("temperature", "dtype"), sig_logits_to_output,
                          op_temperature_scale),
    "top_p_mask": (_LOGIT + ("top_p", "dtype"), sig_logits_to_masked, op_top_p_mask),
    "min_p_mask": (_LOGIT + ("min_p", "dtype"), sig_logits_to_masked, op_min_p_mask),
    "sample_from_probs": (_LOGIT, sig_sample_from_probs, op_sample_from_probs),
    "rope": (("num_tokens", "num_heads", "num_kv_heads", "head_size", "rotary_dim", "rope_theta",
              "interleave", "rope_factor", "low_freq_factor", "high_freq_factor",
              "original_max_position", "dtype"), sig_rope, op_rope),
    "rope_freqs": (("num_tokens", "num_heads", "head_size", "rotary_dim", "interleave", "dtype"),
                   sig_rope_freqs, op_rope_freqs),
    "rope_qkv": (("num_tokens", "num_heads", "num_kv_heads", "with_v", "head_size", "rotary_dim",
                  "interleave", "qk_norm", "eps", "dtype"), sig_rope_qkv, op_rope_qkv),
    "copy_pages": (("num_pages", "page_size", "num_kv_heads", "head_size", "num_copies", "dtype"),
                   sig_copy_pages, op_copy_pages),
    "write_columns": (("num_rows", "src_width", "dst_width", "offset", "dtype"), sig_write_columns,
                      op_write_columns),
    "append_paged_kv_cache": (("batch_size", "num_tokens") + _PAGED + ("dtype",),
                              sig_append_paged_kv_cache, op_append_paged_kv_cache),
    "batch_prefill_with_paged_kv_cache": (
        ("batch_size", "num_tokens", "num_qo_heads") + _PAGED + ("causal",) + _ATTN,
        sig_batch_prefill_with_paged_kv_cache, op_batch_prefill_with_paged_kv_cache),
    "batch_decode_with_paged_kv_cache": (
        ("batch_size", "num_qo_heads") + _PAGED + _ATTN,
        sig_batch_decode_with_paged_kv_cache, op_batch_decode_with_paged_kv_cache),
    "cast": (("num_elements", "input_dtype", "output_dtype"), sig_cast, op_cast),
    "quantize_kv": (_KV + ("position", "dtype"), sig_quantize_kv, op_quantize_kv),
    "dequantize_kv": (_KV + ("start", "n_positions", "dtype"), sig_dequantize_kv,
                      op_dequantize_kv),
}


# --------------------------------------------------------------------------- comparison

# protocol.md metrics and their fields
METRICS = {"exact": (), "all_close": ("atol", "rtol"), "nmse": ("max",),
           "codes": ("bits", "max_diff", "max_frac")}


def _idx(i) -> list[int]:
    return [int(k) for k in i]


def compare(want: np.ndarray, got: np.ndarray, dtype: str, tol: dict) -> tuple[bool, str]:
    """protocol.md "Comparison": `want` is the reference, `got` the tensor under test."""
    metric = tol.get("metric")
    if dtype in FLOAT_DTYPES:
        w, g = f64(want), f64(got)
        wn, gn = np.isnan(w), np.isnan(g)
        winf = np.isinf(w)
        fin = np.isfinite(w)
        bad = (wn & ~gn) | (winf & (g != w)) | (fin & ~np.isfinite(g))
        if bad.any():
            i = np.unravel_index(np.argmax(bad), w.shape)
            return False, (f"{int(bad.sum())} NaN/Inf/finite mismatches, first at {_idx(i)}: "
                           f"want {float(w[i])!r} got {float(g[i])!r}")
        if metric == "exact":
            ne = ~(wn & gn) & (w != g)
            if ne.any():
                i = np.unravel_index(np.argmax(ne), w.shape)
                return False, (f"exact: {int(ne.sum())}/{w.size} differ, first at {_idx(i)}: "
                               f"want {float(w[i])!r} got {float(g[i])!r}")
            return True, "exact"
        if metric == "all_close":
            atol, rtol = float(tol["atol"]), float(tol["rtol"])
            err = np.where(fin, np.abs(g - w), 0.0)
            lim = atol + rtol * np.abs(np.where(fin, w, 0.0))
            ratio = np.where(err == 0, 0.0, err / np.where(lim > 0, lim, 1.0))
            ratio = np.where((err > 0) & (lim == 0), np.inf, ratio)
            nbad = int((err > lim).sum())
            ndiff = int((err > 0).sum())
            if ndiff == 0:
                return True, "all_close: identical"
            i = np.unravel_index(np.argmax(ratio), w.shape)
            msg = (f"all_close: {ndiff}/{w.size} differ, worst |d|/(atol+rtol|want|) = "
                   f"{float(ratio[i]):.3g} at {_idx(i)} (want {float(w[i])!r} got {float(g[i])!r})")
            if nbad:
                return False, f"{nbad} outside; " + msg
            return True, msg
        if metric == "nmse":
            mx = float(tol["max"])
            num = float(np.sum(np.where(fin, (g - w) ** 2, 0.0)))
            den = float(np.sum(np.where(fin, w * w, 0.0)))
            # Σ want² = 0 (ops.md does not say): pass only when got equals want there.
            v = num / den if den > 0 else (0.0 if num == 0 else math.inf)
            return v <= mx, f"nmse {v:.3g} (max {mx:g})"
        return False, f"metric {metric!r} unknown for {dtype}"
    # integer dtypes
    w, g = np.asarray(want).astype(np.int64), np.asarray(got).astype(np.int64)
    if metric == "exact":
        ne = w != g
        if ne.any():
            i = np.unravel_index(np.argmax(ne), w.shape)
            return False, (f"exact: {int(ne.sum())}/{w.size} differ, first at {_idx(i)}: "
                           f"want {int(w[i])} got {int(g[i])}")
        return True, "exact"
    if metric == "codes" and dtype == "u32":
        bits, max_diff, max_frac = int(tol["bits"]), int(tol["max_diff"]), float(tol["max_frac"])
        if bits <= 0 or 32 % bits:
            return False, f"codes: bits={bits} does not divide 32"
        cw = f64(unpack_codes(np.asarray(want, np.uint32), bits))
        cg = f64(unpack_codes(np.asarray(got, np.uint32), bits))
        d = np.abs(cw - cg)
        frac = float((d > 0).sum()) / d.size
        msg = f"codes: max diff {int(d.max())} (max {max_diff}), differing {frac:.3g} (max {max_frac:g})"
        return bool(d.max() <= max_diff and frac <= max_frac), msg
    return False, f"metric {metric!r} unknown for {dtype}"


# --------------------------------------------------------------------------- driver

def check_tensor_list(kind, entries, expected, directory):
    """Entries of meta.json vs the documented (name, dtype, shape); load them."""
    if not isinstance(entries, list):
        raise ArtifactError(f"{kind} is not a list")
    got_names = [e.get("name") for e in entries]
    want = {n: (d, s) for n, d, s in expected}
    if sorted(got_names) != sorted(want) or len(set(got_names)) != len(got_names):
        raise ArtifactError(f"{kind} {got_names}, ops.md documents {[n for n, _, _ in expected]}")
    loaded = {}
    for e in entries:
        name, dtype, shape = e["name"], e["dtype"], list(e["shape"])
        wd, ws = want[name]
        if dtype != wd or shape != ws:
            raise ArtifactError(f"{name}: {dtype}{shape}, params imply {wd}{ws}")
        f = e["file"]
        if not isinstance(f, str) or os.path.basename(f) != f or f in ("", ".", ".."):
            raise ArtifactError(f"{name}: file {f!r} is not a plain file name")
        path = os.path.join(directory, f)
        if not os.path.isfile(path):
            raise ArtifactError(f"{name}: {f} missing")
        size, implied = os.path.getsize(path), nbytes_of(dtype, shape)
        if e["bytes"] != size or size != implied:
            raise ArtifactError(f"{name}: bytes {e['bytes']}, file {size}, {dtype}{shape} needs {implied}")
        loaded[name] = load_tensor(path, dtype, shape)
    return loaded


def check_case(meta_path: str):
    """Returns (status, lines): status 'pass', 'fail' or 'error'."""
    directory = os.path.dirname(meta_path)
    try:
        with open(meta_path) as fh:
            meta = json.load(fh)
        if meta.get("format") != "ingot-golden" or meta.get("version") not in (1, 2):
            raise ArtifactError(f"format {meta.get('format')!r} version {meta.get('version')!r}")
        op = meta.get("op")
        if op not in OPS:
            raise ArtifactError(f"unknown op {op!r}")
        op_dir, case_dir = os.path.basename(directory), os.path.basename(os.path.dirname(directory))
        if op != op_dir or meta.get("case") != case_dir:
            raise ArtifactError(f"case/op {meta.get('case')}/{op} vs directory {case_dir}/{op_dir}")
        keys, sig, compute = OPS[op]
        params = meta.get("params")
        optional = OPTIONAL_PARAMS.get(op, set())
        if not isinstance(params, dict) or not set(keys) <= set(params) <= set(keys) | optional:
            got = sorted(params) if isinstance(params, dict) else params
            raise ArtifactError(f"params {got}, ops.md lists {sorted(keys)}")
        ins, outs = sig(params)
        inputs = check_tensor_list("inputs", meta.get("inputs"), ins, directory)
        stored = check_tensor_list("outputs", meta.get("outputs"), outs, directory)
        for e in meta["outputs"]:
            tol = e.get("tolerance")
            if not isinstance(tol, dict) or tol.get("metric") not in METRICS:
                raise ArtifactError(f"{e['name']}: tolerance {tol!r} is not one of {METRICS}")
            missing = [f for f in METRICS[tol["metric"]] if not isinstance(tol.get(f), (int, float))]
            if missing:
                raise ArtifactError(f"{e['name']}: tolerance {tol!r} lacks {missing}")
        want = compute(params, inputs)
        ok_all, lines = True, []
        for e in meta["outputs"]:
            name = e["name"]
            w = np.asarray(want[name])
            if w.shape != stored[name].shape:
                raise ArtifactError(f"{name}: recomputed shape {w.shape} vs stored {stored[name].shape}")
            ok, msg = compare(w, stored[name], e["dtype"], e["tolerance"])
            ok_all &= ok
            lines.append(f"{name}: {'ok' if ok else 'MISMATCH'} {msg}")
    except Exception as e:  # unreadable/malformed artifact or an invalid call: an error
        kind = "" if isinstance(e, ArtifactError) else type(e).__name__ + ": "
        return "error", [f"{kind}{e}"]
    return ("pass" if ok_all else "fail"), lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", help="a generated golden suite (searched for meta.json)")
    ap.add_argument("--verbose", action="store_true", help="print every case, not only failures")
    args = ap.parse_args(argv)
    t0 = time.time()
    metas = sorted(os.path.join(d, "meta.json") for d, _, files in os.walk(args.dir)
                   if "meta.json" in files)
    counts = {"pass": 0, "fail": 0, "error": 0}
    for m in metas:
        rel = os.path.relpath(os.path.dirname(m), args.dir)
        status, lines = check_case(m)
        counts[status] += 1
        if status != "pass" or args.verbose:
            print(f"{status.upper():5} {rel}: " + "; ".join(lines), flush=True)
    if not metas:
        print(f"no meta.json under {args.dir}")
    print(f"crosscheck: {len(metas)} cases, {counts['pass']} pass, {counts['fail']} fail, "
          f"{counts['error']} error ({time.time() - t0:.1f} s)")
    return 0 if metas and counts["fail"] == 0 and counts["error"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
