#!/usr/bin/env python3
"""llama.cpp's side of `ingot bench --vs-llama-cpp`: time prompt processing (pp) and
token generation (tg) on a GGUF file with llama-cpp-python, one repetition per call, the
same way ingot measures itself (random token ids from a fixed seed; tg from an empty
context, one token per step). Prints one JSON object: {"pp_tps": ..., "tg_tps": ...}.

Usage: python3 scripts/llama_cpp_bench.py MODEL --pp N --tg N --threads T --seed S
"""
import argparse
import json
import random
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--pp", type=int, default=512)
    ap.add_argument("--tg", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    from llama_cpp import Llama

    llm = Llama(
        model_path=a.model,
        n_ctx=max(a.pp, a.tg) + 16,
        n_batch=max(a.pp, 1),
        n_threads=a.threads,
        n_threads_batch=a.threads,
        verbose=False,
    )
    n_vocab = llm.n_vocab()
    rng = random.Random(a.seed)
    out = {}
    if a.pp > 0:
        toks = [rng.randrange(n_vocab) for _ in range(a.pp)]
        llm.reset()
        t = time.perf_counter()
        llm.eval(toks)
        out["pp_tps"] = a.pp / (time.perf_counter() - t)
    if a.tg > 0:
        llm.reset()
        tok = rng.randrange(n_vocab)
        t = time.perf_counter()
        for _ in range(a.tg):
            llm.eval([tok])
        out["tg_tps"] = a.tg / (time.perf_counter() - t)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
