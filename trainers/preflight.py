"""Checks that need the file system or a model's config.json, run before any weights load."""

from __future__ import annotations

import torch

from trainers import data, heads, models, rewards
from trainers.config import TrainConfig


def problems(cfg: TrainConfig) -> list[str]:
    """Every problem found, each naming the field, the value and what is allowed."""
    found: list[str] = []
    if (msg := models.describe_spec_error("policy", cfg.policy)) is not None:
        found.append(msg)
    if cfg.reward_is_rule:
        try:
            rewards.parse_rule(cfg.reward)
        except ValueError as e:
            found.append(str(e))
    else:
        where = heads.resolve_reward_spec(cfg.reward)  # the directory (or head:MODEL)
        if cfg.reward.startswith(heads.PREPARED) and not heads.is_reward_model_dir(where):
            name = cfg.reward.removeprefix(heads.PREPARED)
            found.append(f"reward={cfg.reward!r} has not been prepared yet ({where} is missing); run "
                         f"`harness prepare --preset {name}` first (it trains the proxy reward model)")
        elif (msg := models.describe_spec_error("reward", heads.reward_backbone_spec(cfg.reward))) is not None:
            found.append(msg)  # the backbone: the directory itself, or the model a head-only directory names
        elif not cfg.reward.startswith("head:") and not heads.is_reward_model_dir(where):
            found.append(f"reward={cfg.reward!r} is not a reward-model directory ({heads.HEAD_WEIGHTS} missing); "
                         "use 'harness models recover', a prepared reward model, 'head:MODEL' or 'rule:NAME'")
    if (msg := data.describe_source_error(cfg.prompts)) is not None:
        found.append(msg)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        found.append("device='cuda' but torch sees no CUDA device; valid here: auto, cpu")
    if not found:
        specs = [("policy", cfg.policy)]
        if not cfg.reward_is_rule:
            specs.append(("reward", heads.reward_backbone_spec(cfg.reward)))
        for field, spec in specs:
            limit = models.context_length(spec)
            if limit is not None and cfg.query_len + cfg.response_len > limit:
                found.append(f"query_len + response_len = {cfg.query_len} + {cfg.response_len} exceeds {field} "
                             f"{spec!r}'s context of {limit} tokens; allowed: a sum <= {limit}")
    return found


def check(cfg: TrainConfig) -> None:
    """Raise ValueError listing every problem, or return."""
    found = problems(cfg)
    if found:
        raise ValueError("the run cannot start:\n  - " + "\n  - ".join(found))
