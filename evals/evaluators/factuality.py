"""Registers `factuality`: FActScore of the policy's answers to "Tell me a bio of <entity>." (`evals.factuality`,
run by `evals.evaluation.PolicyEvaluation.factuality`)."""

from __future__ import annotations

from evals.evaluators import EVAL_COMMAND, nonnegative, percent, register_evaluator
from evals.evaluators.winrate import GENERATION

METRICS = (
    percent("factscore", "supported share of the atomic facts, with FActScore's length penalty"),
    percent("factscore_no_penalty", "supported share of the atomic facts, without the length penalty"),
    percent("answered", "prompts answered with at least one fact"),
    nonnegative("facts_per_answer", "atomic facts per answer"),
    nonnegative("n", "entities asked about"),
)


def _run(evaluation, inputs):
    return evaluation.factuality()


def _check(config) -> None:
    config.check_factuality()


register_evaluator(
    "factuality", description="FActScore of a policy's biographies, checked against a knowledge source",
    produced_by=EVAL_COMMAND, metrics=METRICS, run=_run, check=_check,
    config_fields=("factuality_limit", "verifier", "knowledge", "judge", "judge_options", *GENERATION))
