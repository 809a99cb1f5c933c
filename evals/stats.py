"""Win-rate statistics: alpaca-eval's win rate and standard error, and paired comparisons of two models.

Preferences follow alpaca-eval: 1 = the reference output wins, 2 = the model's output wins, 1.5 = a draw
(values in between are allowed, e.g. a judge's probability). Win rate = 100 * mean(pref - 1), draws count
half; standard error = 100 * the sample standard error of (pref - 1).

Two models judged on the same instructions against the same references are compared *paired*, instruction
by instruction: a bootstrap confidence interval of the win-rate difference (resampling instructions), and
an exact two-sided sign test over the instructions where the two models' preferences differ. A claim of "no
difference" is tested as equivalence within a margin fixed in advance (`equivalence_verdict`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


def _scores(preferences: Sequence[float]) -> np.ndarray:
    p = np.asarray(preferences, dtype=float)
    if p.ndim != 1 or p.size == 0:
        raise ValueError(f"preferences must be a non-empty list of numbers; got shape {p.shape}")
    if np.isnan(p).any() or (p < 1).any() or (p > 2).any():
        raise ValueError("preferences must lie in [1, 2] (1: reference wins, 2: model wins, 1.5: draw)")
    return p - 1.0


def win_rate(preferences: Sequence[float]) -> float:
    """100 * mean(pref - 1): the share of instructions the model wins, draws counting half."""
    return 100.0 * float(_scores(preferences).mean())


def standard_error(preferences: Sequence[float]) -> float:
    """100 * sample standard error of (pref - 1) (ddof = 1; 0 for a single instruction)."""
    s = _scores(preferences)
    return 0.0 if s.size < 2 else 100.0 * float(s.std(ddof=1) / math.sqrt(s.size))


@dataclass(frozen=True, slots=True)
class PairedComparison:
    """Model A minus model B on the same instructions."""

    n: int
    win_rate_a: float
    win_rate_b: float
    difference: float  # win_rate_a - win_rate_b, in points
    ci_low: float
    ci_high: float
    confidence: float
    a_better: int  # instructions where A's preference is higher than B's
    b_better: int
    sign_test_p: float

    def as_dict(self) -> dict:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


def sign_test(a_better: int, b_better: int) -> float:
    """Exact two-sided sign test: P(a split at least this uneven | each side equally likely); ties excluded."""
    n = a_better + b_better
    if n == 0:
        return 1.0
    k = min(a_better, b_better)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def paired_comparison(
    prefs_a: Mapping[str, float] | Sequence[float],
    prefs_b: Mapping[str, float] | Sequence[float],
    *,
    confidence: float = 0.95,
    n_bootstrap: int = 10_000,
    seed: int = 0,
) -> PairedComparison:
    """Compare two models' preferences against the same references, instruction by instruction.

    Mappings are aligned on their keys (instruction ids) and must hold the same keys; sequences must have
    equal length and the same order. The bootstrap resamples instructions with replacement (percentile
    interval); the sign test counts instructions where one model's preference is strictly higher.
    """
    if isinstance(prefs_a, Mapping) != isinstance(prefs_b, Mapping):
        raise ValueError("pass both preferences as mappings (instruction id -> preference) or both as sequences")
    if isinstance(prefs_a, Mapping):
        if set(prefs_a) != set(prefs_b):
            missing = sorted(set(prefs_a) ^ set(prefs_b))[:5]
            raise ValueError(f"the two records cover different instructions (e.g. {missing}); compare on one eval set")
        keys = sorted(prefs_a)
        a, b = _scores([prefs_a[k] for k in keys]), _scores([prefs_b[k] for k in keys])
    else:
        if len(prefs_a) != len(prefs_b):
            raise ValueError(f"paired preferences need equal lengths; got {len(prefs_a)} and {len(prefs_b)}")
        a, b = _scores(prefs_a), _scores(prefs_b)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence} must be in (0, 1)")
    diff = a - b
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, diff.size, size=(n_bootstrap, diff.size))
    boot = 100.0 * diff[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(boot, [alpha, 1.0 - alpha])
    a_better, b_better = int((diff > 0).sum()), int((diff < 0).sum())
    return PairedComparison(
        n=int(diff.size), win_rate_a=100.0 * float(a.mean()), win_rate_b=100.0 * float(b.mean()),
        difference=100.0 * float(diff.mean()), ci_low=float(low), ci_high=float(high), confidence=confidence,
        a_better=a_better, b_better=b_better, sign_test_p=sign_test(a_better, b_better),
    )


def equivalence_verdict(ci_low: float, ci_high: float, margin: float) -> str:
    """Equivalence of A and B within +-`margin` points, read off A - B's confidence interval [lo, hi] (two one-sided
    tests at once):

        holds         -margin < lo and hi < margin   (any difference is smaller than the margin)
        contradicted  hi <= -margin or lo >= margin  (the difference exceeds the margin, one way or the other)
        inconclusive  otherwise                       (the interval reaches past the margin: too few items to tell)
    """
    if not (math.isfinite(margin) and margin > 0):
        raise ValueError(f"margin={margin!r} must be a number > 0 (points of the compared measure)")
    if ci_low > ci_high:
        raise ValueError(f"interval [{ci_low}, {ci_high}] has its low end above its high end")
    if -margin < ci_low and ci_high < margin:
        return "holds"
    if ci_high <= -margin or ci_low >= margin:
        return "contradicted"
    return "inconclusive"


def mean_interval(values: Sequence[float], *, confidence: float = 0.95, n_bootstrap: int = 10_000,
                  seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean of per-item `values` and its percentile bootstrap interval (items resampled with
    replacement). One item gives (v, v, v): nothing to resample."""
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or x.size == 0 or not np.isfinite(x).all():
        raise ValueError(f"values must be a non-empty list of finite numbers; got {x.size} values")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence} must be in (0, 1)")
    boot = x[np.random.default_rng(seed).integers(0, x.size, size=(n_bootstrap, x.size))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(boot, [alpha, 1.0 - alpha])
    return float(x.mean()), float(low), float(high)
