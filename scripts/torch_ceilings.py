#!/usr/bin/env python3
"""Ceilings for `ingot bench ops`, measured with PyTorch on the same GPU in the same run.

Prints one JSON object:
  copy_gbps                              device-to-device copy, bytes read + written per second / 1e9
  gemm_<dtype>_<m>_<n>_<k>_tflops        cuBLAS through torch.matmul, x[m,k] @ w[n,k]^T
  sdpa_causal_<tokens>_s                 scaled_dot_product_attention, causal, 32 query / 8 KV heads,
                                         head dim 128, flash backend when available (seconds per call)
  gemv_<dtype>_<n>x<k>_gbps              torch's own decode GEMV, for reference

Usage: python3 scripts/torch_ceilings.py [--dtype bf16|f16|f32]
"""
import argparse
import json
import sys

import torch


def timed(fn, iters=20, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / iters


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "f16", "f32"])
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device for PyTorch", file=sys.stderr)
        return 2
    dt = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[a.dtype]
    dev = "cuda"
    out = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "dtype": a.dtype}

    n = 1 << 28  # 1 GiB of f32
    x = torch.empty(n, dtype=torch.float32, device=dev).normal_()
    y = torch.empty_like(x)
    t = timed(lambda: y.copy_(x))
    out["copy_gbps"] = 2 * x.numel() * 4 / t / 1e9
    del x, y

    for m, nn, k in [(4096, 4096, 4096), (8192, 8192, 8192), (512, 14336, 4096)]:
        xa = torch.randn(m, k, dtype=dt, device=dev)
        w = torch.randn(nn, k, dtype=dt, device=dev)
        t = timed(lambda: xa @ w.T)
        out[f"gemm_{a.dtype}_{m}_{nn}_{k}_tflops"] = 2 * m * nn * k / t / 1e12
        del xa, w

    for nn, k in [(4096, 4096), (14336, 4096), (4096, 14336)]:
        xa = torch.randn(1, k, dtype=dt, device=dev)
        w = torch.randn(nn, k, dtype=dt, device=dev)
        t = timed(lambda: xa @ w.T, iters=100)
        out[f"gemv_{a.dtype}_{nn}x{k}_gbps"] = (w.numel() + xa.numel() + nn) * w.element_size() / t / 1e9
        del xa, w

    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as F

    for tokens in [4096, 16384]:
        q = torch.randn(1, 32, tokens, 128, dtype=dt, device=dev)
        kk = torch.randn(1, 8, tokens, 128, dtype=dt, device=dev)
        v = torch.randn(1, 8, tokens, 128, dtype=dt, device=dev)
        backend = "flash"
        try:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                t = timed(lambda: F.scaled_dot_product_attention(q, kk, v, is_causal=True, enable_gqa=True), iters=10)
        except RuntimeError:
            # Flash without GQA support in this build: repeat the KV heads (same FLOPs).
            kr, vr = kk.repeat_interleave(4, dim=1), v.repeat_interleave(4, dim=1)
            try:
                with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    t = timed(lambda: F.scaled_dot_product_attention(q, kr, vr, is_causal=True), iters=10)
                backend = "flash, KV heads repeated"
            except RuntimeError:
                t = timed(lambda: F.scaled_dot_product_attention(q, kr, vr, is_causal=True), iters=10)
                backend = "default"
        out[f"sdpa_causal_{tokens}_s"] = t
        out[f"sdpa_causal_{tokens}_backend"] = backend
        del q, kk, v

    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
