"""Predicting per-device memory of a PPO run before running it (`harness plan`).

Components, in bytes, for one device:
- weights: every backbone the layout places there, frozen ones in the frozen dtype, trained ones in fp32;
- trainable state: fp32 weights of the adapters (or the whole model) + fp32 gradients + AdamW's two moments;
- training activations of one micro-batch through one backbone at a time (the policy's backward runs before
  the value forward): tokens x layers x (A_h * hidden + A_i * intermediate) x 4 bytes, or with gradient
  checkpointing the layer inputs plus one layer's activations. 4 bytes whatever the frozen dtype: with bfloat16
  frozen weights much of what the backward keeps is still float32 (the LoRA branches' inputs, cast to the
  adapters' dtype; the norms' upcasts; autocast's weight copies in a full fine-tune). Measured with bfloat16
  frozen weights (`python -m benchmarks.ppo_modes`), 4 bytes put every mode within 8% of its peak, 2 bytes
  put its LoRA modes 28-33% short. For the layer inputs that gradient checkpointing keeps (bf16 hidden states
  between layers) it is an upper bound;
- logits: micro-batch response tokens x vocabulary x 4 bytes x 3 (logits, log-sum-exp input, its gradient);
- rollout: the policy's kept logits and the reference's (rollout micro-batch x response x vocabulary x 4 B
  each, x 2 for the reference's temperature copy) and the KV cache;
- runtime: the CPU process baseline (Python, torch, transformers), a measured constant; 0 on a GPU, whose
  allocator peak does not count the CUDA context.
Peak = weights + trainable state + runtime + max(rollout phase, training phase).

Layouts: LoRA on N GPUs is data parallel (each device holds every model); full fine-tuning on N GPUs shards
weights, gradients and optimizer states FSDP-style (1/N each, plus one gathered layer). reference='one_base' holds
one frozen backbone (the policy's; reference, reward and value read it through adapters), and is planned as if the
reward model were a head on the policy's base whatever `reward` names: `harness train` falls back to two backbones
when it is not (`trainers.one_base.obstacle` says why). value_model='policy_head' holds no value backbone and trains
no value adapter: only a head on the policy. The activation
coefficients were fitted once on SmolLM2-135M in eager fp32 on CPU (2.75 GB for 8 x 143 tokens).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from trainers import heads, models
from trainers.config import TrainConfig
from trainers.specs import MODEL_CONFIG

GIB = 2**30
ACT_PER_HIDDEN, ACT_PER_INTERMEDIATE = 17, 6
ACTIVATION_BYTES = 4  # per element, for float32 and bfloat16 frozen weights alike (module docstring)
CPU_RUNTIME_BYTES = int(0.45 * GIB)
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# What CUDA shows of each card, not its data-sheet size where the two differ by more than a GiB (an L40S's
# "48 GB" is 46,068 MiB; an H200's "141 GB" about 139 GiB).
GPU_BYTES = {"a100-80gb": 80 * GIB, "a100-40gb": 40 * GIB, "h100-80gb": 80 * GIB, "h200": 139 * GIB,
             "rtx4090-24gb": 24 * GIB, "l40s-48gb": 45 * GIB}


@dataclass(frozen=True, slots=True)
class Dims:
    """What memory depends on in a decoder's config."""

    params: int
    layers: int
    hidden: int
    intermediate: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    lora_params_per_layer: int  # adapters for q/k/v/o at rank 1

    @classmethod
    def from_config(cls, c: dict) -> "Dims":
        c = c.get("text_config", c)
        h, i, L, v = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
        heads_ = c["num_attention_heads"]
        kv = c.get("num_key_value_heads") or heads_
        hd = c.get("head_dim") or h // heads_
        tied = bool(c.get("tie_word_embeddings", False))
        attn = h * heads_ * hd * 2 + h * kv * hd * 2
        per_layer = attn + 3 * h * i + 2 * h
        params = L * per_layer + v * h * (1 if tied else 2) + h
        lora = (h + heads_ * hd) * 2 + (h + kv * hd) * 2
        return cls(params, L, h, i, kv, hd, v, tied, lora)


# Architectures by name, for planning without the weights at hand.
KNOWN = {
    "llama-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=32, vocab_size=32001, tie_word_embeddings=False),  # + AlpacaFarm's [PAD]
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),
}


def dims(spec: str) -> Dims:
    """Dimensions of a model spec, read from its config only."""
    spec = heads.reward_backbone_spec(spec)
    if spec == models.TINY:
        return Dims.from_config(models.tiny_random_llama().config.to_dict())
    if spec == models.SMOLLM2:
        return Dims.from_config(KNOWN["smollm2-135m"])
    if spec in KNOWN:
        return Dims.from_config(KNOWN[spec])
    if models.is_random_llama(spec):
        return Dims.from_config(models.random_llama_config(spec).to_dict())
    path = Path(spec).expanduser() / MODEL_CONFIG
    if path.is_file():
        return Dims.from_config(json.loads(path.read_text()))
    from transformers import AutoConfig

    return Dims.from_config(AutoConfig.from_pretrained(spec).to_dict())


def dims_offline(spec: str) -> Dims | None:
    """`dims(spec)` where no download is needed (the builtin models, `KNOWN`, `random-llama:` shapes, a local
    config.json); None for a hub id."""
    backbone = heads.reward_backbone_spec(spec)
    if (backbone in (models.TINY, models.SMOLLM2) or backbone in KNOWN or models.is_random_llama(backbone)
            or (Path(backbone).expanduser() / MODEL_CONFIG).is_file()):
        return dims(backbone)
    return None


