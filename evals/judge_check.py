"""How closely a judge follows a reference judge (e.g. GPT-4) on pairs the reference judge annotated.

Given, per pair, the reference judge's preference, the judge's preference and the two outputs' lengths:

- **agreement** (alpaca-eval's zero-one agreement): a pair scores 1 when both judges pick the same output, 0 when
  they pick different ones, and 1/2 when exactly one of them calls a draw. A continuous preference p picks output_2
  when p > 1.5, output_1 when p < 1.5, and is a draw at 1.5. Reported overall and on the pairs where the reference
  judge preferred the shorter output (the pairs a length-driven judge gets wrong); standard error = sample SE of the
  per-pair scores (pairs treated as independent).
- **per-model win rates** under each judge (100 * mean(p - 1), draws half, ± SE), and their Spearman and Kendall
  correlation over the models, for every model and for those the reference judge scores under 70%, each with a 95%
  percentile interval from a bootstrap over instructions (every model resampled on the same instructions).
- **longer share**: the share of pairs of unequal length in which the judge prefers the longer output (draws half).
- **order consistency** where the judge was asked in both orders (`evals.judging.agreement_of`).

Pure numpy / scipy: no model, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.stats import kendalltau, spearmanr

UNDER = 70.0  # the win-rate bound (reference judge's) of the "weaker models" correlation


def sides(preferences: Sequence[float]) -> np.ndarray:
    """+1 output_2 picked, -1 output_1 picked, 0 a draw."""
    p = np.asarray(preferences, dtype=float)
    return np.sign(np.round(p - 1.5, 12))


def agreement_scores(judge: Sequence[float], reference: Sequence[float]) -> np.ndarray:
    """Per pair: 1 same pick (two draws included), 1/2 one draw, 0 opposite picks."""
    a, b = sides(judge), sides(reference)
    return np.where(a == b, 1.0, np.where((a == 0) | (b == 0), 0.5, 0.0))


def percent(values: np.ndarray) -> tuple[float | None, float | None, int]:
    """(100 * mean, 100 * sample SE, n); (None, None, 0) when empty."""
    n = int(values.size)
    if n == 0:
        return None, None, 0
    se = 100.0 * float(values.std(ddof=1)) / math.sqrt(n) if n > 1 else 0.0
    return 100.0 * float(values.mean()), se, n


def longer_preferred(preferences: Sequence[float], len_1: Sequence[int], len_2: Sequence[int]) -> np.ndarray:
    """Per pair of unequal lengths: 1 the longer output picked, 0 the shorter, 1/2 a draw."""
    s = sides(preferences)
    longer = np.sign(np.asarray(len_2, dtype=float) - np.asarray(len_1, dtype=float))
    keep = longer != 0
    return np.where(s[keep] == 0, 0.5, (s[keep] == longer[keep]).astype(float))


def _win_matrix(models: Sequence[str], indices: Sequence[int], prefs: np.ndarray, names: list[str],
                columns: np.ndarray) -> np.ndarray:
    row = {m: i for i, m in enumerate(names)}
    col = {c: j for j, c in enumerate(columns)}
    m = np.full((len(names), len(columns)), np.nan)
    m[[row[x] for x in models], [col[i] for i in indices]] = prefs - 1.0
    return m


def _rank_corr(a: np.ndarray, b: np.ndarray) -> tuple[float | None, float | None]:
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None, None
    return float(spearmanr(a, b)[0]), float(kendalltau(a, b)[0])


def model_correlations(models: Sequence[str], indices: Sequence[int], judge: Sequence[float],
                       reference: Sequence[float], *, n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """Per-model win rates under both judges and their rank correlations, all models and those under UNDER."""
    names = sorted(set(models))
    columns = np.array(sorted(set(indices)))
    mj = _win_matrix(models, indices, np.asarray(judge, dtype=float), names, columns)
    mr = _win_matrix(models, indices, np.asarray(reference, dtype=float), names, columns)
    seen = ~np.isnan(mj)
    fj, fr, w = np.nan_to_num(mj), np.nan_to_num(mr), seen.astype(float)
    count = w.sum(1)
    wr_j, wr_r = 100 * fj.sum(1) / count, 100 * fr.sum(1) / count
    se_j = np.array([100 * np.nanstd(r, ddof=1) / math.sqrt(c) if c > 1 else 0.0 for r, c in zip(mj, count)])
    per_model = {m: {"win_rate": float(wr_j[i]), "standard_error": float(se_j[i]),
                     "reference_win_rate": float(wr_r[i]), "n": int(count[i])} for i, m in enumerate(names)}
    weak = wr_r < UNDER
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, columns.size, size=(n_bootstrap, columns.size))
    weights = np.stack([np.bincount(d, minlength=columns.size) for d in draws]).T.astype(float)  # instr x reps
    denom = np.maximum(w @ weights, 1e-12)
    boot_j, boot_r = 100 * (fj @ weights) / denom, 100 * (fr @ weights) / denom  # models x reps
    out: dict = {"per_model": per_model}
    for suffix, rows in (("", np.ones(len(names), bool)), ("_under70", weak)):
        rho, tau = _rank_corr(wr_r[rows], wr_j[rows])
        boots = [_rank_corr(boot_r[rows, k], boot_j[rows, k]) for k in range(n_bootstrap)] if rho is not None else []
        for key, value, pos in (("spearman", rho, 0), ("kendall", tau, 1)):
            vals = np.array([b[pos] for b in boots if b[pos] is not None])
            out[f"{key}{suffix}"] = value
            out[f"{key}{suffix}_ci_low"] = float(np.quantile(vals, 0.025)) if vals.size else None
            out[f"{key}{suffix}_ci_high"] = float(np.quantile(vals, 0.975)) if vals.size else None
        out[f"n_models{suffix}"] = int(rows.sum())
    return out


def check_metrics(models: Sequence[str], indices: Sequence[int], judge: Sequence[float], reference: Sequence[float],
                  len_reference: Sequence[int], len_output: Sequence[int], *, n_bootstrap: int = 1000,
                  seed: int = 0) -> tuple[dict, dict]:
    """(flat metrics, per-model win rates) of a judge against the reference judge on the same pairs. output_1 is
    the reference output (length `len_reference`), output_2 the model's."""
    judge, reference = np.asarray(judge, dtype=float), np.asarray(reference, dtype=float)
    len_r, len_o = np.asarray(len_reference), np.asarray(len_output)
    scores = agreement_scores(judge, reference)
    shorter_won = sides(reference) == -np.sign(len_o - len_r)
    shorter_won &= len_o != len_r
    metrics: dict = {}
    for key, values in (("agreement", scores), ("agreement_shorter_preferred", scores[shorter_won]),
                        ("longer_share", longer_preferred(judge, len_r, len_o)),
                        ("reference_longer_share", longer_preferred(reference, len_r, len_o))):
        mean, se, n = percent(values)
        metrics.update({key: mean, f"{key}_se": se, f"{key}_n": n})
    corr = model_correlations(models, indices, judge, reference, n_bootstrap=n_bootstrap, seed=seed)
    per_model = corr.pop("per_model")
    metrics.update(corr)
    metrics["n"] = int(judge.size)
    return metrics, per_model
