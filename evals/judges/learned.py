"""Registers `learned`: the judge of `evals.learned_judge`, a Bradley-Terry model over text features fitted on
GPT-4's AlpacaEval annotations (`harness fit-judge`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from evals.judges import PREFIX, register_judge
from trainers.options import check_options, option


@dataclass(frozen=True, slots=True)
class LearnedOptions:
    model: str | None = option(None, "a weights file written by `harness fit-judge` (default: the shipped one)",
                               metavar="FILE")

    def __post_init__(self) -> None:
        check_options(self, PREFIX)
        if self.model is not None and not Path(self.model).is_file():
            raise ValueError(f"--judge-model {self.model!r}: no such file (the learned judge's weights JSON, "
                             "written by `harness fit-judge`; leave it out for the shipped weights)")


def _build(options: LearnedOptions, *, device: str, seed: int):
    from evals.learned_judge import WEIGHTS_FILE, LearnedJudge

    return LearnedJudge(options.model or WEIGHTS_FILE)


def _identity(options: LearnedOptions) -> dict[str, str]:
    return _build(options, device="cpu", seed=0).identity()  # numpy only: no model loads


register_judge("learned", description="a Bradley-Terry judge over text features, fitted on GPT-4's AlpacaEval "
               "annotations (harness fit-judge)", options=LearnedOptions, build=_build, offline=True,
               identity=_identity, cheap=True)
