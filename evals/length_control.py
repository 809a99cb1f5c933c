"""Length-controlled (LC) win rate: alpaca-eval's `length_controlled_minimal` GLM, fitted here.

A judge that likes longer answers rewards a policy for length alone (PPO against a reward model learns exactly
that). The LC win rate asks what the win rate would be if the model's and the reference's outputs had the same
length. For pairs i = 1..n (output_1 the reference, output_2 the model) with preference p_i in [1, 2]:

    y_i = p_i - 1                                   the model's share of the win (draw: 0.5)
    d_i = len(output_1_i) - len(output_2_i)          length difference in characters (reference minus model)
    x_i = tanh(d_i / s),  s = sample std (ddof 1) of d over all n pairs (unparsable ones included)
    P(model wins pair i) = sigmoid(theta + phi * x_i)              (no instruction term: the "minimal" form)

    (theta, phi) = argmin |theta| + |phi| + C * sum_i [ -y_i log sigmoid(eta_i) - (1 - y_i) log(1 - sigmoid(eta_i)) ]
    C: the best of 10 values logspace(-4, 4) by 5-fold cross-validation over pairs (mean held-out log loss)

    LC win rate = 100 * sigmoid(theta)              the prediction at equal lengths (x = 0)

With few pairs or a weak length effect the cross-validation may pick the smallest C, which shrinks both weights to 0:
the LC win rate is then exactly 50 (alpaca-eval's fit does the same); `C` is returned so that a reader can tell.

This is alpaca-eval's `get_length_controlled_winrate(glm_name="length_controlled_minimal")` (an L1 logistic
regression with continuous targets: each pair enters twice, as label 1 with weight y_i and label 0 with weight
1 - y_i; liblinear, random_state 123), restated without its data-frame and formula machinery and without its
download of instruction-difficulty data, which the minimal form does not use.

Standard error (alpaca-eval gives none): the delta method on a sandwich (robust, HC1) covariance of the fit,
SE = 100 * sigmoid'(theta) * sqrt(V_theta_theta), V = n/(n-k) H^-1 (sum_i g_i g_i^T) H^-1, with H = sum_i mu_i (1 - mu_i)
z_i z_i^T, g_i = (y_i - mu_i) z_i, z_i = (x_i, 1), mu_i = sigmoid(z_i . w), k = rank(H). Without any length effect
(phi = 0) it is the raw win rate's standard error, 100 * sd(y) / sqrt(n).

Several answers per instruction (`groups`, the instruction of each pair): the cross-validation folds keep an
instruction's pairs together, and the sandwich sums each instruction's g_i before the outer product (clustered by
instruction, n = the number of instructions), so the standard error counts instructions, as the win rate's does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

N_SPLITS = 5
C_GRID = np.logspace(-4, 4, 10)  # LogisticRegressionCV's default grid (Cs=10), which alpaca-eval uses
RANDOM_STATE = 123


def _sigmoid(z: np.ndarray | float) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -np.asarray(z, dtype=float)))


def length_features(reference_lengths: Sequence[int], model_lengths: Sequence[int]) -> np.ndarray:
    """tanh(d / sd(d)) with d = reference length - model length; all zeros when the lengths never vary."""
    d = np.asarray(reference_lengths, dtype=float) - np.asarray(model_lengths, dtype=float)
    s = float(d.std(ddof=1)) if d.size > 1 else 0.0
    if not np.isfinite(s) or s == 0.0:
        return np.zeros_like(d)  # a constant difference says nothing about length preference
    return np.tanh(d / s)


def _l1() -> dict:
    """The L1 penalty in this scikit-learn's terms (`penalty` is deprecated from 1.8 on; both mean the same fit)."""
    import sklearn
    from packaging.version import Version

    return {"l1_ratio": 1.0} if Version(sklearn.__version__) >= Version("1.8") else {"penalty": "l1"}


