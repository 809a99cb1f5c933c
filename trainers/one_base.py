"""reference='one_base': the four PPO roles on ONE frozen backbone, through PEFT named adapters.

On the policy's PEFT model:
- policy     adapter "default" (trained), as in every LoRA layout;
- reference  the model with its adapters disabled;
- reward     the base with its adapters disabled (or with its own frozen adapter "reward", when the reward-model
             directory carries one: `trainers.heads`), read by the reward model's frozen scalar head (or a rule,
             which reads the text);
- value      adapter "value" (trained; over "reward" too when value_init='reward' and the reward has an adapter, so
             that the value model starts as the reward model, as in the two-base layouts), read by a
             zero-initialised head, the head every layout's value model starts from.
LoRA updates add up (W x + sum_i s_i B_i A_i x), so each role computes what its own backbone computes in the two-base
layout: a run equals reference='shared' with the same seed (tests/test_one_base.py). The reward's head, the value
adapter and the value head are created in the order `trainers.build` creates the separate reward and value models,
so the global generator is drawn in the same order: the same initial adapters and the same LoRA dropout masks.

Work shared within a rollout: the reference and a reward read through no adapter run the same weights over the same
ids, so one adapters-off forward gives both the reference logits and the reward's hidden states (`trainers.rollout`).
Running the value rows in that forward too, as a mixed-adapter batch (PEFT's `adapter_names=`), was measured and
not kept: 2.96 s of CPU time against 2.69 s for two forwards (SmolLM2-135M, 4 rows of 120 tokens, 1 thread, on a
shared 2-core machine).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from peft import LoraConfig, TaskType
from peft.tuners.lora import LoraLayer
from torch import Tensor, nn

from trainers import heads
from trainers.config import TrainConfig
from trainers.heads import ScalarHeadModel
from trainers.rewards import RuleReward, parse_rule

POLICY, VALUE, REWARD = "default", "value", "reward"  # adapter names


def obstacle(cfg: TrainConfig) -> str | None:
    """Why `cfg` cannot put every role on the policy's base, or None when it can."""
    if not cfg.lora:
        return "lora=false trains every weight of the policy, so no frozen base is left to share"
    if cfg.reward_is_rule:
        return None
    backbone = heads.reward_backbone_spec(cfg.reward)
    if not same_model(backbone, cfg.policy):
        return (f"reward={cfg.reward!r} has backbone {backbone!r}, not the policy's base {cfg.policy!r}: one frozen "
                "base needs a reward model that is a head (or a LoRA adapter and a head) on the policy's base")
    return None


def same_model(a: str, b: str) -> bool:
    """Whether two model specs name the same model: the same name, or the same directory."""
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.is_dir() and pb.is_dir() and pa.resolve() == pb.resolve()


class SharedBase:
    """The policy's model as other roles read it: its decoder stack, its LM head, and which adapters run."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.stack = inner.get_decoder()
        self.lm_head = inner.get_output_embeddings()
        self.lora_layers = [m for m in model.modules() if isinstance(m, LoraLayer)]

    @contextlib.contextmanager
    def adapters(self, names: tuple[str, ...] | None):
        """Within the context only the adapters `names` run: () none (the frozen base), None those running now."""
        if names is None:
            yield
            return
        # PEFT's switches also set which adapters train (the running ones; none while disabled, and only the running
        # ones again after): every adapter tensor keeps its own flag here
        flags = [(p, p.requires_grad) for layer in self.lora_layers for p in layer.parameters()]
        switch = self.model.disable_adapter() if not names else self._running(list(names))
        try:
            with switch:
                _restore(flags)
                yield
        finally:
            _restore(flags)

    @contextlib.contextmanager
    def _running(self, names: list[str]):
        before = list(self.lora_layers[0].active_adapters)
        for layer in self.lora_layers:
            layer.set_adapter(names)
        try:
            yield
        finally:
            for layer in self.lora_layers:
                layer.set_adapter(before)

    def adapter_parameter_ids(self, exclude: str) -> set[int]:
        """ids of every adapter's tensors but adapter `exclude`'s."""
        return {id(p) for layer in self.lora_layers for name in layer.lora_A if name != exclude
                for p in (*layer.lora_A[name].parameters(), *layer.lora_B[name].parameters())}

    def hidden_states(self, ids: Tensor, mask: Tensor, pos: Tensor, names: tuple[str, ...] | None) -> Tensor:
        with self.adapters(names):
            return self.stack(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).last_hidden_state


def _restore(flags: list[tuple[nn.Parameter, bool]]) -> None:
    for p, flag in flags:
        p.requires_grad_(flag)


class HeadOnBase(ScalarHeadModel):
    """A scalar head on the shared base's last hidden states, with the adapters `names` running (None: the policy's
    own). Its parameters are the head's and, for a value model, its adapter's: the base's weights are the policy's
    and are not registered here a second time."""

    def __init__(self, base: SharedBase, head: nn.Linear, names: tuple[str, ...] | None, score_token: str = "eos",
                 adapter: dict[str, nn.Module] | None = None) -> None:
        nn.Module.__init__(self)
        # the adapter before the head: parameters in the order of a separate value model's (backbone, then head)
        self.adapter = nn.ModuleDict(adapter or {})
        self.head = head
        self.backbone = None
        self.base = base  # a plain object, not a submodule
        self.names = names
        self.score_token = heads.check_score_token(score_token)
        self.adapters_off = False

    def hidden_states(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor) -> Tensor:
        return self.base.hidden_states(input_ids, attention_mask, position_ids, self.names)

    def active(self):
        """Context for a forward and its backward: gradient checkpointing reruns the forward in the backward, which
        must see the same adapters."""
        return self.base.adapters(self.names)

    def logits_and_values(self, ids: Tensor, mask: Tensor, pos: Tensor, start: int, length: int) -> tuple[Tensor, Tensor]:
        """LM logits [B, length, V] and head outputs [B, length] at positions [start, start + length), from one
        forward (a head on the policy: value_model='policy_head')."""
        h = self.hidden_states(ids, mask, pos)[:, start:start + length]
        return self.base.lm_head(h), self.head(h.to(self.head.weight.dtype)).squeeze(-1)


def adapter_modules(base: SharedBase, name: str) -> dict[str, nn.Module]:
    """Adapter `name`'s modules in every LoRA layer (A, B and its dropout), keyed for an nn.ModuleDict."""
    found: dict[str, nn.Module] = {}
    for path, layer in base.stack.named_modules():
        if isinstance(layer, LoraLayer) and name in layer.lora_A:
            key = path.replace(".", "_")
            found.update({f"{key}_A": layer.lora_A[name], f"{key}_B": layer.lora_B[name],
                          f"{key}_dropout": layer.lora_dropout[name]})
    return found


