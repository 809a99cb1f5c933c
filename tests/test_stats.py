"""Win rate, standard error and paired statistics against hand-computed values."""

import math

import numpy as np
import pytest

from evals.stats import paired_comparison, sign_test, standard_error, win_rate


def test_win_rate_counts_draws_half_like_alpaca_eval():
    prefs = [2, 2, 1, 1.5]  # two wins, one loss, one draw
    assert win_rate(prefs) == pytest.approx(62.5)
    scores = np.array([1, 1, 0, 0.5])
    assert standard_error(prefs) == pytest.approx(100 * scores.std(ddof=1) / 2)
    assert standard_error([2.0]) == 0.0


def test_bad_preferences_are_refused():
    for bad in ([], [0.5, 2], [1, float("nan")], [3]):
        with pytest.raises(ValueError):
            win_rate(bad)


def test_sign_test_exact_values():
    # 9 vs 1: P = 2 * (C(10,0) + C(10,1)) / 2^10 = 22 / 1024
    assert sign_test(9, 1) == pytest.approx(22 / 1024)
    assert sign_test(5, 5) == 1.0
    assert sign_test(0, 0) == 1.0
    assert sign_test(0, 6) == pytest.approx(2 / 64)


def test_paired_comparison_difference_and_interval():
    rng = np.random.default_rng(1)
    n = 400
    b = rng.choice([1.0, 1.5, 2.0], size=n, p=[0.55, 0.1, 0.35])
    better = rng.random(n) < 0.2  # A flips 20% of B's losses and draws into wins
    a = np.where(better, 2.0, b)
    ids = [f"i{k}" for k in range(n)]
    result = paired_comparison(dict(zip(ids, a)), dict(zip(reversed(ids), reversed(b))), seed=3)
    assert result.n == n
    assert result.difference == pytest.approx(100 * float((a - b).mean()))
    assert result.difference == pytest.approx(result.win_rate_a - result.win_rate_b)
    assert result.ci_low < result.difference < result.ci_high
    assert result.ci_low > 0  # a real improvement of ~10 points is detected
    assert result.b_better == 0 and result.a_better == int(((a - b) > 0).sum())
    assert result.sign_test_p < 1e-6
    # the bootstrap interval matches the normal approximation of a paired difference
    se = 100 * (a - b).std(ddof=1) / math.sqrt(n)
    assert result.ci_high - result.ci_low == pytest.approx(2 * 1.96 * se, rel=0.1)


def test_identical_models_are_not_different():
    prefs = [1, 2, 1.5, 2, 1] * 20
    result = paired_comparison(prefs, prefs)
    assert result.difference == 0.0 and result.ci_low == 0.0 and result.ci_high == 0.0
    assert result.sign_test_p == 1.0


def test_paired_inputs_must_align():
    with pytest.raises(ValueError, match="different instructions"):
        paired_comparison({"a": 1.0, "b": 2.0}, {"a": 1.0, "c": 2.0})
    with pytest.raises(ValueError, match="equal lengths"):
        paired_comparison([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="both preferences as mappings"):
        paired_comparison({"a": 1.0}, [1.0])


def test_equivalence_verdict_reads_the_interval_against_the_margin():
    from evals.stats import equivalence_verdict

    assert equivalence_verdict(-4.9, 4.9, 5.0) == "holds"
    assert equivalence_verdict(-3.0, 0.5, 5.0) == "holds"  # a small loss inside the margin is equivalence
    assert equivalence_verdict(-5.0, 1.0, 5.0) == "inconclusive"  # touching the margin proves nothing
    assert equivalence_verdict(-12.0, 2.0, 5.0) == "inconclusive"
    assert equivalence_verdict(-12.0, -5.0, 5.0) == "contradicted"  # certainly worse by the margin or more
    assert equivalence_verdict(6.0, 9.0, 5.0) == "contradicted"  # certainly better by more: not equivalent either
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="margin"):
            equivalence_verdict(-1.0, 1.0, bad)
    with pytest.raises(ValueError, match="low end above"):
        equivalence_verdict(2.0, 1.0, 5.0)


def test_mean_interval_brackets_the_mean_and_narrows_with_items():
    from evals.stats import mean_interval

    rng = np.random.default_rng(1)
    few, many = rng.normal(0.3, 0.2, 20), rng.normal(0.3, 0.2, 500)
    m, lo, hi = mean_interval(few)
    assert m == pytest.approx(few.mean()) and lo < m < hi
    # the percentile bootstrap of a mean is close to mean +- 1.96 sd / sqrt(n)
    half = 1.96 * few.std(ddof=1) / math.sqrt(few.size)
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.15)
    _, lo2, hi2 = mean_interval(many)
    assert hi2 - lo2 < (hi - lo) / 3
    assert mean_interval([0.5]) == (0.5, 0.5, 0.5)
    assert mean_interval(few) == mean_interval(list(few))  # seeded: the same interval every time
    with pytest.raises(ValueError, match="non-empty"):
        mean_interval([])
