"""Registers `proxy_rm`: how often the proxy reward model that `harness prepare` fits agrees with the gold judge
on held-out preference pairs (`harness.prepare.proxy_record`, `evals.proxy_fit`)."""

from __future__ import annotations

from evals.evaluators import nonnegative, percent, register_evaluator

METRICS = (
    percent("gold_agreement", "held-out pairs on which the proxy reward model agrees with the gold judge"),
    percent("gold_agreement_cv_mean", "gold_agreement's mean over cross-validation folds (null without folds)"),
    nonnegative("gold_agreement_cv_sd", "gold_agreement's standard deviation over the folds", "percent"),
    percent("noisy_agreement", "held-out pairs on which it agrees with the noisy labels it was trained on"),
    nonnegative("train_pairs", "preference pairs it was trained on"),
    nonnegative("heldout_pairs", "preference pairs held out"),
)

register_evaluator("proxy_rm", description="the proxy reward model against the gold judge, on held-out pairs",
                   produced_by="harness prepare", metrics=METRICS)
