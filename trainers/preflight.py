"""Checks that need the file system or a model's config.json, run before any weights load."""

from __future__ import annotations

import torch

from trainers import data, heads, models, rewards
from trainers.config import TrainConfig


def problems(cfg: TrainConfig, device: str = "auto") -> list[str]:
    """Every problem found, each naming the field, the value and what is allowed; `device`: the execution's."""
    found: list[str] = []
    if (msg := models.describe_spec_error("policy", cfg.policy)) is not None:
        found.append(msg)
    if cfg.reward_is_rule:
        try:
            rewards.parse_rule(cfg.reward)
        except ValueError as e:
            found.append(str(e))
    elif (msg := reward_model_problem("reward", cfg.reward)) is not None:
        found.append(msg)
    if (msg := data.describe_source_error(cfg.prompts)) is not None:
        found.append(msg)
    if device == "cuda" and not torch.cuda.is_available():
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


def reward_model_problem(field: str, spec: str) -> str | None:
    """None if `spec` names a reward model that can load (a directory, a prepared one, head:MODEL), else a message
    naming `field`, the value and what is allowed."""
    where = heads.resolve_reward_spec(spec)  # the directory (or head:MODEL)
    if spec.startswith(heads.PREPARED) and not heads.is_reward_model_dir(where):
        name = spec.removeprefix(heads.PREPARED)
        return (f"{field}={spec!r} has not been prepared yet ({where} is missing); run "
                f"`harness prepare --preset {name}` first (it trains the proxy reward model)")
    if (msg := models.describe_spec_error(field, heads.reward_backbone_spec(spec))) is not None:
        return msg  # the backbone: the directory itself, or the model a head-only directory names
    if not spec.startswith("head:") and not heads.is_reward_model_dir(where):
        return (f"{field}={spec!r} is not a reward-model directory ({heads.HEAD_WEIGHTS} missing); "
                "use 'harness models recover', a prepared reward model, 'head:MODEL' or 'rule:NAME'")
    return None


def check(cfg: TrainConfig, device: str = "auto") -> None:
    """Raise ValueError listing every problem, or return."""
    found = problems(cfg, device)
    if found:
        raise ValueError("the run cannot start:\n  - " + "\n  - ".join(found))
