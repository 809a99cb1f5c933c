"""Linear layers laid out for decoding: y = (W x^T)^T when only a few rows go through.

Each decoding step sends one token per sequence through every linear layer: a matrix product with a handful
of rows. MKL's kernel for x W^T with few rows is poorly blocked on CPUs; the same product asked as W x^T
runs faster for SmolLM2's layer shapes and most for its 49k-word LM head (`python -m benchmarks.decode_products`
measures both layouts; docs/performance.md). The sums are the same, in another order. Larger
inputs (prefill, scoring, training) keep `F.linear`.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor

MAX_ROWS = 64  # W x^T won every measurement up to 64 rows; at 128 the two traded places between runs


def _few_rows_forward(module: nn.Linear):
    weight, bias = module.weight, module.bias

    def forward(x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.size(-1)
        if rows > MAX_ROWS or weight.dtype != x.dtype:
            return F.linear(x, weight, bias)
        out = (weight @ x.reshape(rows, x.size(-1)).t()).t()
        if bias is not None:
            out = out + bias
        return out.reshape(*x.shape[:-1], weight.size(0))

    return forward


@contextlib.contextmanager
def few_row_products(model: nn.Module, enabled: bool = True):
    """Within the context, `model`'s linear layers use W x^T for inputs of at most MAX_ROWS rows (CPU only)."""
    patched = []
    try:
        if enabled:
            for module in model.modules():
                if (type(module) is nn.Linear and module.weight.device.type == "cpu" and "forward" not in vars(module)
                        and not isinstance(module.weight, DTensor)):  # FSDP shards gather in their own forward
                    module.forward = _few_rows_forward(module)
                    patched.append(module)
        yield len(patched)
    finally:
        for module in patched:
            del module.forward
