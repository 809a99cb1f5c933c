"""One decoding step of a Llama model as plain tensor operations, without the work its forward does per call.

For one new token per row, `LlamaForCausalLM.forward` rebuilds a 4-D attention mask from the whole 2-D mask,
dispatches through some 25 modules per layer (each with its hook checks; peft's LoRA wrappers; the attention
registry; the cache object's update) and wraps its outputs in dataclasses: SmolLM2 decoding 16 rows ran 1.16x
faster without that work (`python -m benchmarks.decode_floor`). `LeanDecoder` reads the same weights and calls the
same tensor operations, in the same order and dtypes, as that forward on the same inputs (decoding one token per
row into a `trainers.kv_cache.RoomyLayer` cache), so its logits are the same bits; what it skips is:

- the mask: built once per sampling call (the prompt's padding, then room for every new token) and sliced per
  step, instead of rebuilt from a concatenated 2-D mask;
- module dispatch: each linear layer, norm and activation is called through its `forward` (a few-row product
  from `trainers.decode_linear` or a folded LoRA layer stays as it is set up), and a LoRA layer with live
  adapters runs peft's sum `base(x) + B(A(x)) * scale` directly;
- the cache object: keys and values are written into the cache's preallocated buffers.

Asked to pack (`packed_decode_weights`), it computes bf16 layers with `trainers.decode_linear.PackedLinear`, q/k/v
and gate/up each as one product over their stacked weights (same bits: each output comes from the same blocks).

Only what this step reproduces is accepted (`LeanDecoder.build` returns None otherwise, and the caller keeps the
model's own forward): `LlamaForCausalLM` with SDPA attention, plain or LoRA linear layers in eval mode, and a
cache of `RoomyLayer`s with room for the tokens to come.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainers.decode_linear import PackedLinear, packable
from trainers.kv_cache import RoomyLayer

Fn = Callable[[Tensor], Tensor]


def _plain_call(module: nn.Module) -> Fn:
    """`module(x)` without the call machinery: its bound forward, unless hooks must run (then the full call)."""
    if module._forward_hooks or module._forward_pre_hooks:
        return module
    return module.forward


def _parts(module: nn.Module):
    """(the plain `nn.Linear` that `module` computes with, its live LoRA adapters as (A, B, scale, input dtype)), or
    None for a layer this step does not reproduce (not linear, hooks, live dropout, adapter variants)."""
    if type(module) is nn.Linear:
        return module, []
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:  # peft absent: no LoRA layers to meet
        return None
    if type(module) is not LoraLinear or module._forward_hooks or module._forward_pre_hooks:
        return None
    base = module.get_base_layer()
    if type(base) is not nn.Linear:
        return None
    if module.disable_adapters or module.merged:
        return base, []
    adapters = []
    for name in module.active_adapters:
        if name not in module.lora_A:
            continue
        dropout, a, b = module.lora_dropout[name], module.lora_A[name], module.lora_B[name]
        if name in module.lora_variant or (dropout.training and isinstance(dropout, nn.Dropout) and dropout.p > 0):
            return None  # DoRA-like variants and live dropout: left to peft
        if type(a) is not nn.Linear or type(b) is not nn.Linear:
            return None
        cast = a.weight.dtype if getattr(module, "cast_input_dtype_enabled", True) else None
        adapters.append((_plain_call(a), _plain_call(b), module.scaling[name], cast))
    return base, adapters


def _adapted(result: Tensor, x: Tensor, adapters: list) -> Tensor:
    """peft's unmerged sum on a base output: y = base(x); y = y + B(A(x')) * scale per adapter, x' = x cast to A's
    dtype; then y cast back to base(x)'s dtype."""
    if not adapters:
        return result
    dtype = result.dtype
    for a, b, scale, cast in adapters:
        if cast is not None and x.dtype != cast:
            x = x.to(cast)
        result = result + b(a(x)) * scale
    return result.to(dtype)


