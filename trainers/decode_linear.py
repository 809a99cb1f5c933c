"""Linear layers laid out for decoding: y = (W x^T)^T, or a weight packed once, when only a few rows go through.

Each decoding step sends one token per sequence through every linear layer: a matrix product with a handful
of rows. Two layouts help on CPUs; larger inputs (prefill, scoring, training) keep `F.linear` in both:

- `few_row_products` (float32): MKL's kernel for x W^T with few rows is poorly blocked; the same product asked
  as W x^T runs faster for SmolLM2's layer shapes and most for its 49k-word LM head (`python -m
  benchmarks.decode_products` measures both layouts; docs/performance.md). The sums are the same, in another order.
- `packed_products` / `PackedLinear` (bfloat16): `F.linear` hands oneDNN the weight in its plain layout; a copy
  reordered once per sampling call into oneDNN's blocked layout gives the same bits as `F.linear` here, faster:
  SmolLM2 decoded 16 rows 1.2x faster with it (`python -m benchmarks.decode_floor`, docs/performance.md).
"""

from __future__ import annotations

import contextlib
import functools

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


def _adapter_layers(model: nn.Module) -> set[int]:
    """Ids of the A and B layers of `model`'s LoRA adapters."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return set()
    return {id(layer) for module in model.modules() if isinstance(module, LoraLayer)
            for layer in (*module.lora_A.values(), *module.lora_B.values())}


@contextlib.contextmanager
def few_row_products(model: nn.Module, enabled: bool = True):
    """Within the context, `model`'s float32 linear layers use W x^T for inputs of at most MAX_ROWS rows (CPU
    only). LoRA's A and B keep `F.linear`: for rank-r products the transposes cost more than they save (a rank-8
    product of 16 rows took 6-7 us with `F.linear` and 8 us as W x^T on 2 threads)."""
    patched = []
    try:
        if enabled:
            adapters = _adapter_layers(model)
            for module in model.modules():
                if (type(module) is nn.Linear and module.weight.device.type == "cpu" and "forward" not in vars(module)
                        and module.weight.dtype == torch.float32  # bf16 goes to oneDNN: `packed_products`
                        and id(module) not in adapters
                        and not isinstance(module.weight, DTensor)):  # FSDP shards gather in their own forward
                    module.forward = _few_rows_forward(module)
                    patched.append(module)
        yield len(patched)
    finally:
        for module in patched:
            del module.forward


@functools.cache
def _onednn_bf16() -> bool:
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def packable(weight: torch.Tensor) -> bool:
    """Whether `weight` is one `PackedLinear` can take: bfloat16, on a CPU with oneDNN bf16 products, not a shard."""
    return (weight.device.type == "cpu" and weight.dtype == torch.bfloat16 and not isinstance(weight, DTensor)
            and _onednn_bf16())


class PackedLinear:
    """x -> x W^T + b with a copy of W reordered once into oneDNN's blocked layout for `rows_hint` rows (bfloat16,
    CPU); inputs of any row count are accepted."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, rows_hint: int) -> None:
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), rows_hint)
        self.bias = bias.detach() if bias is not None else None
        self.out_features = weight.size(0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def _packed_forward(module: nn.Linear, rows_hint: int):
    product = PackedLinear(module.weight, module.bias, rows_hint)
    fallback = vars(module).get("forward") or nn.Linear.forward.__get__(module)

    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.numel() // x.size(-1) > MAX_ROWS or x.dtype != torch.bfloat16:
            return fallback(x)
        return product(x)

    return forward


@contextlib.contextmanager
def packed_products(model: nn.Module, enabled: bool = True, rows_hint: int = 16):
    """Within the context, `model`'s bfloat16 linear layers on CPU compute inputs of at most MAX_ROWS rows with a
    copy of their weight reordered once into oneDNN's blocked layout (for `rows_hint` rows); other inputs go to
    the forward they had. The copies cost one more set of those weights while the context lasts."""
    patched = []
    try:
        if enabled:
            for module in model.modules():
                if type(module) is nn.Linear and packable(module.weight):
                    patched.append((module, vars(module).get("forward")))
                    module.forward = _packed_forward(module, rows_hint)
        yield len(patched)
    finally:
        for module, prior in patched:
            if prior is None:
                del module.forward
            else:
                module.forward = prior