def add_frozen_adapter(model: nn.Module, name: str, settings: dict, tensors: dict[str, Tensor]) -> None:
    """Load a reward model's LoRA adapter (`heads.reward_adapter`) into `model` as the named adapter `name`."""
    pairs = heads.adapter_pairs(tensors)
    config = LoraConfig(r=settings["r"], lora_alpha=settings["lora_alpha"], lora_dropout=0.0,
                        target_modules=sorted(pairs), task_type=TaskType.CAUSAL_LM, bias="none")
    with torch.random.fork_rng(devices=[]):  # its random start is overwritten: leave the global generator as it was
        model.add_adapter(name, config)
    stack = model.get_base_model().get_decoder()
    with torch.no_grad():
        for module_name, (a, b) in pairs.items():
            layer = stack.get_submodule(module_name)
            layer.lora_A[name].weight.copy_(a)
            layer.lora_B[name].weight.copy_(b)


def attach_roles(cfg: TrainConfig, policy: nn.Module, value_lora: LoraConfig
                 ) -> tuple[SharedBase, ScalarHeadModel | RuleReward, HeadOnBase]:
    """Reward and value models on `policy`'s base (a PEFT model with its adapter "default"): (base, reward, value)."""
    hidden = heads.hidden_size(policy.get_base_model())
    # the reward: its head, and its adapter if it has one (created first, as build_models loads the reward model)
    reward_names: tuple[str, ...] = ()
    if cfg.reward_is_rule:
        reward_head, score_token = None, "eos"
    else:
        reward_head, score_token = heads.load_reward_head(cfg.reward, hidden, cfg.seed)
        adapter = heads.reward_adapter(cfg.reward)
        if adapter is not None:
            add_frozen_adapter(policy, REWARD, *adapter)
            reward_names = (REWARD,)
    # the value: its own adapter (unless a head on the policy), then its zero-initialised head
    if cfg.value_model == "policy_head":
        value_names = None
    else:
        policy.add_adapter(VALUE, value_lora)
        value_names = (reward_names if cfg.value_init == "reward" else ()) + (VALUE,)
    value_head = heads.new_head(hidden, zero=True, seed=cfg.seed)
    base = SharedBase(policy)
    for layer in base.lora_layers:  # train the policy's and the value's adapters; the reward's stays frozen
        for name in layer.lora_A:
            for module in (layer.lora_A[name], layer.lora_B[name]):
                module.requires_grad_(name in (POLICY, VALUE))
    if reward_head is None:
        reward: ScalarHeadModel | RuleReward = parse_rule(cfg.reward)
    else:
        reward = HeadOnBase(base, reward_head.requires_grad_(False), reward_names, score_token).eval()
    value = HeadOnBase(base, value_head, value_names,
                       adapter=adapter_modules(base, VALUE) if value_names is not None else None)
    return base, reward, value
