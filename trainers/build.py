"""Assembling the four PPO roles (policy, reference, reward, value) from a `TrainConfig`.

LoRA, reference='shared': two frozen backbones in all: the policy's (its adapters off = the reference)
and the reward model's (its adapters on = the value model, with a zero-initialised value head).
reference='one_base': one frozen backbone, the policy's, for all four roles (`trainers.one_base`), when the reward
model is a head on it; otherwise the 'shared' layout, with a line saying why.
reference='copy': the paper's layout, four separate models (reference and reward frozen).
lora=false: the full fine-tune baseline: policy and value backbones trained in float32, frozen copies
for the reference and the reward.
value_model='policy_head': no value backbone in any layout: the value is a head on the policy's last hidden states.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from peft import LoraConfig, TaskType, get_peft_model
from torch import nn

from trainers import heads, models, one_base
from trainers.config import TrainConfig
from trainers.heads import ScalarHeadModel
from trainers.one_base import HeadOnBase, SharedBase
from trainers.precision import resolve_frozen_dtype
from trainers.rewards import RuleReward, parse_rule


@dataclass
class PPOModels:
    policy: nn.Module
    reference: nn.Module | None  # None: the policy with its adapters disabled
    value: ScalarHeadModel
    reward: ScalarHeadModel | RuleReward
    tokenizer: object
    reward_tokenizer: object | None  # None: the policy's tokenizer (ids are passed as they are)
    stop_ids: list[int]
    layout: str = "shared"  # what was built: shared, one_base, copy or full
    base: SharedBase | None = None  # one_base: the policy's model as the other roles read it

    @property
    def reward_reads_reference(self) -> bool:
        """Whether the reward model reads the reference's weights (the shared base, no adapter), so that one forward
        serves both."""
        return isinstance(self.reward, HeadOnBase) and self.reward.names == ()

    def value_context(self):
        """Context for the value model's forward and backward (one_base: its adapter running)."""
        return self.value.active() if isinstance(self.value, HeadOnBase) else contextlib.nullcontext()

    def reference_context(self):
        """Context in which calling `reference_model` gives the reference policy."""
        if self.base is not None:  # one_base: through the base, which keeps the value adapter trainable
            return self.base.adapters(())
        return self.policy.disable_adapter() if self.reference is None else contextlib.nullcontext()

    def sampling_context(self, fold_adapters: bool, few_row_products: bool):
        """Context for sampling from the policy: its LoRA updates folded into the weights, and its linear
        layers in the layout that suits few-row products, when asked (trainers.lora_merge, .decode_linear)."""
        from trainers import decode_linear, lora_merge

        stack = contextlib.ExitStack()
        if fold_adapters and hasattr(self.policy, "peft_config"):
            stack.enter_context(lora_merge.folded_adapters(self.policy))
        stack.enter_context(decode_linear.few_row_products(self.policy, few_row_products))
        return stack

    @property
    def reference_model(self) -> nn.Module:
        return self.policy if self.reference is None else self.reference

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The policy's, then the value model's (one_base: its adapter too, though it lives in the policy's model)."""
        seen = {id(p) for p in self.value.parameters()}
        params = [p for p in self.policy.parameters() if p.requires_grad and id(p) not in seen]
        for p in self.value.parameters():
            if p.requires_grad:
                params.append(p)
        return params

    def policy_parameters(self) -> list[nn.Parameter]:
        """The policy's own: its base and its adapter (one_base's policy model also holds the value's and a reward's
        adapters)."""
        others = self.base.adapter_parameter_ids(exclude=one_base.POLICY) if self.base is not None else set()
        return [p for p in self.policy.parameters() if id(p) not in others]

    def parameter_counts(self) -> dict[str, int]:
        """Trainable and total parameters, each tensor counted once even when shared."""
        seen: dict[int, nn.Parameter] = {}
        for module in (self.policy, self.reference, self.value, self.reward):
            if isinstance(module, nn.Module):
                for p in module.parameters():
                    seen[id(p)] = p
        return {
            "trainable": sum(p.numel() for p in self.trainable_parameters()),
            "total": sum(p.numel() for p in seen.values()),
            "policy_trainable": sum(p.numel() for p in self.policy_parameters() if p.requires_grad),
            "policy_total": sum(p.numel() for p in self.policy_parameters()),
        }


def lora_config(cfg: TrainConfig, task_type: TaskType) -> LoraConfig:
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.effective_lora_dropout,
                      target_modules=list(cfg.lora_target_modules), task_type=task_type, bias="none")


