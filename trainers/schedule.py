"""Learning-rate schedules of a PPO run, as pure functions of the scheduler's count.

The scheduler counts either optimiser steps or PPO steps (`lr_schedule_unit`); `count` is how many times it has
been stepped before the update it sets the rate of (0 for the first). With w = warmup_steps, T = horizon:

    constant:  f(c) = min(1, (c + 1) / w)                                  (f = 1 when w = 0)
    linear:    f(c) = c / w                       for c < w
               f(c) = max(0, (T - c) / max(1, T - w))  otherwise

`linear` is Hugging Face's `get_linear_schedule_with_warmup`, which AlpacaFarm builds and steps once per PPO step,
after the update: its first PPO step runs at rate 0, PPO step w + 1 at the full rate, and PPO step s (1-based) at
lr * (T - s + 1) / (T - w). `constant` starts the warm-up at 1/w so that no update is wasted at rate 0.
"""

from __future__ import annotations

from typing import Literal

Schedule = Literal["constant", "linear"]


def lr_factor(schedule: Schedule, count: int, warmup: int, horizon: int) -> float:
    """The multiplier of the base learning rate after `count` scheduler steps (formulas in the module docstring)."""
    if schedule == "constant":
        return min(1.0, (count + 1) / warmup) if warmup else 1.0
    if schedule == "linear":
        if count < warmup:
            return count / max(1, warmup)
        return max(0.0, (horizon - count) / max(1, horizon - warmup))
    raise ValueError(f"lr_schedule={schedule!r} is not known; valid: constant, linear")


def decay_horizon(steps: int, decay_epochs: float, n_prompts: int, rollout_batch_size: int) -> int:
    """PPO steps over which a linear schedule decays: AlpacaFarm's floor(prompts * total_epochs / rollout batch)
    when `decay_epochs` > 0, else the run's own `steps`."""
    if decay_epochs > 0:
        return max(1, int(n_prompts * decay_epochs) // rollout_batch_size)
    return steps