def _fit(z: np.ndarray, y: np.ndarray, c: float) -> np.ndarray:
    """The L1 logistic fit with continuous targets, as liblinear solves it: each row as label 1 (weight y) and 0."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c, solver="liblinear", fit_intercept=False, random_state=RANDOM_STATE, **_l1())
    labels = np.concatenate([np.ones(len(y)), np.zeros(len(y))])
    model.fit(np.vstack([z, z]), labels, sample_weight=np.concatenate([y, 1.0 - y]))
    return model.coef_[0].copy()


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-15, 1 - 1e-15)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _best_c(z: np.ndarray, y: np.ndarray, groups: np.ndarray) -> float:
    from sklearn.model_selection import GroupKFold

    folds = list(GroupKFold(n_splits=N_SPLITS).split(z, y, groups=groups))
    losses = [sum(_log_loss(y[test], _sigmoid(z[test] @ _fit(z[train], y[train], c))) for train, test in folds)
              for c in C_GRID]
    return float(C_GRID[int(np.argmin(losses))])  # the first of equal losses, as LogisticRegressionCV picks


def _sandwich_se(z: np.ndarray, y: np.ndarray, w: np.ndarray, groups: np.ndarray) -> float:
    mu = _sigmoid(z @ w)
    hessian = (z * (mu * (1 - mu))[:, None]).T @ z
    _, cluster = np.unique(groups, return_inverse=True)
    scores = np.zeros((int(cluster.max()) + 1, z.shape[1]))
    np.add.at(scores, cluster, z * (y - mu)[:, None])  # one score row per instruction
    h_inv = np.linalg.pinv(hessian)
    k = int(np.linalg.matrix_rank(hessian))
    n = len(scores)
    if n <= k:
        return float("nan")
    cov = n / (n - k) * h_inv @ (scores.T @ scores) @ h_inv
    theta = w[1]
    return float(100.0 * _sigmoid(theta) * (1 - _sigmoid(theta)) * np.sqrt(max(cov[1, 1], 0.0)))


def length_controlled_win_rate(preferences: Sequence[float | None], reference_lengths: Sequence[int],
                               model_lengths: Sequence[int],
                               groups: Sequence[str] | None = None) -> dict[str, float] | None:
    """{"lc_win_rate", "lc_standard_error", "length_weight" (phi), "C"} in percentage points, or None when fewer
    than 5 pairs (instructions, with `groups`) have a preference (the 5-fold cross-validation needs one per fold).

    preferences: one per pair, in [1, 2] (None: unparsable, left out of the fit but not of the length scale).
    reference_lengths / model_lengths: the two outputs' lengths in characters, one per pair.
    groups: the instruction of each pair, where an instruction has several (None: every pair its own).
    """
    if not len(preferences) == len(reference_lengths) == len(model_lengths):
        raise ValueError(f"{len(preferences)} preferences, {len(reference_lengths)} reference lengths and "
                         f"{len(model_lengths)} model lengths: one of each per pair expected")
    if groups is not None and len(groups) != len(preferences):
        raise ValueError(f"{len(groups)} groups for {len(preferences)} pairs: one per pair expected")
    x = length_features(reference_lengths, model_lengths)
    kept = [i for i, p in enumerate(preferences) if p is not None]
    cluster = np.arange(len(kept)) if groups is None else np.asarray([str(groups[i]) for i in kept])
    if len(set(cluster.tolist())) < N_SPLITS:
        return None
    y = np.asarray([preferences[i] for i in kept], dtype=float) - 1.0
    if (y < 0).any() or (y > 1).any():
        raise ValueError("preferences must lie in [1, 2] (1: reference wins, 2: model wins, 1.5: draw)")
    z = np.column_stack([x[kept], np.ones(len(kept))])  # alpaca-eval's column order: length term, then constant
    c = _best_c(z, y, cluster)
    w = _fit(z, y, c)
    return {"lc_win_rate": float(100.0 * _sigmoid(w[1])), "lc_standard_error": _sandwich_se(z, y, w, cluster),
            "length_weight": float(w[0]), "C": c}
