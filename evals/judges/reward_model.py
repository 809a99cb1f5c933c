"""Registers `reward-model`: a reward model as a pairwise judge (`evals.reward_judge`), AlpacaFarm's gold-versus-proxy
setting."""

from __future__ import annotations

from dataclasses import dataclass

from evals.judges import PREFIX, register_judge
from trainers.options import check_options, option


@dataclass(frozen=True, slots=True)
class RewardModelOptions:
    model: str | None = option(None, "the reward model: a directory, or head:MODEL (required)", metavar="DIR")

    def __post_init__(self) -> None:
        check_options(self, PREFIX)
        if not self.model:
            raise ValueError("judge='reward-model' needs --judge-model DIR (a reward-model directory or head:MODEL)")
        from trainers.preflight import reward_model_problem  # torch: only when this judge is chosen

        if (problem := reward_model_problem("--judge-model", self.model)) is not None:
            raise ValueError(problem)


def _build(options: RewardModelOptions, *, device: str, seed: int):
    from evals.reward_judge import RewardModelJudge

    return RewardModelJudge(options.model, device=device, seed=seed)


register_judge("reward-model", description="a reward model's Bradley-Terry preference between the two outputs",
               options=RewardModelOptions, build=_build, offline=False)
