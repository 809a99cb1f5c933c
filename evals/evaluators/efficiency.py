"""Registers `efficiency`: what a PPO run cost, read from its run folder (`harness.reproduce.efficiency_record`),
and the paper's own figures for LoRA and the full fine-tune (`harness.paper_numbers`)."""

from __future__ import annotations

from evals.evaluators import nonnegative, percent, register_evaluator

METRICS = (
    nonnegative("gpus", "GPUs the run used (0: on CPU)"),
    nonnegative("processes", "training processes"),
    nonnegative("trainable_params", "parameters the run trains (policy, value and reward heads)"),
    nonnegative("total_params", "parameters held in memory"),
    percent("trainable_pct", "the policy's trainable share of its parameters", higher_is_better=None),
    nonnegative("peak_memory_gib", "peak accelerator (or process) memory", "GiB", higher_is_better=False),
    nonnegative("seconds_per_step", "median wall time of a PPO step, the first step left out", "seconds",
                higher_is_better=False),
    nonnegative("tokens_per_s", "median generated tokens per second, the first step left out", "tokens/s",
                higher_is_better=True),
    nonnegative("steps", "PPO steps logged"),
)

register_evaluator("efficiency", description="a PPO run's cost: parameters trained, peak memory, step time",
                   produced_by="harness reproduce (--table 1, read from run folders)", metrics=METRICS)