@dataclass(frozen=True, slots=True)
class Plan:
    components: dict[str, int]  # bytes on the busiest device
    total: int
    device_bytes: int | None
    gpus: int

    @property
    def fits(self) -> bool | None:
        return None if self.device_bytes is None else self.total <= self.device_bytes


def _activations(d: Dims, tokens: int, dtype_bytes: int, checkpointing: bool) -> int:
    per_layer = tokens * (ACT_PER_HIDDEN * d.hidden + ACT_PER_INTERMEDIATE * d.intermediate) * dtype_bytes
    if checkpointing:
        return tokens * d.hidden * dtype_bytes * d.layers + per_layer
    return per_layer * d.layers


def plan(cfg: TrainConfig, *, gpus: int = 0, device_bytes: int | None = None, frozen_dtype: str | None = None,
         query_tokens: int | None = None, policy_dims: Dims | None = None, reward_dims: Dims | None = None) -> Plan:
    """Predicted peak memory of the busiest device (gpus=0: this CPU process)."""
    pd = policy_dims or dims(cfg.policy)
    # a prepared reward model is trained from the policy's backbone (`harness prepare`), so it has its dimensions
    one_base = cfg.lora and cfg.reference == "one_base"  # the reward read as a head on the policy's base
    head_value = cfg.value_model == "policy_head"
    rd = reward_dims or (pd if one_base or cfg.reward_is_rule or cfg.reward.startswith(heads.PREPARED)
                         else dims(cfg.reward))
    vd = rd if cfg.value_init == "reward" and not one_base else pd
    frozen = DTYPE_BYTES[frozen_dtype or ("bfloat16" if cfg.frozen_dtype == "auto" and gpus else
                                          "float32" if cfg.frozen_dtype == "auto" else cfg.frozen_dtype)]
    shards = max(gpus, 1) if not cfg.lora else 1  # FSDP shards only the full fine-tune
    compute = 2 if frozen == 2 else 4
    c: dict[str, int] = {}
    if cfg.lora:
        value_lora = 0 if head_value else vd.lora_params_per_layer * vd.layers
        lora = cfg.lora_r * (pd.lora_params_per_layer * pd.layers + value_lora) + vd.hidden + 1
        c["weights/policy"] = pd.params * frozen
        c["weights/reference"] = pd.params * frozen if cfg.reference == "copy" else 0
        reward_copy = cfg.reference == "copy" or cfg.value_init == "policy"
        c["weights/reward"] = 0 if cfg.reward_is_rule or one_base else rd.params * frozen
        separate_value = not (head_value or one_base) and (reward_copy or cfg.reward_is_rule)
        c["weights/value"] = vd.params * frozen if separate_value else 0
        c["trainable/weights+grads+adam"] = lora * 16
    else:
        c["weights/reference"] = pd.params * frozen // shards
        c["weights/reward"] = 0 if cfg.reward_is_rule else rd.params * frozen // shards
        trained = pd.params + (vd.hidden + 1 if head_value else vd.params)
        c["trainable/weights+grads+adam"] = trained * 16 // shards
        if shards > 1:
            c["fsdp/gathered_layer"] = 2 * 4 * (pd.params // pd.layers)
    c["runtime"] = 0 if gpus else CPU_RUNTIME_BYTES
    per_device_micro = cfg.micro_batch_size
    q = query_tokens if query_tokens is not None else cfg.query_len
    tokens = per_device_micro * (q + cfg.response_len)
    train = (max(_activations(pd, tokens, ACTIVATION_BYTES, cfg.gradient_checkpointing),
                 _activations(vd, tokens, ACTIVATION_BYTES, cfg.gradient_checkpointing))
             + per_device_micro * cfg.response_len * pd.vocab * 4 * 3)
    rollout_b = cfg.rollout_micro_batch_size
    kv = 2 * pd.layers * pd.kv_heads * pd.head_dim * rollout_b * (q + cfg.response_len) * compute
    rollout = rollout_b * cfg.response_len * pd.vocab * 4 * 3 + kv
    if cfg.lora and gpus >= 2 and cfg.reference == "copy":
        # the paper's placement: policy and value train on one device, frozen reference and reward on another
        frozen_side = {k: c.pop(k) for k in ("weights/reference", "weights/reward")}
        frozen_side["phase/reference_logits"] = rollout_b * cfg.response_len * pd.vocab * 4 * 2
        c["phase/" + ("training" if train >= rollout else "rollout")] = max(train, rollout)
        busiest = max((c, frozen_side), key=lambda d: sum(d.values()))
        return Plan(busiest, sum(busiest.values()), device_bytes, gpus)
    c["phase/" + ("training" if train >= rollout else "rollout")] = max(train, rollout)
    total = sum(c.values())
    return Plan(c, total, device_bytes, gpus)


PLAN_ERROR = 0.15  # how far a prediction may be from a measured peak (tests/test_memory_plan.py)


def fits_with_margin(total: int, device_bytes: int, margin: float = PLAN_ERROR) -> bool:
    """Whether a device of `device_bytes` holds a plan of `total` bytes plus `margin` of them."""
    return total * (1 + margin) <= device_bytes


def smallest_single_gpu(total: int, margin: float = PLAN_ERROR) -> str | None:
    """The listed GPU (`GPU_BYTES`) with the least memory that holds `total` bytes plus `margin` of them, or None."""
    fitting = sorted((size, name) for name, size in GPU_BYTES.items() if fits_with_margin(total, size, margin))
    return fitting[0][1] if fitting else None


def smallest_fitting(cfg: TrainConfig, device_bytes: int, max_gpus: int = 64, **kw) -> int | None:
    """The fewest GPUs (powers of two) whose busiest device fits, or None."""
    n = 1
    while n <= max_gpus:
        if plan(cfg, gpus=n, device_bytes=device_bytes, **kw).fits:
            return n
        n *= 2
    return None
