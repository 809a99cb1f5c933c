"""`TrainConfig`: every setting of what a PPO run computes, frozen and validated on construction.

How fast and where a run computes it (threads, device, decoding levers, trackers) is `trainers.execution.
ExecutionConfig`; a run's id is a function of this configuration alone (`trainers.identity`).

Checks here need no files and no weights (types, ranges, names, cross-field rules); checks that look at
the file system or a model's config.json live in `trainers.preflight`. Every field's help text becomes
`harness train --help`. Names follow the lineage (AlpacaFarm / TRL): kl_coef, cliprange, vf_coef, lam ...
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from trainers import fieldtypes, regularizers

Dtype = Literal["auto", "bfloat16", "float32", "float16"]

# Upper bounds of counts and sizes: beyond them a value is a typo (it would end in MemoryError or run for years)
MAX_COUNT = 10**9
MAX_SIZE = 10**6


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """One PPO run: models, data, sampling, regulariser, PPO hyper-parameters and bookkeeping."""

    # models
    policy: str = _f("tiny-random-llama", "policy (SFT) model: builtin name, local directory or Hugging Face id")
    reward: str = _f(
        "head:tiny-random-llama",
        "reward: a reward-model directory or HF id; 'prepared:PRESET' = the one `harness prepare` trained; 'head:MODEL' = MODEL's backbone with a seeded untrained "
        "scalar head; 'rule:NAME[:ARG...]' = a rule reward (count:TEXT, length:MIN:MAX)",
    )
    value_init: Literal["reward", "policy"] = _f("reward", "initialise the value backbone from the reward model (paper) or the policy")
    reference: Literal["shared", "copy", "one_base"] = _f(
        "shared",
        "shared: reference = policy with adapters disabled and reward = value backbone with adapters disabled "
        "(two frozen backbones); copy: separate frozen copies, as the paper's code; one_base: one frozen backbone "
        "for all four roles (policy and value as named adapters, reference and reward with adapters off), when the "
        "reward is a rule or a head on the policy's base (else the shared layout, and the run says why)",
    )
    value_model: Literal["separate", "policy_head"] = _f(
        "separate",
        "separate: the paper's separate value model, initialised from the reward model (value_init); policy_head: a "
        "scalar head on the policy's last hidden states, trained with it (TRL <= 0.11's "
        "AutoModelForCausalLMWithValueHead; needs value_init='policy')",
    )
    lora: bool = _f(True, "train LoRA adapters (true) or every weight (false: the paper's full fine-tune baseline)")
    lora_r: int = _f(8, "LoRA rank")
    lora_alpha: float = _f(64.0, "LoRA alpha (scaling = alpha / r)")
    lora_dropout: float = _f(0.1, "LoRA dropout (the regularisers 'none' forces 0)")
    lora_target_modules: tuple[str, ...] = _f(("q_proj", "k_proj", "v_proj", "o_proj"), "modules that get LoRA adapters")
    frozen_dtype: Dtype = _f("auto", "dtype of frozen weights; auto: bfloat16 on GPUs and on CPUs where a measured "
                             "bf16 matrix product beats float32, else float32 (trainable weights always stay float32)")
    autocast: bool = _f(True, "run forwards of trainable float32 weights under bfloat16 autocast when the frozen "
                        "dtype resolves to bfloat16 (full fine-tune)")
    gradient_checkpointing: bool = _f(False, "recompute activations in the backward pass (needed at 7B)")
    # data
    prompts: str = _f("", "PPO prompts: JSON/JSONL file of {instruction, input} or 'hf:DATASET[:CONFIG]:SPLIT'")
    prompt_split: str = _f("", "keep only records whose 'split' field equals this (local files; empty: all)")
    prompt_template: Literal["alpaca", "chat", "raw"] = _f("alpaca", "prompt format: the paper's Alpaca template, the tokenizer's chat template, or the instruction as is")
    query_len: int = _f(192, "prompts longer than this many tokens are dropped (AlpacaFarm)")
    # sampling
    response_len: int = _f(300, "maximum response tokens")
    temperature: float = _f(1.0, "sampling temperature (log-probs are taken at this temperature)")
    top_p: float = _f(1.0, "nucleus sampling mass (1: off)")
    top_k: int = _f(0, "top-k sampling (0: off)")
    stop_at_eos: bool = _f(True, "end a response at EOS (false: always sample response_len tokens, for benchmarks "
                           "that must do equal work)")
    penalty_reward: float | None = _f(None, "score given to responses that do not end with EOS (none: keep the "
                                      "score, as AlpacaFarm's default; OpenAI's summarisation setting used -1)")
    # regulariser
    regularizer: str = _f("kl", f"shaped-reward regulariser: {', '.join(regularizers.REGULARIZERS)}")
    kl_coef: float = _f(0.02, "the regulariser's coefficient (beta in the paper; the initial value when adaptive)")
    kl_controller: Literal["fixed", "adaptive"] = _f("fixed", "a fixed kl_coef or the adaptive controller")
    target_kl: float = _f(6.0, "adaptive controller: target per-sequence KL")
    kl_horizon: int = _f(10000, "adaptive controller: horizon in sequences")
    # PPO
    steps: int = _f(200, "PPO steps (one rollout batch each)")
    rollout_batch_size: int = _f(256, "prompts sampled per PPO step")
    step_batch_size: int = _f(128, "sequences per optimiser step (minibatch)")
    micro_batch_size: int = _f(8, "sequences per forward/backward (gradient accumulation up to step_batch_size)")
    rollout_micro_batch_size: int = _f(32, "sequences per generation / scoring chunk")
    noptepochs: int = _f(2, "PPO epochs over each rollout batch")
    lr: float = _f(1e-5, "AdamW learning rate")
    lr_schedule: Literal["constant", "linear"] = _f(
        "constant", "constant: linear warm-up, then constant; linear: Hugging Face's linear schedule (warm-up from 0, "
        "then linear decay to 0 at the horizon), AlpacaFarm's")
    lr_schedule_unit: Literal["optimizer_step", "ppo_step"] = _f(
        "optimizer_step", "what the schedule and warmup_steps count: optimiser steps, or PPO steps (AlpacaFarm steps "
        "its scheduler once per PPO step, after the update)")
    lr_decay_epochs: float = _f(0.0, "linear schedule: decay over floor(prompts x this / rollout_batch_size) PPO "
                                "steps, AlpacaFarm's total_epochs (0: over the run's steps)")
    warmup_steps: int = _f(5, "linear warm-up length, in lr_schedule_unit")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    adam_eps: float = _f(1e-8, "AdamW epsilon")
    max_grad_norm: float = _f(1.0, "gradient clipping norm (0: off)")
    cliprange: float = _f(0.2, "policy ratio clip")
    cliprange_value: float = _f(0.2, "value clip")
    vf_coef: float = _f(0.1, "value loss coefficient")
    gamma: float = _f(1.0, "discount")
    lam: float = _f(0.95, "GAE lambda")
    whiten_rewards: bool = _f(True, "whiten shaped rewards (no mean shift) before GAE")
    whiten_advantages: bool = _f(True, "whiten advantages over the rollout batch")
    # bookkeeping
    seed: int = _f(42, "seed of sampling, dropout, shuffling and head initialisation")
    checkpoint_every: int = _f(20, "save a checkpoint every N steps (and at the last step)")

    def __post_init__(self) -> None:
        fieldtypes.check_types(self)
        errors = list(_cross_field_errors(self))
        if errors:
            raise ValueError("invalid training configuration:\n  - " + "\n  - ".join(errors))

    # derived sizes
    @property
    def num_minibatches(self) -> int:
        return self.rollout_batch_size // self.step_batch_size

    @property
    def optimizer_steps_per_ppo_step(self) -> int:
        return self.noptepochs * self.num_minibatches

    @property
    def grad_accum_steps(self) -> int:
        return self.step_batch_size // self.micro_batch_size

    @property
    def effective_lora_dropout(self) -> float:
        forced = regularizers.get(self.regularizer).lora_dropout
        return self.lora_dropout if forced is None else forced

    @property
    def reward_is_rule(self) -> bool:
        return self.reward.startswith("rule:")

    def derived(self) -> dict[str, Any]:
        """Sizes that follow from the fields, printed beside them by `harness config`."""
        return {"minibatches_per_epoch": self.num_minibatches,
                "optimizer_steps_per_ppo_step": self.optimizer_steps_per_ppo_step,
                "micro_batches_per_optimizer_step": self.grad_accum_steps,
                "effective_lora_dropout": self.effective_lora_dropout}

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        unknown = sorted(set(data) - set(field_names()))
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}; valid fields: {', '.join(field_names())}")
        hints = field_types()
        return cls(**{k: tuple(v) if hints[k] == tuple[str, ...] else v for k, v in data.items()})


# the fields of TrainConfig, by name: for the command line and the config-file readers
field_names = functools.partial(fieldtypes.field_names, TrainConfig)
field_types = functools.partial(fieldtypes.field_types, TrainConfig)
field_help = functools.partial(fieldtypes.field_help, TrainConfig)


def _cross_field_errors(c: TrainConfig):
    if c.regularizer not in regularizers.REGULARIZERS:
        yield f"regularizer={c.regularizer!r} is not known; valid: {', '.join(regularizers.REGULARIZERS)}"
    for name in ("steps", "rollout_batch_size", "step_batch_size", "micro_batch_size", "rollout_micro_batch_size",
                 "noptepochs", "query_len", "response_len", "lora_r", "checkpoint_every", "kl_horizon"):
        if getattr(c, name) < 1:
            yield f"{name}={getattr(c, name)} must be >= 1"
    if c.step_batch_size >= 1 and c.rollout_batch_size % c.step_batch_size:
        yield f"rollout_batch_size={c.rollout_batch_size} must be a multiple of step_batch_size={c.step_batch_size}"
    if c.micro_batch_size >= 1 and c.step_batch_size % c.micro_batch_size:
        yield f"step_batch_size={c.step_batch_size} must be a multiple of micro_batch_size={c.micro_batch_size}"
    if c.rollout_micro_batch_size >= 1 and c.rollout_batch_size % c.rollout_micro_batch_size:
        yield (f"rollout_batch_size={c.rollout_batch_size} must be a multiple of "
               f"rollout_micro_batch_size={c.rollout_micro_batch_size}")
    if not 0.0 <= c.lora_dropout < 1.0:
        yield f"lora_dropout={c.lora_dropout} must be in [0, 1)"
    if c.temperature <= 0:
        yield f"temperature={c.temperature} must be > 0 for PPO sampling"
    if not 0.0 < c.top_p <= 1.0:
        yield f"top_p={c.top_p} must be in (0, 1]"
    if c.top_k < 0:
        yield f"top_k={c.top_k} must be >= 0 (0: off)"
    for name in ("lr", "cliprange", "cliprange_value", "target_kl", "lora_alpha"):
        if getattr(c, name) <= 0:
            yield f"{name}={getattr(c, name)} must be > 0"
    for name in ("gamma", "lam"):
        if not 0.0 <= getattr(c, name) <= 1.0:
            yield f"{name}={getattr(c, name)} must be in [0, 1]"
    for name in field_names():
        value = getattr(c, name)
        if isinstance(value, float) and not math.isfinite(value):
            yield f"{name}={value} must be a finite number"
    if c.adam_eps <= 0:
        yield f"adam_eps={c.adam_eps} must be > 0"
    if c.lr_decay_epochs < 0:
        yield f"lr_decay_epochs={c.lr_decay_epochs} must be >= 0 (0: decay over the run's steps)"
    for name in ("warmup_steps", "weight_decay", "max_grad_norm", "vf_coef", "kl_coef"):
        if getattr(c, name) < 0:
            yield f"{name}={getattr(c, name)} must be >= 0"
    for name, most in (("steps", MAX_COUNT), ("checkpoint_every", MAX_COUNT),
                       ("kl_horizon", MAX_COUNT), ("warmup_steps", MAX_COUNT), ("noptepochs", MAX_SIZE),
                       ("rollout_batch_size", MAX_SIZE), ("step_batch_size", MAX_SIZE), ("micro_batch_size", MAX_SIZE),
                       ("rollout_micro_batch_size", MAX_SIZE), ("query_len", MAX_SIZE), ("response_len", MAX_SIZE),
                       ("lora_r", MAX_SIZE)):
        if getattr(c, name) > most:
            yield f"{name}={getattr(c, name)} must be <= {most}"
    if not c.lora and c.reference in ("shared", "one_base"):
        yield (f"reference={c.reference!r} needs lora=true (the reference is the policy with adapters disabled); "
               "use reference='copy'")
    if c.value_model == "policy_head" and c.value_init == "reward":
        yield ("value_model='policy_head' reads the policy's own hidden states, so value_init='reward' cannot apply; "
               "set value_init='policy'")
    if c.reward_is_rule and c.value_init == "reward":
        yield f"value_init='reward' needs a reward model, but reward={c.reward!r} is a rule; use value_init='policy'"
    if not c.reward:
        yield "reward='' is empty: give a reward-model path or id, 'head:MODEL' or 'rule:NAME'"
    if not c.policy:
        yield "policy='' is empty: give a builtin name, a local directory or a Hugging Face id"
    if not c.prompts:
        yield "prompts='' is empty: give a JSON/JSONL file or 'hf:DATASET[:CONFIG]:SPLIT'"
    if not c.lora_target_modules:
        yield "lora_target_modules=() is empty"
