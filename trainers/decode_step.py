"""One decoding step of a Llama model as plain tensor operations, without the work its forward does per call.

For one new token per row, `LlamaForCausalLM.forward` rebuilds a 4-D attention mask from the whole 2-D mask,
dispatches through some 25 modules per layer (each with its hook checks; peft's LoRA wrappers; the attention
registry; the cache object's update) and wraps its outputs in dataclasses. For SmolLM2 decoding 16 rows that
Python work costs about as much as the matrix products (`python -m benchmarks.decode_floor`). `LeanDecoder` reads
the same weights and calls the same tensor operations, in the same order and dtypes, as that forward on the same
inputs (decoding one token per row into a `trainers.kv_cache.RoomyLayer` cache), so its logits are the same bits;
what it skips is:

- the mask: built once per sampling call (the prompt's padding, then room for every new token) and sliced per
  step, instead of rebuilt from a concatenated 2-D mask;
- module dispatch: each linear layer, norm and activation is called through its `forward` (already bound: a
  few-row product from `trainers.decode_linear` or a folded LoRA layer stays as it is set up), and a LoRA layer
  with live adapters runs peft's sum `base(x) + B(A(x)) * scale` directly;
- the cache object: keys and values are written into the cache's preallocated buffers.

Only what this step reproduces is accepted (`LeanDecoder.build` returns None otherwise, and the caller keeps the
model's own forward): `LlamaForCausalLM` with SDPA attention, plain or LoRA linear layers in eval mode, and a
cache of `RoomyLayer`s with room for the tokens to come.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainers.kv_cache import RoomyLayer

Fn = Callable[[Tensor], Tensor]


def _plain_call(module: nn.Module) -> Fn:
    """`module(x)` without the call machinery: its bound forward, unless hooks must run (then the full call)."""
    if module._forward_hooks or module._forward_pre_hooks:
        return module
    return module.forward


def linear_fn(module: nn.Module) -> Fn | None:
    """x -> module(x) for an `nn.Linear` or a peft LoRA `Linear` around one; None for anything else.

    A LoRA layer with live adapters computes peft's unmerged sum: y = base(x); for each active adapter
    y = y + B(A(x')) * scale with x' = x cast to A's dtype; then y cast back to base(x)'s dtype."""
    if type(module) is nn.Linear:
        return _plain_call(module)
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:  # peft absent: no LoRA layers to meet
        return None
    if type(module) is not LoraLinear or module._forward_hooks or module._forward_pre_hooks:
        return None
    base = linear_fn(module.get_base_layer())
    if base is None or module.disable_adapters or module.merged:
        return base
    adapters = []
    for name in module.active_adapters:
        if name not in module.lora_A:
            continue
        dropout = module.lora_dropout[name]
        if name in module.lora_variant or (dropout.training and isinstance(dropout, nn.Dropout) and dropout.p > 0):
            return None  # DoRA-like variants and live dropout: left to peft
        a, b = linear_fn(module.lora_A[name]), linear_fn(module.lora_B[name])
        if a is None or b is None:
            return None
        cast = module.lora_A[name].weight.dtype if getattr(module, "cast_input_dtype_enabled", True) else None
        adapters.append((a, b, module.scaling[name], cast))
    if not adapters:
        return base

    def lora_forward(x: Tensor) -> Tensor:
        result = base(x)
        dtype = result.dtype
        for a, b, scale, cast in adapters:
            if cast is not None and x.dtype != cast:
                x = x.to(cast)
            result = result + b(a(x)) * scale
        return result.to(dtype)

    return lora_forward


class _Layer:
    """The callables and sizes of one decoder layer."""

    __slots__ = ("norm1", "q", "k", "v", "o", "norm2", "gate", "up", "down", "act", "heads", "kv_heads", "head_dim",
                 "scale")

    def __init__(self, layer: nn.Module) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        self.norm1, self.norm2 = _plain_call(layer.input_layernorm), _plain_call(layer.post_attention_layernorm)
        self.q, self.k, self.v, self.o = (linear_fn(m) for m in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj))
        self.gate, self.up, self.down = (linear_fn(m) for m in (mlp.gate_proj, mlp.up_proj, mlp.down_proj))
        self.act = _plain_call(mlp.act_fn)
        self.head_dim = attn.head_dim
        self.kv_heads = attn.config.num_key_value_heads
        self.heads = self.kv_heads * attn.num_key_value_groups
        self.scale = attn.scaling

    def complete(self) -> bool:
        return all(f is not None for f in (self.q, self.k, self.v, self.o, self.gate, self.up, self.down))


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

    def __init__(self, lm: nn.Module, layers: list[_Layer], cache_layers: list[RoomyLayer], allowed: Tensor | None):
        self.embed = _plain_call(lm.model.embed_tokens)
        self.rotary = lm.model.rotary_emb.forward
        self.norm = _plain_call(lm.model.norm)
        self.head = linear_fn(lm.lm_head)
        self.layers, self.cache, self.allowed = layers, cache_layers, allowed
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        self.rope = apply_rotary_pos_emb

    @classmethod
    def build(cls, model: nn.Module, cache, query_mask: Tensor, new_tokens: int) -> "LeanDecoder | None":
        """A decoder for `model` continuing `cache` (the prefill of prompts with 2-D mask `query_mask`) by up to
        `new_tokens` tokens; None when the model, its layers or the cache are not ones this step reproduces."""
        if not supported(model):
            return None
        lm = _causal_lm(model)
        cache_layers = list(getattr(cache, "layers", ()))
        width = query_mask.size(1)
        if (len(cache_layers) != len(lm.model.layers) or lm.lm_head is None
                or not all(type(c) is RoomyLayer and c.length == width and c._keys.size(2) >= width + new_tokens
                           for c in cache_layers)):
            return None
        layers = [_Layer(layer) for layer in lm.model.layers]
        if not all(layer.complete() for layer in layers) or linear_fn(lm.lm_head) is None:
            return None
        allowed = None
        if not bool(query_mask.all()):
            capacity = cache_layers[0]._keys.size(2)
            allowed = torch.ones(query_mask.size(0), 1, 1, capacity, dtype=torch.bool, device=query_mask.device)
            allowed[:, 0, 0, :width] = query_mask.bool()
        return cls(lm, layers, cache_layers, allowed)

    def __call__(self, tokens: Tensor, positions: Tensor) -> Tensor:
        hidden = self.embed(tokens[:, None])
        cos, sin = self.rotary(hidden, positions)
        batch = hidden.size(0)
        end = self.cache[0].length + 1
        mask = self.allowed[..., :end] if self.allowed is not None else None
        for layer, cache in zip(self.layers, self.cache):
            residual = hidden
            x = layer.norm1(hidden)
            q = layer.q(x).view(batch, 1, -1, layer.head_dim).transpose(1, 2)
            k = layer.k(x).view(batch, 1, -1, layer.head_dim).transpose(1, 2)
            v = layer.v(x).view(batch, 1, -1, layer.head_dim).transpose(1, 2)
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
            hidden = residual + layer.down(layer.act(layer.gate(x)) * layer.up(x))
        return self.head(self.norm(hidden))[:, -1]