def linear_fn(module: nn.Module, pack_rows: int = 0) -> Fn | None:
    """x -> module(x) for an `nn.Linear` or a peft LoRA `Linear` around one; None for anything else. With
    `pack_rows` > 0 a bf16 weight is packed for that many rows (`trainers.decode_linear.PackedLinear`)."""
    parts = _parts(module)
    if parts is None:
        return None
    base, adapters = parts
    product = (PackedLinear(base.weight, base.bias, pack_rows) if pack_rows and packable(base.weight)
               and not base._forward_hooks and not base._forward_pre_hooks else _plain_call(base))
    return product if not adapters else (lambda x: _adapted(product(x), x, adapters))


def group_fn(modules: list[nn.Module], pack_rows: int = 0):
    """x -> (m(x) for m in modules) for layers that read the same input (q/k/v; gate/up); None if one of them is
    not reproduced. With packing, their bf16 weights are stacked into one packed product whose output is split:
    one larger product runs faster than several small ones, and gives the same bits here (oneDNN computes each
    output from the same blocks); each layer's LoRA adapters are then added to its part."""
    parts = [_parts(m) for m in modules]
    if any(p is None for p in parts):
        return None
    bases = [base for base, _ in parts]
    if (pack_rows and all(packable(b.weight) and not b._forward_hooks and not b._forward_pre_hooks for b in bases)
            and len({b.in_features for b in bases}) == 1 and len({b.bias is None for b in bases}) == 1):
        bias = None if bases[0].bias is None else torch.cat([b.bias for b in bases])
        product = PackedLinear(torch.cat([b.weight for b in bases]), bias, pack_rows)
        sizes = [b.out_features for b in bases]

        def fused(x: Tensor) -> tuple[Tensor, ...]:
            outs = product(x).split(sizes, dim=-1)
            return tuple(_adapted(out, x, adapters) for out, (_, adapters) in zip(outs, parts))

        return fused
    fns = [linear_fn(m, pack_rows) for m in modules]
    return lambda x: tuple(fn(x) for fn in fns)


class _Layer:
    """The callables and sizes of one decoder layer."""

    __slots__ = ("norm1", "qkv", "o", "norm2", "gate_up", "down", "act", "heads", "kv_heads", "head_dim", "scale")

    def __init__(self, layer: nn.Module, pack_rows: int) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        self.norm1, self.norm2 = _plain_call(layer.input_layernorm), _plain_call(layer.post_attention_layernorm)
        self.qkv = group_fn([attn.q_proj, attn.k_proj, attn.v_proj], pack_rows)
        self.o = linear_fn(attn.o_proj, pack_rows)
        self.gate_up = group_fn([mlp.gate_proj, mlp.up_proj], pack_rows)
        self.down = linear_fn(mlp.down_proj, pack_rows)
        self.act = _plain_call(mlp.act_fn)
        self.head_dim = attn.head_dim
        self.kv_heads = attn.config.num_key_value_heads
        self.heads = self.kv_heads * attn.num_key_value_groups
        self.scale = attn.scaling

    def complete(self) -> bool:
        return all(f is not None for f in (self.qkv, self.o, self.gate_up, self.down))


