"""Fitting the learned judge (`evals.learned_judge`) on a reference judge's pairwise annotations, split by model.

1. pairs: the annotated pairs the reference judge was asked about (output != reference), minus the instructions
   the caller excludes (the offline grid's own, so that they never enter the fit);
2. features: d = f(x, output) - f(x, reference) per pair (`learned_judge.feature_matrix`); with `content`, the
   difference of the two outputs' MiniLM content features c(x, o) (`judge_embeddings.content_features`: every text
   embedded once, cached on disk); and the difference of the two outputs' bags of words over a vocabulary of the
   words in at least `min_df` of the fit's texts (built from the fitting pairs only: each fold has its own);
3. k-fold over MODELS: the models are shuffled with a seeded generator and dealt into k folds; each fold's pairs
   are judged by a head fitted on the other folds' pairs only, so no model has outputs on both sides;
4. with `prompt_components` > 0 (and content), the pair block: the modulators m(x, output, reference)
   (`learned_judge.pair_modulators`; the prompt's principal components fitted on the fit's prompts' embeddings),
   standardised over the fit's pairs, times every column of d / scale (`learned_judge.interactions`);
5. the head: L2-penalised logistic regression of the reference judge's pick on [d / scale, content difference /
   content scale, pair block, word difference] (scale: the standard deviation of each feature over the outputs and
   references; `content_weight` divides the content scale, so a weight above 1 penalises that block less; the
   word difference is multiplied by `word_weight`, so a weight above 1 penalises the words less), no
   intercept (so the judge is symmetric), lbfgs: deterministic. Pairs whose shorter output the reference judge
   preferred weigh `shorter_weight` in the loss: a pure length rule already gets the rest right, and these pairs
   are where a judge shows it reads more than length;
6. the shipped head: the same fit on every pair of step 1.

Returns the held-out preferences (for `evals.judge_check` figures) and the final weights (JSON-ready).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from evals.annotations import Annotation
from evals.embeddings import VERSION as EMBEDDER
from evals.learned_judge import FEATURES, PAIR_FIXED, bag_of_words, feature_matrix, interactions, pair_modulators, weights_version


@dataclass(frozen=True, slots=True)
class FitResult:
    heldout: np.ndarray  # the held-out preference of every pair of `rows` (in [1, 2])
    folds: dict[str, int]  # model -> fold
    weights: dict  # the final head (every pair), JSON-ready
    n_fit: int  # pairs in the final fit


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


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


def _design(dense, bags_o, bags_r, vocab, word_weight: float = 1.0):
    from scipy import sparse

    if not vocab:
        return dense
    words = word_weight * (word_matrix(bags_o, vocab) - word_matrix(bags_r, vocab))
    return sparse.hstack([sparse.csr_matrix(dense), words]).tocsr()


def _standardise(fo: np.ndarray, fr: np.ndarray, fit_ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) of each column over the fit's outputs and references (scale 1 where a column is constant)."""
    both = np.vstack([fo[fit_ok], fr[fit_ok]])
    scale = both.std(axis=0)
    return both.mean(axis=0), np.where(scale > 1e-9, scale, 1.0)


def content_block(rows: Sequence[Annotation], prompts: Sequence[str], log=print) -> tuple[np.ndarray, ...]:
    """(c(x, output), c(x, reference), e(x), e(output), e(reference)) per pair: `judge_embeddings.content_features`
    of the MiniLM embeddings, and the embeddings."""
    from evals.judge_embeddings import content_features, embed

    p = [prompts[r.index] for r in rows]
    texts = sorted({*p, *(r.output for r in rows), *(r.reference for r in rows)})
    vectors = dict(zip(texts, embed(texts, log=log)))
    ex = np.array([vectors[t] for t in p])
    eo, er = np.array([vectors[r.output] for r in rows]), np.array([vectors[r.reference] for r in rows])
    return content_features(ex, eo), content_features(ex, er), ex, eo, er


def _fit_vocab(rows, bags_o, bags_r, mask, min_df):
    if not min_df:
        return []
    refs = {r.reference: b for r, b, m in zip(rows, bags_r, mask) if m}
    return vocabulary([b for b, m in zip(bags_o, mask) if m] + list(refs.values()), min_df)


def fit_head(x, y: np.ndarray, l2: float, sample_weight: np.ndarray | None = None) -> np.ndarray:
    """Weights of an intercept-free logistic regression on the design x (penalty l2 / 2 * |w|^2 per pair)."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=1.0 / (l2 * len(y)), fit_intercept=False, max_iter=3000, tol=1e-5)
    clf.fit(x, y, sample_weight=sample_weight)
    return clf.coef_[0]


def preference(x, coef: np.ndarray, decision: str = "soft") -> np.ndarray:
    z = np.clip(x @ coef, -60, 60)
    if decision == "hard":
        return 1.5 + 0.5 * np.sign(np.round(z, 9))
    return 1.0 + 1.0 / (1.0 + np.exp(-z))


def prompt_pca(vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, the first k principal axes) of the distinct prompt embeddings (rows sorted: deterministic)."""
    from sklearn.decomposition import PCA

    unique = np.unique(vectors, axis=0)
    pca = PCA(n_components=min(k, *unique.shape), random_state=0).fit(unique)
    return pca.mean_, pca.components_


