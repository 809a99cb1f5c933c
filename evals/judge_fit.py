"""Fitting the learned judge (`evals.learned_judge`) on a reference judge's pairwise annotations, split by model.

1. pairs: the annotated pairs the reference judge was asked about (output != reference), minus the instructions
   the caller excludes (the offline grid's own, so that they never enter the fit);
2. features: d = f(x, output) - f(x, reference) per pair (`learned_judge.feature_matrix`); with `content`, the
   difference of the two outputs' MiniLM content features c(x, o) (`judge_embeddings.content_features`: every text
   embedded once, cached on disk); and the difference of the two outputs' bags of words over a vocabulary of the
   words in at least `min_df` of the fit's texts (built from the fitting pairs only: each fold has its own);
3. k-fold over MODELS: the models are shuffled with a seeded generator and dealt into k folds; each fold's pairs
   are judged by a head fitted on the other folds' pairs only, so no model has outputs on both sides;
4. the head: L2-penalised logistic regression of the reference judge's pick on [d / scale, content difference /
   content scale, word difference] (scale: the standard deviation of each feature over the outputs and references;
   `content_weight` divides the content scale, so a weight above 1 penalises that block less), no intercept (so the
   judge is symmetric), lbfgs: deterministic;
5. the shipped head: the same fit on every pair of step 1.

Returns the held-out preferences (for `evals.judge_check` figures) and the final weights (JSON-ready).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from evals.annotations import Annotation
from evals.embeddings import VERSION as EMBEDDER
from evals.learned_judge import FEATURES, bag_of_words, feature_matrix, weights_version


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


def vocabulary(bags: Sequence[set[str]], min_df: int) -> list[str]:
    """Words in at least `min_df` of the texts, sorted."""
    df: dict[str, int] = {}
    for bag in bags:
        for w in bag:
            df[w] = df.get(w, 0) + 1
    return sorted(w for w, n in df.items() if n >= min_df)


def word_matrix(bags: Sequence[set[str]], vocab: list[str]):
    """Binary bags of words over `vocab`, each row divided by sqrt(its words present) (`learned_judge.word_scores`)."""
    from scipy import sparse

    col = {w: j for j, w in enumerate(vocab)}
    indptr, indices, data = [0], [], []
    for bag in bags:
        found = sorted(col[w] for w in bag if w in col)
        indices += found
        data += [1.0 / math.sqrt(len(found))] * len(found) if found else []
        indptr.append(len(indices))
    return sparse.csr_matrix((data, indices, indptr), shape=(len(bags), len(vocab)))


def _design(dense, bags_o, bags_r, vocab):
    from scipy import sparse

    if not vocab:
        return dense
    return sparse.hstack([sparse.csr_matrix(dense), word_matrix(bags_o, vocab) - word_matrix(bags_r, vocab)]).tocsr()


def _standardise(fo: np.ndarray, fr: np.ndarray, fit_ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) of each column over the fit's outputs and references (scale 1 where a column is constant)."""
    both = np.vstack([fo[fit_ok], fr[fit_ok]])
    scale = both.std(axis=0)
    return both.mean(axis=0), np.where(scale > 1e-9, scale, 1.0)


def content_block(rows: Sequence[Annotation], prompts: Sequence[str], log=print) -> tuple[np.ndarray, np.ndarray]:
    """(c(x, output), c(x, reference)) per pair: `judge_embeddings.content_features` of the MiniLM embeddings."""
    from evals.judge_embeddings import content_features, embed

    p = [prompts[r.index] for r in rows]
    texts = sorted({*p, *(r.output for r in rows), *(r.reference for r in rows)})
    vectors = dict(zip(texts, embed(texts, log=log)))
    ex = np.array([vectors[t] for t in p])
    return (content_features(ex, np.array([vectors[r.output] for r in rows])),
            content_features(ex, np.array([vectors[r.reference] for r in rows])))