def _causal_lm(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supported(model: nn.Module) -> bool:
    """Whether `model` is a causal LM whose decoding step `LeanDecoder` reproduces."""
    from transformers.models.llama import modeling_llama as llama

    lm = _causal_lm(model)
    if type(lm) is not llama.LlamaForCausalLM or lm.training or lm.config._attn_implementation != "sdpa":
        return False
    body = lm.model
    return (type(body) is llama.LlamaModel and len(body.layers) == lm.config.num_hidden_layers
            and all(type(layer) is llama.LlamaDecoderLayer and type(layer.self_attn) is llama.LlamaAttention
                    and type(layer.mlp) is llama.LlamaMLP and not layer._forward_hooks
                    and not layer._forward_pre_hooks for layer in body.layers))


class LeanDecoder:
    """Decodes one token per row into a `RoomyLayer` cache: `decoder(tokens [B], positions [B, 1]) -> logits [B, V]`.

    The attention mask is the prompt's 2-D mask followed by ones for every new token, as the model's forward
    builds it, kept as one [B, 1, 1, capacity] boolean tensor: step t attends to its first `length + 1` slots.
    A prompt batch without padding attends with no mask, as SDPA's grouped-query path (the forward does the same).
    """

    def __init__(self, lm: nn.Module, layers: list[_Layer], head: Fn, cache_layers: list[RoomyLayer],
                 allowed: Tensor | None):
        self.embed = _plain_call(lm.model.embed_tokens)
        self.rotary = lm.model.rotary_emb.forward
        self.norm = _plain_call(lm.model.norm)
        self.head = head
        self.layers, self.cache, self.allowed = layers, cache_layers, allowed
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        self.rope = apply_rotary_pos_emb

    @classmethod
    def build(cls, model: nn.Module, cache, query_mask: Tensor, new_tokens: int,
              pack_rows: int = 0) -> "LeanDecoder | None":
        """A decoder for `model` continuing `cache` (the prefill of prompts with 2-D mask `query_mask`) by up to
        `new_tokens` tokens; None when the model, its layers or the cache are not ones this step reproduces.
        `pack_rows` > 0: bf16 weights packed for that many rows, q/k/v and gate/up each as one product."""
        if not supported(model):
            return None
        lm = _causal_lm(model)
        cache_layers = list(getattr(cache, "layers", ()))
        width = query_mask.size(1)
        if (len(cache_layers) != len(lm.model.layers) or lm.lm_head is None
                or not all(type(c) is RoomyLayer and c.length == width and c._keys.size(2) >= width + new_tokens
                           for c in cache_layers)):
            return None
        layers = [_Layer(layer, pack_rows) for layer in lm.model.layers]
        head = linear_fn(lm.lm_head, pack_rows)
        if not all(layer.complete() for layer in layers) or head is None:
            return None
        allowed = None
        if not bool(query_mask.all()):
            capacity = cache_layers[0]._keys.size(2)
            allowed = torch.ones(query_mask.size(0), 1, 1, capacity, dtype=torch.bool, device=query_mask.device)
            allowed[:, 0, 0, :width] = query_mask.bool()
        return cls(lm, layers, head, cache_layers, allowed)

    def __call__(self, tokens: Tensor, positions: Tensor) -> Tensor:
        hidden = self.embed(tokens[:, None])
        cos, sin = self.rotary(hidden, positions)
        batch = hidden.size(0)
        end = self.cache[0].length + 1
        mask = self.allowed[..., :end] if self.allowed is not None else None
        for layer, cache in zip(self.layers, self.cache):
            residual = hidden
            x = layer.norm1(hidden)
            q, k, v = (y.view(batch, 1, -1, layer.head_dim).transpose(1, 2) for y in layer.qkv(x))
            q, k = self.rope(q, k, cos, sin)
            keys, values = cache.update(k, v)
            if mask is None:
                out = F.scaled_dot_product_attention(q, keys, values, attn_mask=None, dropout_p=0.0, scale=layer.scale,
                                                     is_causal=False, enable_gqa=layer.heads != layer.kv_heads)
            else:  # one query: its heads packed per key/value head, so that no key is repeated
                q = q.reshape(batch, layer.kv_heads, layer.heads // layer.kv_heads, layer.head_dim)
                out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, dropout_p=0.0, scale=layer.scale,
                                                     is_causal=False)
            out = out.reshape(batch, -1, 1, layer.head_dim).transpose(1, 2).contiguous()
            hidden = residual + layer.o(out.reshape(batch, 1, -1).contiguous())
            residual = hidden
            x = layer.norm2(hidden)
            gate, up = layer.gate_up(x)
            hidden = residual + layer.down(layer.act(gate) * up)
        return self.head(self.norm(hidden))[:, -1]
