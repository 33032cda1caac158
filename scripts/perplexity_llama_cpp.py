#!/usr/bin/env python3
"""llama.cpp's perplexity on the CPU, through llama-cpp-python, computed exactly as
`llama-perplexity` and `ingot perplexity` do (see crates/cli/src/perplexity_cmd.rs):
the text tokenized once with the model's BOS, cut into --ctx-token chunks, each chunk
evaluated alone with its first token replaced by BOS (where the model adds one), the
logits of positions ctx/2 .. ctx-2 scored against the next token; exp(mean NLL) and its
standard error. Prints one JSON object with a `perplexity` field.

    python3 scripts/perplexity_llama_cpp.py --model M.gguf --file TEXT [--ctx 512] [--chunks N] [--threads T]

Needs llama-cpp-python (0.3.36; see docs/benchmarks.md for the build flags on AMX machines).
"""
import argparse
import json
import math
import sys
import time

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--file", required=True)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    try:
        import llama_cpp
    except ImportError:
        print("perplexity_llama_cpp.py: llama-cpp-python is not installed", file=sys.stderr)
        return 2
    with open(a.file, "rb") as f:
        text = f.read()
    llm = llama_cpp.Llama(model_path=a.model, n_ctx=a.ctx, n_batch=a.ctx, n_ubatch=a.ctx, logits_all=True,
                          n_threads=a.threads, verbose=False)
    tokens = llm.tokenize(text, add_bos=True, special=False)
    if len(tokens) < 2 * a.ctx:
        print(f"{a.file} has {len(tokens)} tokens; --ctx {a.ctx} needs {2 * a.ctx}", file=sys.stderr)
        return 1
    n_chunk = len(tokens) // a.ctx
    if a.chunks is not None:
        n_chunk = min(n_chunk, a.chunks)
    add_bos = llama_cpp.llama_vocab_get_add_bos(llama_cpp.llama_model_get_vocab(llm.model)) if hasattr(
        llama_cpp, "llama_vocab_get_add_bos") else True
    bos = llm.token_bos()
    first = a.ctx // 2
    nll = nll2 = 0.0
    count = 0
    t0 = time.time()
    for i in range(n_chunk):
        chunk = tokens[i * a.ctx:(i + 1) * a.ctx]
        inp = list(chunk)
        if add_bos:
            inp[0] = bos
        llm.reset()
        llm.eval(inp)
        logits = np.asarray(llm.scores[:a.ctx], dtype=np.float64)
        rows = logits[first:a.ctx - 1]
        m = rows.max(axis=1, keepdims=True)
        lse = (m[:, 0] + np.log(np.exp(rows - m).sum(axis=1)))
        targets = np.asarray(chunk[first + 1:a.ctx])
        lp = rows[np.arange(len(targets)), targets] - lse
        nll -= lp.sum()
        nll2 += (lp * lp).sum()
        count += len(targets)
        print(f"[{i + 1}]{math.exp(nll / count):.4f},", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    mean = nll / count
    ppl = math.exp(mean)
    var = nll2 / count - mean * mean
    err = math.sqrt(var / (count - 1)) * ppl if var > 0 and count > 1 else None
    print(json.dumps({"model": a.model, "file": a.file, "ctx": a.ctx, "chunks": n_chunk, "tokens": len(tokens),
                      "scored_tokens": count, "mean_nll": mean, "perplexity": ppl, "perplexity_stderr": err,
                      "seconds": time.time() - t0, "peer": f"llama-cpp-python {llama_cpp.__version__}"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