def _fit_vocab(rows, bags_o, bags_r, mask, min_df):
    if not min_df:
        return []
    refs = {r.reference: b for r, b, m in zip(rows, bags_r, mask) if m}
    return vocabulary([b for b, m in zip(bags_o, mask) if m] + list(refs.values()), min_df)


def fit_head(x, y: np.ndarray, l2: float) -> np.ndarray:
    """Weights of an intercept-free logistic regression on the design x (penalty l2 / 2 * |w|^2 per pair)."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=1.0 / (l2 * len(y)), fit_intercept=False, max_iter=5000, tol=1e-6)
    clf.fit(x, y)
    return clf.coef_[0]


def preference(x, coef: np.ndarray) -> np.ndarray:
    z = np.clip(x @ coef, -60, 60)
    return 1.0 + 1.0 / (1.0 + np.exp(-z))


def fit(rows: Sequence[Annotation], prompts: Sequence[str], *, exclude: set[int], k: int = 5, seed: int = 0,
        l2: float = 3e-5, min_df: int = 20, content: bool = True, content_weight: float = 1.0,
        log=print) -> FitResult:
    """Steps 1-5 of the module docstring over `rows` (pairs with output != reference, preference != 1.5)."""
    rows = list(rows)
    p = [prompts[r.index] for r in rows]
    fo, fr = feature_matrix(p, [r.output for r in rows]), feature_matrix(p, [r.reference for r in rows])
    y = np.array([r.preference > 1.5 for r in rows], dtype=int)
    decided = np.array([r.preference != 1.5 for r in rows])
    fit_ok = decided & np.array([r.index not in exclude for r in rows])
    mean, scale = _standardise(fo, fr, fit_ok)
    dense = (fo - fr) / scale
    if content:
        co, cr = content_block(rows, prompts, log)
        c_mean, c_scale = _standardise(co, cr, fit_ok)
        c_scale = c_scale / content_weight  # a larger weight: a weaker penalty on the content block
        dense = np.hstack([dense, (co - cr) / c_scale])
    folds = model_folds([r.model for r in rows], k, seed)
    fold = np.array([folds[r.model] for r in rows])
    bags_o, bags_r = [bag_of_words(r.output) for r in rows], [bag_of_words(r.reference) for r in rows]
    heldout = np.empty(len(rows))
    for i in range(k):
        train = fit_ok & (fold != i)
        vocab = _fit_vocab(rows, bags_o, bags_r, train, min_df)
        x = _design(dense, bags_o, bags_r, vocab)
        coef = fit_head(x[train], y[train], l2)
        heldout[fold == i] = preference(x[fold == i], coef)
        log(f"fold {i + 1}/{k}: fitted on {int(train.sum())} pairs, judged {int((fold == i).sum())} held-out pairs of "
            f"{len({r.model for r, f in zip(rows, fold) if f == i})} models")
    vocab = _fit_vocab(rows, bags_o, bags_r, fit_ok, min_df)
    coef = fit_head(_design(dense, bags_o, bags_r, vocab)[fit_ok], y[fit_ok], l2)
    n, n_dense = len(FEATURES), dense.shape[1]
    r8 = lambda values: [round(float(v), 8) for v in values]  # noqa: E731
    weights = {"features": list(FEATURES), "mean": r8(mean), "scale": r8(scale), "coef": r8(coef[:n]),
               "vocabulary": vocab, "word_coef": [round(float(v), 6) for v in coef[n_dense:]], "l2": l2,
               "min_df": min_df}
    if content:
        weights["content"] = {"embedder": EMBEDDER, "features": "MiniLM e(o) (384), cos(e(o), e(x))",
                              "mean": r8(c_mean), "scale": r8(c_scale), "coef": r8(coef[n:n_dense]),
                              "weight": content_weight}
    weights["version"] = weights_version(weights)
    return FitResult(heldout=heldout, folds=folds, weights=weights, n_fit=int(fit_ok.sum()))
