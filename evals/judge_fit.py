"""Fitting the learned judge (`evals.learned_judge`) on a reference judge's pairwise annotations, split by model.

1. pairs: the annotated pairs the reference judge was asked about (output != reference), minus the instructions
   the caller excludes (the offline grid's own, so that they never enter the fit);
2. features: d = f(x, output) - f(x, reference) per pair (`learned_judge.feature_matrix`);
3. k-fold over MODELS: the models are shuffled with a seeded generator and dealt into k folds; each fold's pairs
   are judged by a head fitted on the other folds' pairs only, so no model has outputs on both sides;
4. the head: L2-penalised logistic regression of the reference judge's pick on d / scale (scale: the standard
   deviation of each feature over the outputs), no intercept (so the judge is symmetric), lbfgs: deterministic;
5. the shipped head: the same fit on every pair of step 1.

Returns the held-out preferences (for `evals.judge_check` figures) and the final weights (JSON-ready).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from evals.annotations import Annotation
from evals.learned_judge import FEATURES, feature_matrix, weights_version


@dataclass(frozen=True, slots=True)
class FitResult:
    heldout: np.ndarray  # the held-out preference of every pair of `rows` (in [1, 2])
    folds: dict[str, int]  # model -> fold
    weights: dict  # the final head (every pair), JSON-ready
    n_fit: int  # pairs in the final fit


def model_folds(models: Sequence[str], k: int, seed: int) -> dict[str, int]:
    names = sorted(set(models))
    if not 2 <= k <= len(names):
        raise ValueError(f"--folds={k}: between 2 and the number of models ({len(names)})")
    random.Random(seed).shuffle(names)
    return {m: i % k for i, m in enumerate(names)}


def fit_head(d: np.ndarray, y: np.ndarray, scale: np.ndarray, l2: float) -> np.ndarray:
    """Weights on d / scale of an intercept-free logistic regression (penalty l2 / 2 * |w|^2 per pair)."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=1.0 / (l2 * len(y)), fit_intercept=False, max_iter=5000, tol=1e-8)
    clf.fit(d / scale, y)
    return clf.coef_[0]


def preference(d: np.ndarray, scale: np.ndarray, coef: np.ndarray) -> np.ndarray:
    z = np.clip((d / scale) @ coef, -60, 60)
    return 1.0 + 1.0 / (1.0 + np.exp(-z))


def fit(rows: Sequence[Annotation], prompts: Sequence[str], *, exclude: set[int], k: int = 5, seed: int = 0,
        l2: float = 1e-4, log=print) -> FitResult:
    """Steps 1-5 of the module docstring over `rows` (pairs with output != reference, preference != 1.5)."""
    rows = list(rows)
    p = [prompts[r.index] for r in rows]
    fo, fr = feature_matrix(p, [r.output for r in rows]), feature_matrix(p, [r.reference for r in rows])
    d = fo - fr
    y = np.array([r.preference > 1.5 for r in rows], dtype=int)
    decided = np.array([r.preference != 1.5 for r in rows])
    fit_ok = decided & np.array([r.index not in exclude for r in rows])
    scale = np.vstack([fo, fr])[np.concatenate([fit_ok, fit_ok])].std(axis=0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    folds = model_folds([r.model for r in rows], k, seed)
    fold = np.array([folds[r.model] for r in rows])
    heldout = np.empty(len(rows))
    for i in range(k):
        train = fit_ok & (fold != i)
        coef = fit_head(d[train], y[train], scale, l2)
        heldout[fold == i] = preference(d[fold == i], scale, coef)
        log(f"fold {i + 1}/{k}: fitted on {int(train.sum())} pairs, judged {int((fold == i).sum())} held-out pairs of "
            f"{len({r.model for r, f in zip(rows, fold) if f == i})} models")
    coef = fit_head(d[fit_ok], y[fit_ok], scale, l2)
    mean = np.vstack([fo, fr])[np.concatenate([fit_ok, fit_ok])].mean(axis=0)
    weights = {"features": list(FEATURES), "mean": [round(float(v), 8) for v in mean],
               "scale": [round(float(v), 8) for v in scale], "coef": [round(float(v), 8) for v in coef],
               "l2": l2}
    weights["version"] = weights_version(weights)
    return FitResult(heldout=heldout, folds=folds, weights=weights, n_fit=int(fit_ok.sum()))
