"""The bundled validation instructions, where settings are chosen, are disjoint from the evaluation instructions and
from the prompts PPO trains on, and their records are told apart by the eval set's identity."""

from __future__ import annotations

import json

from harness import presets
from harness.eval_request import BUNDLED, BUNDLED_VALIDATION, open_eval_set


def _texts(eval_set):
    return {(r["instruction"], r["input"]) for r in eval_set.records}


def test_validation_and_evaluation_instructions_are_disjoint():
    evaluation, validation = open_eval_set(BUNDLED), open_eval_set(BUNDLED_VALIDATION)
    assert len(evaluation.records) == 177 and len(validation.records) == 66
    assert not _texts(evaluation) & _texts(validation)
    assert evaluation.identity() != validation.identity()
    assert validation.name == "harness-bundled:val" and open_eval_set(BUNDLED_VALIDATION, 10).identity()["n"] == 10
    rows = json.loads(open(presets.INSTRUCTIONS, encoding="utf-8").read())
    training = {(r["instruction"], r["input"]) for r in rows if r["split"] == presets.preset("tiny")["prompt_split"]}
    assert training and not training & (_texts(evaluation) | _texts(validation))