def fit(rows: Sequence[Annotation], prompts: Sequence[str], *, exclude: set[int], k: int = 5, seed: int = 0,
        l2: float = 1e-5, min_df: int = 20, content: bool = True, content_weight: float = 1.0,
        prompt_components: int = 32, shorter_weight: float = 2.0, decision: str = "hard", word_weight: float = 1.0,
        log=print) -> FitResult:
    """Steps 1-6 of the module docstring over `rows` (pairs with output != reference, preference != 1.5)."""
    if decision not in ("hard", "soft"):
        raise ValueError(f"decision={decision!r}: hard or soft")
    rows = list(rows)
    p = [prompts[r.index] for r in rows]
    fo, fr = feature_matrix(p, [r.output for r in rows]), feature_matrix(p, [r.reference for r in rows])
    y = np.array([r.preference > 1.5 for r in rows], dtype=int)
    decided = np.array([r.preference != 1.5 for r in rows])
    fit_ok = decided & np.array([r.index not in exclude for r in rows])
    len_o, len_r = np.array([len(r.output) for r in rows]), np.array([len(r.reference) for r in rows])
    shorter_won = ((len_o < len_r) & (y == 1)) | ((len_o > len_r) & (y == 0))
    sample_weight = np.where(shorter_won, shorter_weight, 1.0)
    mean, scale = _standardise(fo, fr, fit_ok)
    d = (fo - fr) / scale
    dense = d
    pair = None
    if content:
        co, cr, ex, eo, er = content_block(rows, prompts, log)
        c_mean, c_scale = _standardise(co, cr, fit_ok)
        c_scale = c_scale / content_weight  # a larger weight: a weaker penalty on the content block
        dense = np.hstack([dense, (co - cr) / c_scale])
        if prompt_components:
            pca_mean, pca_axes = prompt_pca(ex[fit_ok], prompt_components)
            chars = FEATURES.index("log_chars")
            m = pair_modulators(ex, er, eo, fr[:, chars], fo[:, chars], pca_mean, pca_axes)  # output_1: the reference
            m_mean, m_scale = m[fit_ok].mean(0), m[fit_ok].std(0)
            m_scale = np.where(m_scale > 1e-9, m_scale, 1.0)
            dense = np.hstack([dense, interactions(d, (m - m_mean) / m_scale)])
            pair = (pca_mean, pca_axes, m_mean, m_scale)
    folds = model_folds([r.model for r in rows], k, seed)
    fold = np.array([folds[r.model] for r in rows])
    bags_o, bags_r = [bag_of_words(r.output) for r in rows], [bag_of_words(r.reference) for r in rows]
    heldout = np.empty(len(rows))
    started = time.time()
    for i in range(k):
        train = fit_ok & (fold != i)
        vocab = _fit_vocab(rows, bags_o, bags_r, train, min_df)
        x = _design(dense, bags_o, bags_r, vocab, word_weight)
        coef = fit_head(x[train], y[train], l2, sample_weight[train])
        heldout[fold == i] = preference(x[fold == i], coef, decision)
        log(f"fold {i + 1}/{k}: fitted on {int(train.sum())} pairs, judged {int((fold == i).sum())} held-out pairs of "
            f"{len({r.model for r, f in zip(rows, fold) if f == i})} models; {_minutes(time.time() - started)}, "
            f"ETA {_minutes((time.time() - started) / (i + 1) * (k - i))} (the final fit on every pair included)")
    vocab = _fit_vocab(rows, bags_o, bags_r, fit_ok, min_df)
    coef = fit_head(_design(dense, bags_o, bags_r, vocab, word_weight)[fit_ok], y[fit_ok], l2, sample_weight[fit_ok])
    n, n_content = len(FEATURES), (385 if content else 0)
    n_dense = dense.shape[1]
    r8 = lambda values: [round(float(v), 8) for v in values]  # noqa: E731
    weights = {"features": list(FEATURES), "mean": r8(mean), "scale": r8(scale), "coef": r8(coef[:n]),
               # the judge scores the unweighted bag (`learned_judge.word_scores`): the weight goes into its coefficients
               "vocabulary": vocab, "word_coef": [round(float(v), 6) for v in word_weight * coef[n_dense:]], "l2": l2,
               "min_df": min_df, "shorter_weight": shorter_weight, "decision": decision}
    if word_weight != 1.0:
        weights["word_weight"] = word_weight
    if content:
        weights["content"] = {"embedder": EMBEDDER, "features": "MiniLM e(o) (384), cos(e(o), e(x))",
                              "mean": r8(c_mean), "scale": r8(c_scale), "coef": r8(coef[n:n + n_content]),
                              "weight": content_weight}
    if pair is not None:
        pca_mean, pca_axes, m_mean, m_scale = pair
        weights["pair"] = {"modulators": [*PAIR_FIXED, *(f"prompt_pc{j + 1}" for j in range(len(pca_axes)))],
                           "pca_mean": r8(pca_mean), "pca_components": [r8(a) for a in pca_axes],
                           "mean": r8(m_mean), "scale": r8(m_scale), "coef": r8(coef[n + n_content:n_dense])}
    weights["version"] = weights_version(weights)
    return FitResult(heldout=heldout, folds=folds, weights=weights, n_fit=int(fit_ok.sum()))
