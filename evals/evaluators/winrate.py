"""Registers `winrate`: the policy's outputs against reference outputs, judged pairwise (`evals.winrate`), with the
outputs' true KL from the SFT policy and their mean proxy reward (`evals.evaluation.PolicyEvaluation.winrate`)."""

from __future__ import annotations

from evals.evaluators import EVAL_COMMAND, nonnegative, percent, register_evaluator, signed

GENERATION = ("temperature", "top_p", "max_new_tokens", "batch_size", "seed")  # EvalConfig fields of the decoding

METRICS = (
    percent("win_rate", "the judge's preference for the policy's output over the reference (draws half)"),
    nonnegative("standard_error", "of win_rate, over instructions (percentage points)", "percent"),
    percent("lc_win_rate", "length-controlled win rate (alpaca-eval's GLM; null on too few pairs)"),
    nonnegative("lc_standard_error", "of lc_win_rate (percentage points)", "percent"),
    percent("strict_win_rate", "pairs the policy wins outright (a draw counts as a loss)"),
    nonnegative("n", "instructions judged"),
    nonnegative("unparsed", "pairs whose judge answers could not be parsed", higher_is_better=False),
    percent("unparsed_answers_pct", "judge answers that could not be parsed, of all asked", higher_is_better=False),
    percent("order_agreement", "pairs with the same winner in both orders (null unless --order both)"),
    nonnegative("mean_words_model", "mean length of the policy's outputs", "words"),
    nonnegative("mean_words_reference", "mean length of the reference outputs", "words"),
    nonnegative("empty_outputs", "outputs with no text", higher_is_better=False),
    nonnegative("true_kl", "token-level KL of the outputs from the SFT policy", "nats"),
    nonnegative("true_kl_train", "the run's logged true KL at the evaluated step", "nats"),
    signed("proxy_reward", "mean score of the outputs under the proxy reward model", higher_is_better=True),
)


def _run(evaluation, inputs):
    return evaluation.winrate(inputs.eval_set, inputs.judge, inputs.references_dir)


register_evaluator(
    "winrate", description="win rate of a policy's outputs against reference outputs, by a judge, with true KL and "
    "proxy reward", produced_by=EVAL_COMMAND, metrics=METRICS, run=_run, uses=("eval_set", "judge"),
    config_fields=("judge", "judge_options", "judge_max_unparsed", "limit", "order", "samples", "allow_empty",
                   "refresh_judge_cache", "proxy_reward", *GENERATION))
