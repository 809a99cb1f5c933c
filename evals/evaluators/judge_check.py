"""Registers `judge_check`: how closely a judge follows a reference judge (e.g. GPT-4) on the pairs the reference
judge annotated, beside the `longer` and `model_wins` baselines on the same pairs (`evals.judge_check`, made by
`harness.judge_check`; `harness fit-judge` writes one for the learned judge's held-out folds)."""

from __future__ import annotations

from dataclasses import dataclass
from evals.evaluators import nonnegative, percent, register_evaluator, signed
from trainers.options import check_options, option

PREFIX = ""  # its options are judge-check's own flags: --order, --probe, ...
MAX_PAIRS = 10**6


def _shares() -> list:
    """Each share in percent, with its standard error and the pairs it is measured on."""
    found = []
    for key, help, better in (
            ("agreement", "pairs on which the judge picks as the reference judge does (one draw: half)", True),
            ("agreement_shorter_preferred", "agreement on the pairs where the reference judge preferred the "
             "shorter output", True),
            ("longer_share", "pairs of unequal length on which the judge prefers the longer output", None),
            ("reference_longer_share", "the same share for the reference judge", None)):
        found += [percent(key, help, better), nonnegative(f"{key}_se", f"standard error of {key}", "percent"),
                  nonnegative(f"{key}_n", f"pairs {key} is measured on")]
    return found


def _correlations() -> list:
    """Rank correlations of the models' win rates under the judge and under the reference judge, with 95%
    bootstrap intervals, over every model and over those the reference judge scores under 70%."""
    found = []
    for suffix, which in (("", "every model"), ("_under70", "the models under 70% by the reference judge")):
        for key in ("spearman", "kendall"):
            name = f"{key}{suffix}"
            found += [signed(name, f"{key.title()} correlation of the models' win rates, {which}", "ratio", True,
                             -1, 1),
                      signed(f"{name}_ci_low", f"lower end of {name}'s 95% bootstrap interval", "ratio", None, -1, 1),
                      signed(f"{name}_ci_high", f"upper end of {name}'s 95% bootstrap interval", "ratio", None, -1, 1)]
        found.append(nonnegative(f"n_models{suffix}", f"models correlated ({which})"))
    return found


def _baselines() -> list:
    found = []
    for base, what in (("longer", "the longer output wins"), ("model_wins", "the model's output always wins")):
        found += [percent(f"{base}_agreement", f"agreement of the baseline '{what}' on the same pairs", None),
                  nonnegative(f"{base}_agreement_se", f"standard error of {base}_agreement", "percent"),
                  percent(f"{base}_agreement_shorter_preferred", f"{base}_agreement where the reference judge "
                          "preferred the shorter output", None)]
    return found


METRICS = (
    *_shares(), *_correlations(), *_baselines(),
    nonnegative("n", "pairs judged"),
    percent("order_consistency", "pairs with the same winner in both orders (null with --order fixed)"),
    percent("probe_correct", "correctness-probe pairs on which the judge prefers the unaltered output"),
    nonnegative("probe_correct_se", "standard error of probe_correct", "percent"),
    nonnegative("probe_n", "correctness-probe pairs judged"),
    nonnegative("unparsed", "pairs whose judge answers could not be parsed", higher_is_better=False),
)


@dataclass(frozen=True, slots=True)
class JudgeCheckOptions:
    models: str | None = option(None, "comma-separated models to score (default: every model)")
    sample_instructions: int | None = option(None, "judge only a seeded sample of N instructions (default: all)",
                                             low=1, high=MAX_PAIRS, metavar="N")
    order: str = option("both", "both (each pair in both orders, averaged; measures order consistency) or fixed")
    probe: int = option(200, "correctness-probe pairs (0: none)", low=0, high=MAX_PAIRS, metavar="N")
    seed: int = option(0, "instruction sample, probe and bootstrap seed", low=0, high=2**63 - 1)

    def __post_init__(self) -> None:
        check_options(self, PREFIX)
        if self.order not in ("both", "fixed"):
            raise ValueError(f"--order={self.order!r}; allowed: both, fixed")


register_evaluator("judge_check", description="a judge against a reference judge's annotations: agreement, rank "
                   "correlation of models, length bias, order consistency, correctness probe",
                   produced_by="harness judge-check (and harness fit-judge)", metrics=METRICS,
                   options=JudgeCheckOptions)
