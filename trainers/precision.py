"""Choosing the dtype of frozen weights, by measurement rather than by belief.

bf16 is the fast path on GPUs and on CPUs with native bf16 matrix units (AVX512-BF16, AMX), where it
runs faster than fp32. On CPUs without them (AVX2 only), PyTorch falls back to a reference kernel and a bf16
matrix product runs orders of magnitude *slower* than fp32 (docs/performance.md). `frozen_dtype='auto'`
therefore times one small matrix product in both dtypes on this machine and keeps the faster.
"""

from __future__ import annotations

import functools
import time

import torch

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


@functools.cache
def cpu_matmul_gflops(size: int = 256, repeats: int = 3) -> dict[str, float]:
    """GFLOP/s of a size x size matrix product per dtype on this CPU (best of `repeats`)."""
    rates = {}
    gen = torch.Generator().manual_seed(0)  # never touch the global RNG: runs must stay reproducible
    for name in ("float32", "bfloat16"):
        a = torch.randn(size, size, generator=gen).to(DTYPES[name])
        b = torch.randn(size, size, generator=gen).to(DTYPES[name])
        a @ b  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
        rates[name] = 2 * size**3 / best / 1e9
    return rates


def resolve_frozen_dtype(choice: str, device: torch.device) -> torch.dtype:
    """The dtype for frozen weights: `choice`, or for 'auto' the faster of bf16 and fp32 here."""
    if choice != "auto":
        return DTYPES[choice]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    rates = cpu_matmul_gflops()
    return torch.bfloat16 if rates["bfloat16"] > rates["float32"] else torch.float32