def _freeze(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


def contiguous_lm_head(model: nn.Module) -> None:
    """Make the LM head read contiguous hidden states.

    Transformers slices the positions to keep (`logits_to_keep`) as a strided view; a strided 3-D input to a
    Linear cannot be folded into one matrix product, and PyTorch falls back to a batched product against
    an expanded weight, slower than one product (`python -m benchmarks.profile_step` shows it in a scoring
    forward).
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if isinstance(head, nn.Linear):
        head.register_forward_pre_hook(lambda _module, args: (args[0].contiguous(), *args[1:]))


def _checkpointing(module: nn.Module) -> None:
    base = module.get_base_model() if hasattr(module, "get_base_model") else module
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def build_models(cfg: TrainConfig, device: torch.device, frozen: torch.dtype | None = None, log=None) -> PPOModels:
    """The four roles on `device`; frozen weights in `frozen` (default: `cfg.frozen_dtype` resolved here)."""
    frozen = frozen or resolve_frozen_dtype(cfg.frozen_dtype, device)
    tokenizer = models.load_tokenizer(cfg.policy)
    layout = cfg.reference if cfg.lora else "full"
    if layout == "one_base" and (why := one_base.obstacle(cfg)) is not None:
        (log or print)(f"reference='one_base' falls back to reference='shared' (two frozen backbones): {why}")
        layout = "shared"

    # 1. policy and reference
    if cfg.lora:
        policy = get_peft_model(_freeze(models.load_causal_lm(cfg.policy, frozen)), lora_config(cfg, TaskType.CAUSAL_LM))
        reference = _freeze(models.load_causal_lm(cfg.policy, frozen)) if cfg.reference == "copy" else None
    else:
        policy = models.load_causal_lm(cfg.policy, torch.float32)
        reference = _freeze(models.load_causal_lm(cfg.policy, frozen))
    stop_ids = models.stop_token_ids(tokenizer, policy)
    for lm in (policy, reference):
        if lm is not None:
            contiguous_lm_head(lm)

    if layout == "one_base":  # 2-3. reward and value on the policy's base
        base, reward, value = one_base.attach_roles(cfg, policy, lora_config(cfg, TaskType.CAUSAL_LM))
        if cfg.gradient_checkpointing:
            _checkpointing(policy)
        return _placed(PPOModels(policy, None, value, reward, tokenizer, None, stop_ids, layout, base), device)

    # 2. reward
    reward_tokenizer = None
    if cfg.reward_is_rule:
        reward: ScalarHeadModel | RuleReward = parse_rule(cfg.reward)
    else:
        reward = _freeze(heads.load_reward_model(cfg.reward, frozen, seed=cfg.seed))
        reward_tok = models.load_tokenizer(heads.reward_backbone_spec(cfg.reward))
        if reward_tok.get_vocab() != tokenizer.get_vocab():
            if cfg.value_init == "reward":
                raise ValueError(f"value_init='reward' needs the reward model's tokenizer to equal the policy's; "
                                 f"reward={cfg.reward!r} and policy={cfg.policy!r} differ: use value_init='policy'")
            reward_tokenizer = reward_tok

    # 3. value: a backbone with a zero-initialised head, or that head on the policy
    value_backbone = None
    if cfg.value_model == "policy_head":
        hidden = heads.hidden_size(policy.get_base_model() if cfg.lora else policy)
        value: ScalarHeadModel = HeadOnBase(SharedBase(policy), heads.new_head(hidden, zero=True, seed=cfg.seed), None)
    elif cfg.value_init == "reward" and layout == "shared":
        reward.backbone = get_peft_model(reward.backbone, lora_config(cfg, TaskType.FEATURE_EXTRACTION))
        reward.adapters_off = True
        value_backbone = reward.backbone
    else:
        source = cfg.reward if cfg.value_init == "reward" else cfg.policy
        value_backbone = heads.load_backbone(heads.reward_backbone_spec(source), frozen if cfg.lora else torch.float32)
        if cfg.lora:
            value_backbone = get_peft_model(_freeze(value_backbone), lora_config(cfg, TaskType.FEATURE_EXTRACTION))
    if value_backbone is not None:
        value = ScalarHeadModel(value_backbone, heads.new_head(heads.hidden_size(value_backbone), zero=True,
                                                               seed=cfg.seed))

    if cfg.gradient_checkpointing:
        _checkpointing(policy)
        if value_backbone is not None:
            _checkpointing(value_backbone)
    return _placed(PPOModels(policy, reference, value, reward, tokenizer, reward_tokenizer, stop_ids, layout), device)


def _placed(bundle: PPOModels, device: torch.device) -> PPOModels:
    for module in (bundle.policy, bundle.reference, bundle.value, bundle.reward):
        if isinstance(module, nn.Module):
            module.to(device)
    return bundle
