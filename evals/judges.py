"""Judges by name: `make_judge("simulated" | "openai" | "reward-model", ...)`, validated before any work starts."""

from __future__ import annotations

from evals.judging import Judge

JUDGES = ("simulated", "openai", "reward-model")


def check_judge_options(name: str, *, reward_model: str | None = None) -> None:
    """Raise ValueError naming the option when `name` or its settings cannot work (cheap: no model loads)."""
    if name not in JUDGES:
        raise ValueError(f"judge={name!r} is not known; valid judges: {', '.join(JUDGES)}")
    if name == "reward-model" and not reward_model:
        raise ValueError("judge='reward-model' needs --judge-model DIR (a reward-model directory or head:MODEL)")


def make_judge(name: str, *, model: str | None = None, base_url: str | None = None,
               api_key_env: str = "OPENAI_API_KEY", device: str = "cpu", seed: int = 0) -> Judge:
    """A judge instance. `model`: the judge model (openai) or the reward-model directory (reward-model)."""
    check_judge_options(name, reward_model=model)
    if name == "simulated":
        from evals.simulated import SimulatedJudge

        return SimulatedJudge()
    if name == "reward-model":
        from evals.reward_judge import RewardModelJudge

        return RewardModelJudge(model, device=device, seed=seed)
    from evals.openai_judge import OpenAIJudge

    kwargs = {"base_url": base_url, "api_key_env": api_key_env}
    if model:
        kwargs["model"] = model
    return OpenAIJudge(**kwargs)
