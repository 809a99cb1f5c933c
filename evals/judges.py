"""Judges by name: `make_judge("simulated" | "learned" | "openai" | "reward-model" | "longer" | "model-wins", ...)`,
validated before any work starts. `longer` and `model-wins` are baselines (`evals.baseline_judges`)."""

from __future__ import annotations

import math
from pathlib import Path

from evals.judging import Judge

JUDGES = ("simulated", "learned", "openai", "reward-model", "longer", "model-wins")
OFFLINE = ("simulated", "learned", "longer", "model-wins")  # no model of our own to name, no server


def check_judge_options(name: str, *, reward_model: str | None = None, config: str | None = None,
                        timeout: float | None = None, max_retries: int | None = None,
                        max_tokens: int | None = None, max_unparsed: float | None = None) -> None:
    """Raise ValueError naming the option when `name` or its settings cannot work (cheap: no model loads; a
    `config` name is looked up among alpaca-eval's configs and ours)."""
    if name not in JUDGES:
        raise ValueError(f"judge={name!r} is not known; valid judges: {', '.join(JUDGES)}")
    if name == "reward-model" and not reward_model:
        raise ValueError("judge='reward-model' needs --judge-model DIR (a reward-model directory or head:MODEL)")
    if name == "reward-model":
        from trainers.preflight import reward_model_problem

        if (problem := reward_model_problem("--judge-model", reward_model)) is not None:
            raise ValueError(problem)
    if name == "learned" and reward_model is not None and not Path(reward_model).is_file():
        raise ValueError(f"--judge-model {reward_model!r}: no such file (the learned judge's weights JSON, written "
                         "by `harness fit-judge`; leave it out for the shipped weights)")
    openai_only = {"--judge-config": config, "--judge-timeout": timeout, "--judge-max-retries": max_retries,
                   "--judge-max-tokens": max_tokens}
    given = [flag for flag, value in openai_only.items() if value is not None]
    if given and name != "openai":
        raise ValueError(f"{', '.join(given)} set for judge={name!r}; these options apply to --judge openai only")
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"--judge-timeout={timeout!r}: seconds per request, a number > 0")
    if max_retries is not None and max_retries < 0:
        raise ValueError(f"--judge-max-retries={max_retries!r}: re-asks after a failed request, an integer >= 0")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"--judge-max-tokens={max_tokens!r}: an integer >= 1")
    if max_unparsed is not None and not 0.0 <= max_unparsed <= 1.0:
        raise ValueError(f"--judge-max-unparsed={max_unparsed!r}: a share of the judge's answers in [0, 1]")
    if config is not None:
        from evals.openai_judge import load_annotator_config

        load_annotator_config(config)  # unknown name, missing file or an unsupported config: one line now


def make_judge(name: str, *, model: str | None = None, base_url: str | None = None,
               api_key_env: str = "OPENAI_API_KEY", device: str = "cpu", seed: int = 0, config: str | None = None,
               timeout: float | None = None, max_retries: int | None = None,
               max_tokens: int | None = None) -> Judge:
    """A judge instance. `model`: the judge model (openai), the reward-model directory (reward-model) or a weights
    file (learned; default: the shipped one).
    openai only: `config` (an alpaca-eval annotator config name or configs.yaml path), `timeout` (seconds per
    request), `max_retries` (re-asks after a failed request), `max_tokens` (the answer's length)."""
    check_judge_options(name, reward_model=model, timeout=timeout, max_retries=max_retries, max_tokens=max_tokens)
    if name == "simulated":
        from evals.simulated import SimulatedJudge

        return SimulatedJudge()
    if name == "learned":
        from evals.learned_judge import WEIGHTS_FILE, LearnedJudge

        return LearnedJudge(model or WEIGHTS_FILE)
    if name in ("longer", "model-wins"):
        from evals.baseline_judges import LongerJudge, ModelWinsJudge

        return LongerJudge() if name == "longer" else ModelWinsJudge()
    if name == "reward-model":
        from evals.reward_judge import RewardModelJudge

        return RewardModelJudge(model, device=device, seed=seed)
    from evals.openai_judge import OpenAIJudge

    kwargs = {"base_url": base_url, "api_key_env": api_key_env, "max_tokens": max_tokens}
    optional = {"model": model, "annotator": config, "timeout": timeout,
                "max_attempts": None if max_retries is None else max_retries + 1}
    kwargs.update({k: v for k, v in optional.items() if v is not None})
    return OpenAIJudge(**kwargs)


def judge_identity(name: str, **options) -> dict[str, str]:
    """What `make_judge(name, **options).identity()` reports. The simulated judge's is known without loading its
    embedding model, so listing which records a grid has needs no torch; the others must be built to be named (the
    OpenAI judge asks its server which model answers)."""
    if name == "simulated":
        check_judge_options(name, reward_model=options.get("model"),
                            **{k: options.get(k) for k in ("timeout", "max_retries", "max_tokens")})
        from evals.simulated import default_identity

        return default_identity()
    if name in ("learned", "longer", "model-wins"):
        return make_judge(name, model=options.get("model")).identity()  # no model loads: numpy or nothing
    judge = make_judge(name, **options)
    try:
        return judge.identity()
    finally:
        judge.close()
