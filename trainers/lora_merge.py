"""Sampling with each LoRA update folded into its weight: one matrix product per adapted layer, not three.

While a rollout samples, the adapters do not change, so W' = W + (alpha / r) * B @ A can be formed once per
rollout chunk; every decoding step then skips the adapter branch (dropout, A, B, scale, add) of every
adapted layer. The original weight tensors are kept aside and put back as they were, bit for bit: adding the
update and subtracting it again would leave rounding residue in the frozen weights, which are also the
reference policy's.

Only float32 weights are folded: rounding W + dW to bfloat16 would make the sampling policy differ from the
trained one (base in bf16 plus the adapter in fp32) by bf16 rounding, and PPO's old log-probs come from
sampling. The cost is one temporary copy of the adapted weights.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.distributed.tensor import DTensor


def _lora_layers(model: nn.Module):
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer) and not module.disable_adapters and not module.merged:
            active = [a for a in module.active_adapters if a in module.lora_A]
            weight = getattr(module.get_base_layer(), "weight", None)
            if (active and isinstance(weight, torch.Tensor) and not isinstance(weight, DTensor)
                    and weight.dtype == torch.float32):  # FSDP shards (DTensor) are left alone
                yield module, active, weight


@contextlib.contextmanager
def folded_adapters(model: nn.Module):
    """Within the context, `model`'s float32 LoRA layers compute with W + dW and skip their adapter branch."""
    swapped = []
    try:
        with torch.no_grad():
            for module, active, weight in list(_lora_layers(model)):
                folded = weight.detach().clone()
                for name in active:
                    folded += module.get_delta_weight(name).to(folded.dtype)
                swapped.append((module, weight, weight.data))
                weight.data = folded
                module.merged_adapters = list(active)  # peft runs only the base layer of a merged layer
        yield len(swapped)
    finally:
        for module, weight, original in swapped:
            weight.data = original
            module.merged_adapters = []
